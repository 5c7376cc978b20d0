"""PostgreSQL wake-ups: a transaction that makes steps ready sends NOTIFY; idle workers LISTEN.

Notifications are only a hint to look now: a worker that misses one (a dropped connection, a
restart) still finds the work at its next poll. PostgreSQL delivers a NOTIFY when its transaction
commits and folds identical ones in the same transaction into one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.engine import make_url

log = logging.getLogger("tasker.notify")

CHANNEL = "tasker_ready"


def _libpq_url(sqlalchemy_url: str) -> str:
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class ReadyListener:
    """A thread holding one LISTEN connection; calls `on_ready` for every notification (and on
    reconnect)."""

    def __init__(self, sqlalchemy_url: str, on_ready: Callable[[], None]):
        self.url = _libpq_url(sqlalchemy_url)
        self.on_ready = on_ready
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tasker-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)

    def _run(self) -> None:
        import psycopg

        delay = 0.2
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    delay = 0.2
                    self.on_ready()  # anything that became ready while we were not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            self.on_ready()
            except (
                Exception
            ) as exc:  # a restarted or unreachable server: polling covers us meanwhile
                if self._stop.is_set():
                    return
                log.warning(
                    "LISTEN connection lost (%s); reconnecting in %.1fs", type(exc).__name__, delay
                )
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
