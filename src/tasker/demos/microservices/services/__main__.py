"""Run the four services until Ctrl-C:
`python -m tasker.demos.microservices.services [--base-port 8001] [DATA_DIR]`.

By default they listen on 127.0.0.1:8001..8004 (user, billing, preferences, notification), the URLs
the registration template falls back to, and keep their state in a temporary directory. Prints the
environment variables the template reads, ready to paste into another shell.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from tasker.demos.microservices.services.runner import ServiceFleet


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasker.demos.microservices.services", description=__doc__
    )
    parser.add_argument(
        "data_dir", nargs="?", default=None, help="where the services keep their SQLite files"
    )
    parser.add_argument(
        "--base-port", type=int, default=8001, help="user service port; the others follow (0: free)"
    )
    args = parser.parse_args(argv)
    try:
        fleet = ServiceFleet(args.data_dir, base_port=args.base_port or None)
        fleet.start()
    except OSError as exc:
        print(
            f"error: cannot listen on ports {args.base_port}..{args.base_port + 3}"
            f" ({exc.strerror}); fix: pass another --base-port, or 0 for free ports",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, _stop)
    with fleet:
        print(f"# services running (data in {fleet.data_dir}); Ctrl-C stops them", flush=True)
        for var, url in fleet.env().items():
            print(f"export {var}={url}", flush=True)
        try:
            threading.Event().wait()
        except (KeyboardInterrupt, SystemExit):
            pass
    return 0


def _stop(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops the services as Ctrl-C does (and the temporary data directory is removed)."""
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
