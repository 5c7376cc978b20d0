"""Fixtures of the API tests: an engine with two small templates on the test's store, the app over
it, and a test client. Every test that takes `client` runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tasker import Tasker
from tasker.api.app import create_app
from tasker.api.errors import ErrorBody
from tasker.settings import Settings
from tests.integration.conftest import key, load  # noqa: F401  (shared with the event stream tests)

HANDLER = "tests.api.handlers:Step"
FAST_RETRY = {"backoff_base_seconds": 0.01, "backoff_max_seconds": 0.05}
ORDER_SCHEMA = {
    "type": "object",
    "required": ["email"],
    "properties": {
        "email": {"type": "string", "format": "email"},
        "amount": {"type": "number", "minimum": 0},
        "fail": {"type": "string"},
        "note": {"type": "string"},
        "currency": {"type": "string", "enum": ["EUR", "USD"], "default": "EUR"},
    },
}


def order_template(
    version: str, *, description: str = "Charge and ship an order"
) -> dict[str, Any]:
    """validate -> (charge, reserve) -> ship; `ship` waits for both through depends_on_steps."""
    return {
        "name": "order",
        "namespace_name": "apitest",
        "version": version,
        "description": description,
        "schema": ORDER_SCHEMA,
        "retry": FAST_RETRY,
        "default_dependent_system": "shop",
        "step_templates": [
            {
                "name": "validate",
                "handler_class": HANDLER,
                "handler_config": {"api_token": "s3cret", "timeout_seconds": 5},
            },
            {
                "name": "charge",
                "handler_class": HANDLER,
                "depends_on_step": "validate",
                "dependent_system": "payments",
                "default_retry_limit": 2,
            },
            {"name": "reserve", "handler_class": HANDLER, "depends_on_steps": ["validate"]},
            {"name": "ship", "handler_class": HANDLER, "depends_on_steps": ["charge", "reserve"]},
        ],
    }


PING = {
    "name": "ping",
    "namespace_name": "other",
    "version": "0.1.0",
    "step_templates": [{"name": "pong", "handler_class": HANDLER}],
}


@pytest.fixture
def api_templates(tmp_path: Path) -> Path:
    folder = tmp_path / "api-templates"
    folder.mkdir()
    for filename, data in (
        ("order-1.0.0.yaml", order_template("1.0.0")),
        ("order-1.1.0.yaml", order_template("1.1.0", description="Version two")),
        ("ping.yaml", PING),
    ):
        (folder / filename).write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


@pytest.fixture
def engine(make_tasker: Callable[..., Tasker], api_templates: Path) -> Tasker:
    t = make_tasker()
    t.load_templates(api_templates)
    return t


@pytest.fixture
def make_client(engine: Tasker) -> Iterator[Callable[..., TestClient]]:
    """Build a client over the app on `engine`, with the settings given (defaults: `Settings()`)."""
    made: list[TestClient] = []

    def build(settings: Settings | None = None, **options: Any) -> TestClient:
        c = TestClient(create_app(engine, settings), **options)
        made.append(c)
        return c

    yield build
    for c in made:
        c.close()


@pytest.fixture
def app(engine: Tasker) -> FastAPI:
    return create_app(engine)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def error_of(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """Assert the response is the API's error body with this status (and code); return its
    `error`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = ErrorBody.model_validate(response.json()).error
    assert body.status == status
    if code is not None:
        assert body.code == code, body
    assert "Traceback" not in response.text
    return body.model_dump()


def create(client: TestClient, **body: Any) -> dict[str, Any]:
    """POST /tasks for apitest/order with a valid context unless told otherwise; expects 201."""
    body.setdefault("template", "apitest/order")
    body.setdefault("context", {"email": "ada@example.com", "amount": 12.5})
    response = client.post("/api/v1/tasks", json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result
