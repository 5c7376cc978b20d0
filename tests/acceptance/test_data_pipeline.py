"""The customer analytics pipeline on both stores: fan-out, fan-in, a flaky source, and real
numbers.

Timing facts (which steps overlapped, which waited for which) are read from the transitions table,
the engine's own record, never from wall-clock measurements in the test.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from tasker import ContextValidationError, Task, Tasker
from tasker.demos.data_pipeline import metrics, warehouse
from tasker.demos.data_pipeline.__main__ import main
from tasker.demos.data_pipeline.demo import EXTRACTS, TEMPLATE, TEMPLATES, attempts

BACKOFF_SCALE = 0.05
PARENTS = {
    "transform_customer_metrics": ("extract_orders", "extract_users"),
    "transform_product_metrics": ("extract_orders", "extract_products"),
    "generate_insights": ("transform_customer_metrics", "transform_product_metrics"),
    "update_dashboard": ("generate_insights",),
    "send_notifications": ("generate_insights",),
}


@pytest.fixture
def engine(make_tasker: Callable[..., Tasker]) -> Tasker:
    t = make_tasker(backoff_scale=BACKOFF_SCALE)
    t.load_templates(TEMPLATES)
    return t


def run(engine: Tasker, tmp_path: Path, **context: Any) -> Task:
    task = engine.create_task(TEMPLATE, {"output_dir": str(tmp_path / "out"), **context})
    return engine.run(task.id)


def results(task: Task, step: str) -> dict[str, Any]:
    found = task.step(step).results
    assert found is not None, f"{step} has no results"
    return found


def test_extractions_fan_out_and_transforms_fan_in(engine: Tasker, tmp_path: Path) -> None:
    task = run(engine, tmp_path)
    assert task.status == "complete", [(s.name, s.status, s.last_error) for s in task.steps]
    runs = attempts(engine, task)

    first = {r["step"]: r for r in runs if r["step"] in EXTRACTS and r["attempt"] == 1}
    assert set(first) == set(EXTRACTS)
    assert max(r["started"] for r in first.values()) < min(r["ended"] for r in first.values()), (
        "the three extractions should have run at the same time"
    )

    finished = {r["step"]: r["ended"] for r in runs if r["outcome"] == "complete"}
    started = {r["step"]: min(x["started"] for x in runs if x["step"] == r["step"]) for r in runs}
    for child, parents in PARENTS.items():
        for parent in parents:
            assert started[child] >= finished[parent], f"{child} started before {parent} finished"


def test_flaky_extract_recovers_on_retry(engine: Tasker, tmp_path: Path) -> None:
    task = run(engine, tmp_path)
    assert task.status == "complete"
    orders = task.step("extract_orders")
    assert orders.attempts == 3  # the template's fail_first_attempts: 2, then success
    assert results(task, "extract_orders")["attempt"] == 3
    assert [s.attempts for s in task.steps if s.name != "extract_orders"] == [1] * 7
    failed = [
        t
        for t in engine.history.step_transitions(task.id)
        if t["step_id"] == orders.id and t["to_state"] == "waiting_retry"
    ]
    assert [t["attempt"] for t in failed] == [1, 2]
    assert all("connection reset" in (t["error_message"] or "") for t in failed)
    assert task.annotations is not None and task.annotations["extract_orders_attempts"] == 3


def test_context_overrides_the_flaky_setting(engine: Tasker, tmp_path: Path) -> None:
    task = run(engine, tmp_path, simulate_failures={"extract_orders": 0, "extract_users": 1})
    assert task.status == "complete"
    assert task.step("extract_orders").attempts == 1
    assert task.step("extract_users").attempts == 2


def test_aggregates_are_computed_from_the_extracted_records(engine: Tasker, tmp_path: Path) -> None:
    task = run(
        engine,
        tmp_path,
        seed=7,
        volume={"customers": 30, "products": 10, "orders": 120},
        date_range={"start_date": "2024-03-01", "end_date": "2024-03-10"},
        simulate_failures={"extract_orders": 0},
    )
    assert task.status == "complete"
    orders = results(task, "extract_orders")["records"]
    customers = results(task, "extract_users")["records"]
    products = results(task, "extract_products")["records"]
    assert (len(orders), len(customers), len(products)) == (120, 30, 10)
    assert all("2024-03-01" <= o["placed_on"] <= "2024-03-10" for o in orders)

    # Recompute the figures the long way, straight from the records.
    completed = [o for o in orders if o["status"] == "completed"]
    revenue = sum(o["total_cents"] for o in completed)
    per_customer: dict[int, list[int]] = defaultdict(list)
    for o in completed:
        per_customer[o["customer_id"]].append(o["total_cents"])
    segment_of = {c["customer_id"]: c["segment"] for c in customers}
    by_segment: dict[str, int] = defaultdict(int)
    for cid, totals in per_customer.items():
        by_segment[segment_of[cid]] += sum(totals)
    price = {p["product_id"]: p for p in products}
    by_category: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for o in completed:
        p = price[o["product_id"]]
        assert o["unit_price_cents"] == p["price_cents"]
        by_category[p["category"]][0] += o["total_cents"]
        by_category[p["category"]][1] += o["total_cents"] - p["cost_cents"] * o["quantity"]

    cust = results(task, "transform_customer_metrics")
    assert cust["revenue_cents"] == revenue
    assert cust["orders_completed"] == len(completed)
    assert cust["active_customers"] == len(per_customer)
    assert cust["repeat_customers"] == sum(1 for t in per_customer.values() if len(t) > 1)
    assert cust["average_order_value_cents"] == round(revenue / len(completed))
    assert cust["refunded_cents"] == sum(
        o["total_cents"] for o in orders if o["status"] == "refunded"
    )
    assert {k: v["revenue_cents"] for k, v in cust["by_segment"].items()} == by_segment
    best = max(per_customer, key=lambda cid: (sum(per_customer[cid]), -cid))
    assert cust["top_customers"][0]["customer_id"] == best

    prod = results(task, "transform_product_metrics")
    assert prod["revenue_cents"] == revenue
    assert prod["units_sold"] == sum(o["quantity"] for o in completed)
    assert {
        k: [v["revenue_cents"], v["margin_cents"]] for k, v in prod["by_category"].items()
    } == by_category
    assert prod["gross_margin_cents"] == sum(m for _, m in by_category.values())

    found = {i["kind"]: i for i in results(task, "generate_insights")["insights"]}
    assert "data_quality" not in found  # both transforms agree on revenue
    assert found["revenue"]["value"] == revenue
    top_category = max(by_category, key=lambda c: by_category[c][0])
    assert found["top_category"]["message"].startswith(top_category)

    dash = results(task, "update_dashboard")
    doc = json.loads(Path(dash["path"]).read_text())
    assert Path(dash["path"]).parent == tmp_path / "out"
    assert doc["kpis"]["revenue_cents"] == revenue
    assert doc["period"] == {"start_date": "2024-03-01", "end_date": "2024-03-10"}
    assert doc["insights"] == results(task, "generate_insights")["insights"]
    assert not list((tmp_path / "out").glob(".*")), "the temporary file was left behind"

    sent = results(task, "send_notifications")["messages"]
    assert [(m["channel"], m["to"]) for m in sent] == [
        ("email", "analytics-team@example.com"),
        ("slack", "#analytics"),
    ]
    assert all(metrics.dollars(revenue) in m["subject"] for m in sent)


def test_the_same_seed_extracts_the_same_records() -> None:
    start, end = date(2024, 1, 1), date(2024, 1, 31)
    a = warehouse.orders(1, 50, start, end, customer_count=20, product_count=5)
    assert a == warehouse.orders(1, 50, start, end, customer_count=20, product_count=5)
    assert a != warehouse.orders(2, 50, start, end, customer_count=20, product_count=5)
    assert {o["customer_id"] for o in a} <= set(range(1, 21))
    assert warehouse.customers(3, 10) == warehouse.customers(3, 10)


def test_metrics_on_a_hand_made_dataset() -> None:
    customers: list[Mapping[str, Any]] = [
        {"customer_id": 1, "name": "A", "segment": "consumer"},
        {"customer_id": 2, "name": "B", "segment": "business"},
        {"customer_id": 3, "name": "C", "segment": "consumer"},
    ]
    products: list[Mapping[str, Any]] = [
        {
            "product_id": 10,
            "name": "Mug",
            "category": "home",
            "price_cents": 1000,
            "cost_cents": 400,
        },
        {
            "product_id": 20,
            "name": "Book",
            "category": "books",
            "price_cents": 2500,
            "cost_cents": 2000,
        },
        {
            "product_id": 30,
            "name": "Lamp",
            "category": "home",
            "price_cents": 5000,
            "cost_cents": 1000,
        },
    ]

    def order(
        oid: int, cid: int, pid: int, qty: int, status: str = "completed"
    ) -> Mapping[str, Any]:
        unit = next(p["price_cents"] for p in products if p["product_id"] == pid)
        return {
            "order_id": oid,
            "customer_id": cid,
            "product_id": pid,
            "quantity": qty,
            "unit_price_cents": unit,
            "total_cents": unit * qty,
            "status": status,
            "placed_on": "2024-01-01",
        }

    orders = [
        order(1, 1, 10, 2),
        order(2, 1, 20, 1),
        order(3, 2, 20, 4),
        order(4, 3, 10, 1, "refunded"),
    ]
    cust = metrics.customer_metrics(orders, customers)
    assert cust["revenue_cents"] == 2000 + 2500 + 10000
    assert cust["refunded_cents"] == 1000
    assert (cust["active_customers"], cust["repeat_customers"], cust["repeat_rate"]) == (2, 1, 0.5)
    assert cust["by_segment"] == {
        "business": {"customers": 1, "orders": 1, "revenue_cents": 10000},
        "consumer": {"customers": 1, "orders": 2, "revenue_cents": 4500},
    }
    assert [c["customer_id"] for c in cust["top_customers"]] == [2, 1]
    assert cust["average_order_value_cents"] == round(14500 / 3)

    prod = metrics.product_metrics(orders, products)
    assert prod["by_category"] == {
        "books": {"units": 5, "revenue_cents": 12500, "margin_cents": 2500},
        "home": {"units": 2, "revenue_cents": 2000, "margin_cents": 1200},
    }
    assert prod["unsold_products"] == [30]
    assert prod["margin_rate"] == round(3700 / 14500, 4)

    found = {i["kind"]: i for i in metrics.insights(cust, prod)}
    assert found["top_segment"]["message"].startswith("business customers bring 69%")
    assert found["lowest_margin"]["message"] == "books has the lowest gross margin, 20%"
    assert found["refund_rate"]["severity"] == "warning"  # 1000 of 15500 is 6.5%
    assert found["unsold_products"]["value"] == 1
    assert "data_quality" not in found

    orphan = [*orders, order(5, 99, 10, 1)]  # a customer the users extract did not return
    found = {
        i["kind"]: i
        for i in metrics.insights(
            metrics.customer_metrics(orphan, customers), metrics.product_metrics(orphan, products)
        )
    }
    assert found["data_quality"]["severity"] == "warning"
    assert found["data_quality"]["value"] == 1000


def test_a_sequential_worker_shows_no_overlap(
    make_tasker: Callable[..., Tasker], tmp_path: Path
) -> None:
    """The control for the fan-out test: with room for one step at a time, the extractions cannot
    overlap."""
    engine = make_tasker(concurrency=1)
    engine.load_templates(TEMPLATES)
    task = run(engine, tmp_path, simulate_failures={"extract_orders": 0})
    assert task.status == "complete"
    first = [r for r in attempts(engine, task) if r["step"] in EXTRACTS]
    assert max(r["started"] for r in first) >= min(r["ended"] for r in first)


def test_a_source_that_stays_down_fails_only_its_branch(engine: Tasker, tmp_path: Path) -> None:
    # A source that answers nothing is waited for (the outage promise) up to its max_outage_seconds,
    # an hour by default; one second here, so that the step gives up within the test.
    engine.systems.configure("catalog", max_outage_seconds=1)
    task = run(engine, tmp_path, simulate_failures={"extract_orders": 0, "extract_products": 9})
    assert task.status == "error"
    states = {s.name: s.status for s in task.steps}
    assert states["extract_products"] == "error"
    assert task.step("extract_products").attempts == 3
    error = task.step("extract_products").last_error
    assert error is not None
    message = error["message"]
    assert "gave up after 3 attempts" in message
    assert "past its max_outage_seconds=1" in message
    # the independent branch ran to the end; what needs the products never started
    assert states["transform_customer_metrics"] == "complete"
    assert {
        states[s]
        for s in (
            "transform_product_metrics",
            "generate_insights",
            "update_dashboard",
            "send_notifications",
        )
    } == {"pending"}
    assert task.annotations == {
        "failed_steps": ["extract_products"],
        "reasons": {"extract_products": message},
    }


def test_a_backwards_date_range_fails_at_once(engine: Tasker, tmp_path: Path) -> None:
    task = run(engine, tmp_path, date_range={"start_date": "2024-05-01", "end_date": "2024-04-01"})
    assert task.status == "error"
    for name in EXTRACTS:
        step = task.step(name)
        assert (step.status, step.attempts) == ("error", 1)
        assert step.last_error is not None
        assert (
            "date_range.end_date 2024-04-01 is before date_range.start_date 2024-05-01"
            in step.last_error["message"]
        )


def test_an_output_dir_that_cannot_exist_fails_the_dashboard_only(
    engine: Tasker, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    task = engine.run(
        engine.create_task(
            TEMPLATE,
            {"output_dir": str(blocker / "sub"), "simulate_failures": {"extract_orders": 0}},
        ).id
    )
    assert task.status == "error"
    dash = task.step("update_dashboard")
    assert (dash.status, dash.attempts) == ("error", 1)
    assert dash.last_error is not None
    assert dash.last_error["error_code"] == "OUTPUT_DIR_UNWRITABLE"
    assert "fix: set output_dir" in dash.last_error["message"]
    assert task.step("send_notifications").status == "complete"


def test_a_bad_context_is_refused_with_every_path(engine: Tasker) -> None:
    with pytest.raises(ContextValidationError) as caught:
        engine.create_task(
            TEMPLATE,
            {
                "volume": {"orders": -1},
                "date_range": {"start_date": "yesterday"},
                "notify": ["not-an-email"],
            },
        )
    text = str(caught.value)
    for path in ("output_dir", "$.volume.orders", "$.date_range.start_date", "$.notify[0]"):
        assert path in text, text
    assert engine.list_tasks()[1] == 0


def test_the_module_entry_point_runs_the_example(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "--database-url",
            store_url,
            "--output-dir",
            str(tmp_path),
            "--fail-first",
            "1",
            "--seed",
            "5",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "data_pipeline/customer_analytics@1.0.0: complete" in out
    assert "the three extractions overlapped" in out
    assert "simulated failure 1 of 1" in out
    assert len(list(tmp_path.glob("customer_analytics_*.json"))) == 1
