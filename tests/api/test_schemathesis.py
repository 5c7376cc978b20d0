"""Schemathesis against the served OpenAPI spec: generated requests, valid and invalid, for every
operation.

Checks: no 5xx ever, and every response conforms to the spec (status code documented, content type
and headers declared, body valid against its schema). SQLite only, 25 examples per operation, to
keep the run short; the routes themselves are tested on both stores elsewhere. Streaming
`GET /events` is left out: its response never ends, so a generated request would wait for its
timeout.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tasker import Tasker
from tasker.api.app import create_app
from tests.api.conftest import PING, order_template

CHECKOUT = Path(__file__).parents[2] / "src" / "tasker" / "demos" / "ecommerce" / "templates"
CHECKOUT_CONTEXT = {
    "cart_items": [{"product_id": 1, "quantity": 2, "price": 9.5}],
    "payment_info": {"method": "credit_card", "token": "tok_ok", "amount": 19.0},
    "customer_info": {"id": 7, "email": "ada@example.com", "name": "Ada"},
}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzzed_engine(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[Tasker]:
    """An engine with tasks in several states, so generated ids 1..5 hit real tasks and steps."""
    import yaml

    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copy(sqlite_template, folder / "tasker.db")
    for name, data in (("order.yaml", order_template("1.0.0")), ("ping.yaml", PING)):
        (folder / name).write_text(yaml.safe_dump(data))
    engine = Tasker(
        f"sqlite:///{folder / 'tasker.db'}", templates=[folder, CHECKOUT], poll_interval=0.05
    )
    # Task 1 is the checkout the spec's examples name (ecommerce/process_order, step validate_cart).
    engine.create_task("ecommerce/process_order", CHECKOUT_CONTEXT)
    done = engine.create_task("apitest/order", {"email": "a@example.com"})
    failed = engine.create_task("apitest/order", {"email": "b@example.com", "fail": "charge"})
    engine.run(done.id)
    engine.run(failed.id)
    engine.create_task("other/ping", {})
    engine.create_task("apitest/order", {"email": "c@example.com"})
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def fuzzed_app(fuzzed_engine: Tasker) -> FastAPI:
    return create_app(fuzzed_engine)


# The spec does not depend on the engine, so it is read at collection from an app over none; the
# requests go to `fuzzed_app`. (schemathesis.pytest.from_fixture would defer this, but it breaks on
# pytest >= 9.)
schema = schemathesis.openapi.from_dict(create_app(cast(Tasker, None)).openapi()).exclude(
    path="/api/v1/events"
)


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
def test_the_api_conforms_to_its_spec(case: schemathesis.Case[Any], fuzzed_app: FastAPI) -> None:
    case.call_and_validate(app=fuzzed_app, checks=CHECKS)
