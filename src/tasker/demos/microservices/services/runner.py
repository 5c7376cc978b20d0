"""Start the four services on free loopback ports, inject outages, stop them: what the demo and
tests use.

Each service runs its own uvicorn server on a background thread, on a socket the runner binds
itself, so the runner can really stop listening (callers get "connection refused", as during a
deployment) and listen again later on the same port:

    with ServiceFleet() as fleet:                   # a temporary data directory, removed after
        os.environ.update(fleet.env())              # USER_SERVICE_URL=http://127.0.0.1:PORT, ...
        fleet.billing.refuse()                      # connection refused until resume()
        fleet.billing.resume()
        fleet.billing.set_faults(latency_ms=200, rate_limit_requests=1, retry_after=2)
        fleet.billing.state()["counts"]             # {"billing_profiles": 47}
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from tasker.demos.microservices.services.base import Service
from tasker.demos.microservices.services.billing import BillingService
from tasker.demos.microservices.services.faults import FaultSpec
from tasker.demos.microservices.services.notification import NotificationService
from tasker.demos.microservices.services.preferences import PreferencesService
from tasker.demos.microservices.services.user import UserService

SERVICES: dict[str, type[Service]] = {
    "user": UserService,
    "billing": BillingService,
    "preferences": PreferencesService,
    "notification": NotificationService,
}
#: The environment variable the workflow template reads each service's base URL from.
ENV_VARS = {
    "user": "USER_SERVICE_URL",
    "billing": "BILLING_SERVICE_URL",
    "preferences": "PREFERENCES_SERVICE_URL",
    "notification": "NOTIFICATION_SERVICE_URL",
}
STARTUP_TIMEOUT = 10.0

_client: httpx.Client | None = None
_client_lock = threading.Lock()


def admin_client() -> httpx.Client:
    """One keep-alive client for health checks and admin calls (a new client per call costs ~50 ms
    of TLS setup)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx.Client(timeout=5.0)
        return _client


class ServiceUnavailable(RuntimeError):
    """A service did not become healthy in time."""


class ServiceHandle:
    """One running service: its URL, its listening socket, its faults and its state."""

    def __init__(self, service: Service, host: str = "127.0.0.1") -> None:
        self.service = service
        self.host = host
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._resume_timer: threading.Timer | None = None
        #: Wall-clock times (time.time()) at which the service stopped and started listening.
        self.stopped_at: float | None = None
        self.started_at: float | None = None
        service.on_refuse = self._refuse_from_request

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Listen (on a free port the first time, on the same port after) and wait until healthy."""
        with self._lock:
            if self._server is not None:
                return
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
            self.port = sock.getsockname()[1]
            config = uvicorn.Config(
                self.service.app,
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=1,
                timeout_keep_alive=5,
            )
            server = uvicorn.Server(config)
            thread = threading.Thread(
                target=server.run,
                kwargs={"sockets": [sock]},
                daemon=True,
                name=f"service-{self.name}",
            )
            thread.start()
            self._server, self._thread, self._socket = server, thread, sock
            self._wait_healthy()
            self.started_at = time.time()

    def stop(self) -> None:
        """Stop listening: new connections are refused; requests in flight get a second to
        finish."""
        with self._lock:
            server, thread = self._server, self._thread
            if server is None or thread is None:
                return
            server.should_exit = True
            thread.join(timeout=2)
            if thread.is_alive():  # a connection that will not close: stop without waiting for it
                server.force_exit = True
                thread.join(timeout=5)
            self._socket.close()
            self._server = self._thread = None
            self.stopped_at = time.time()

    def refuse(self, seconds: float | None = None) -> None:
        """Take the service down as "connection refused", for `seconds` or until `resume()`."""
        with self._lock:
            self._cancel_timer()
            self.stop()
            if seconds is not None:
                self._resume_timer = threading.Timer(seconds, self.resume)
                self._resume_timer.daemon = True
                self._resume_timer.start()

    def resume(self) -> None:
        """Back up after `refuse()` or a down fault: the down fault is cleared and the service
        listens."""
        with self._lock:
            self._cancel_timer()
            self.service.faults.apply(FaultSpec(down=False))
            self.start()

    def _refuse_from_request(self, seconds: float | None) -> None:
        # Called by POST /admin/faults on the server's own thread pool: stopping waits for that very
        # request to finish, so it happens on another thread.
        threading.Thread(target=self.refuse, args=(seconds,), daemon=True).start()

    def _cancel_timer(self) -> None:
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if admin_client().get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise ServiceUnavailable(
            f"{self.service.display_name} did not answer on {self.url} within "
            f"{STARTUP_TIMEOUT:.0f} s"
        )

    # -- faults and state --------------------------------------------------------------------------
    def set_faults(self, **spec: Any) -> dict[str, Any]:
        """POST /admin/faults (see `FaultSpec`); applied directly while the service is not
        listening."""
        if not self.listening:
            self.service.faults.apply(FaultSpec(**spec))
            return self.service.faults.describe()
        response = admin_client().post(f"{self.url}/admin/faults", json=spec)
        response.raise_for_status()
        return dict(response.json())

    def clear_faults(self) -> None:
        self.service.faults.clear()

    def state(self) -> dict[str, Any]:
        """Counts and rows of the service's tables, read from its own database."""
        return self.service.state()

    def requests(self, after_id: int = 0) -> list[dict[str, Any]]:
        """The service's request log: method, path, status, correlation id, key,
        started/finished."""
        return self.service.store.rows(
            "SELECT * FROM requests WHERE id > ? ORDER BY id", (after_id,)
        )

    def close(self) -> None:
        with self._lock:
            self._cancel_timer()
            self.stop()
            self.service.store.close()


class ServiceFleet:
    """The four services, started together on free loopback ports and stopped together."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        base_port: int | None = None,
    ) -> None:
        """`base_port` None: free ports; else user, billing, preferences, notification on base_port
        + 0..3."""
        self._tmp = (
            None if data_dir is not None else tempfile.mkdtemp(prefix="tasker-microservices-")
        )
        self.data_dir = Path(data_dir if data_dir is not None else self._tmp)  # type: ignore[arg-type]
        self.handles = {
            name: ServiceHandle(cls(self.data_dir), host) for name, cls in SERVICES.items()
        }
        if base_port is not None:
            for offset, handle in enumerate(self.handles.values()):
                handle.port = base_port + offset

    def __enter__(self) -> ServiceFleet:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        try:
            for handle in self.handles.values():
                handle.start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        with ThreadPoolExecutor(
            len(self.handles)
        ) as pool:  # each server takes a loop tick or two to stop
            list(pool.map(ServiceHandle.close, self.handles.values()))
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __getitem__(self, name: str) -> ServiceHandle:
        return self.handles[name]

    @property
    def user(self) -> ServiceHandle:
        return self.handles["user"]

    @property
    def billing(self) -> ServiceHandle:
        return self.handles["billing"]

    @property
    def preferences(self) -> ServiceHandle:
        return self.handles["preferences"]

    @property
    def notification(self) -> ServiceHandle:
        return self.handles["notification"]

    @property
    def urls(self) -> dict[str, str]:
        return {name: h.url for name, h in self.handles.items()}

    def env(self) -> dict[str, str]:
        """The variables the workflow template reads: USER_SERVICE_URL, BILLING_SERVICE_URL, ..."""
        return {ENV_VARS[name]: h.url for name, h in self.handles.items()}

    def clear_faults(self) -> None:
        for handle in self.handles.values():
            handle.clear_faults()
