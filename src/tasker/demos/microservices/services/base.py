"""The shared shape of the four example services: a FastAPI app over its own SQLite file.

A subclass declares its tables and adds its resource routes; the base gives every service the same
error format, the same fault-injection and inspection endpoints, and the middleware of
`middleware.py` (faults, correlation ids, idempotency keys, request log). Errors always have one
shape:

    {"error": {"code": "conflict", "message": "..."}, "existing": {...}}     # 409 carries the
    resource

Admin endpoints (never subject to faults, never logged):

    GET    /health             liveness, for the runner
    GET    /admin/faults       the current faults
    POST   /admin/faults       set faults (see faults.FaultSpec); down_mode "refuse" stops listening
    DELETE /admin/faults       healthy again
    GET    /admin/state        counts and rows of the service's tables (what the demo reconciles)
    GET    /admin/requests     the request log: method, path, status, correlation id, key, interval
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, Field

from tasker.demos.microservices.services.faults import Faults, FaultSpec
from tasker.demos.microservices.services.middleware import ServiceMiddleware
from tasker.demos.microservices.services.store import Store

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z0-9-]{2,}$")
PLANS = ("free", "pro", "enterprise")

#: Called by POST /admin/faults with down_mode "refuse": stop listening for `seconds` (None: until
#: resumed).
RefuseHook = Callable[[float | None], None]


class ServiceError(Exception):
    """An answer other than success, rendered as {"error": {code, message}, **extra}."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


def conflict(message: str, existing: dict[str, Any]) -> ServiceError:
    return ServiceError(409, "conflict", message, existing=existing)


def not_found(message: str) -> ServiceError:
    return ServiceError(404, "not_found", message)


def check_email(value: str) -> str:
    if not EMAIL.match(value):
        raise ValueError("is not a valid email address")
    return value


#: An email address field, validated like the workflow's schema does (format: email).
Email = Annotated[str, Field(max_length=254), AfterValidator(check_email)]


def correlation_id(request: Request) -> str:
    return str(getattr(request.state, "correlation_id", "") or "")


class Service:
    """One example microservice. Subclasses set the class attributes and implement `add_routes`."""

    name: ClassVar[str]
    display_name: ClassVar[str]
    schema: ClassVar[str]
    #: The tables `GET /admin/state` shows, in order.
    tables: ClassVar[tuple[str, ...]]

    def __init__(self, data_dir: Path, *, on_refuse: RefuseHook | None = None) -> None:
        self.store = Store(Path(data_dir) / f"{self.name}.db", self.schema)
        self.faults = Faults(self.display_name)
        self.on_refuse = on_refuse
        app = FastAPI(title=self.display_name, docs_url=None, redoc_url=None, openapi_url=None)
        app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
        app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
        self._add_admin_routes(app)
        self.add_routes(app)
        app.add_middleware(
            ServiceMiddleware, service=self.display_name, store=self.store, faults=self.faults
        )
        self.app = app

    def add_routes(self, app: FastAPI) -> None:
        raise NotImplementedError

    def present(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        """A stored row as the service's API shows it (booleans, JSON columns)."""
        return row

    def state(self) -> dict[str, Any]:
        rows = {
            t: [self.present(t, r) for r in self.store.rows(f"SELECT * FROM {t} ORDER BY id")]
            for t in self.tables
        }
        return {
            "service": self.display_name,
            "counts": {t: len(r) for t, r in rows.items()},
            "rows": rows,
            "requests": self.store.count("requests"),
        }

    def _add_admin_routes(self, app: FastAPI) -> None:
        @app.get("/health")
        def health() -> dict[str, Any]:
            return {"status": "ok", "service": self.display_name}

        @app.get("/admin/faults")
        def get_faults() -> dict[str, Any]:
            return self.faults.describe()

        @app.post("/admin/faults")
        def set_faults(spec: FaultSpec) -> dict[str, Any]:
            self.faults.apply(spec)
            current = self.faults.describe()
            if current["down"] and current["down_mode"] == "refuse":
                if self.on_refuse is None:
                    self.faults.clear()
                    raise ServiceError(
                        422,
                        "unsupported",
                        "down_mode 'refuse' needs the service runner; "
                        "start the service with tasker.demos.microservices.services.runner",
                    )
                self.on_refuse(current["down_remaining_seconds"])
            return current

        @app.delete("/admin/faults")
        def clear_faults() -> dict[str, Any]:
            self.faults.clear()
            return self.faults.describe()

        @app.get("/admin/state")
        def get_state() -> dict[str, Any]:
            return self.state()

        @app.get("/admin/requests")
        def get_requests(after_id: int = 0) -> list[dict[str, Any]]:
            return self.store.rows("SELECT * FROM requests WHERE id > ? ORDER BY id", (after_id,))


def now() -> float:
    return round(time.time(), 6)


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    retry_after = exc.extra.get("retry_after")
    headers = {"Retry-After": f"{float(retry_after):g}"} if retry_after is not None else None
    return JSONResponse(
        {"error": {"code": exc.code, "message": exc.message}, **exc.extra},
        status_code=exc.status,
        headers=headers,
    )


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """One readable line naming every bad field, instead of FastAPI's list of dicts."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"{loc}: {msg}")
    return JSONResponse(
        {"error": {"code": "validation_failed", "message": "; ".join(problems)}},
        status_code=422,
    )
