"""Sub-workflows in the API: a task links to its parent task and step, and the single-task read
lists its children (the list pages carry the links back, never the children); a template's
`task:` step shows the template it runs in place of a handler class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from tasker import Tasker
from tests.api.conftest import FAST_RETRY, HANDLER, create

API = "/api/v1"
CHILD = {
    "name": "refund_child",
    "namespace_name": "apitest",
    "version": "1.0.0",
    "retry": FAST_RETRY,
    "step_templates": [
        {"name": "pay", "handler_class": HANDLER},
        {"name": "confirm", "handler_class": HANDLER, "depends_on_step": "pay"},
    ],
}
PARENT = {
    "name": "refunds",
    "namespace_name": "apitest",
    "version": "1.0.0",
    "retry": FAST_RETRY,
    "step_templates": [
        {"name": "check", "handler_class": HANDLER},
        {
            "name": "refund",
            "depends_on_step": "check",
            "task": "apitest/refund_child",
            "context": {"amount": "results.check.amount", "reason": "'refund'", "priority": 2},
        },
        {"name": "after", "handler_class": HANDLER, "depends_on_step": "refund"},
    ],
}


@pytest.fixture
def api_templates(api_templates: Path) -> Path:
    """The API tests' templates, and a parent whose `refund` step runs a child task."""
    for filename, data in (("refund-child.yaml", CHILD), ("refunds.yaml", PARENT)):
        (api_templates / filename).write_text(yaml.safe_dump(data, sort_keys=False))
    return api_templates


def _step(task: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [s for s in task["steps"] if s["name"] == name]
    assert len(found) == 1, found
    return found[0]


def test_a_parent_lists_its_child_and_the_child_links_back(
    client: TestClient, engine: Tasker
) -> None:
    created = create(client, template="apitest/refunds", context={"amount": 7})
    assert created["children"] == []
    assert created["parent_task_id"] is None and created["parent_step_id"] is None
    parent_id = created["id"]
    engine.run(parent_id)

    parent = client.get(f"{API}/tasks/{parent_id}").json()
    assert parent["status"] == "complete"
    assert parent["children"] == engine.child_tasks(parent_id)
    (child_id,) = parent["children"]
    assert parent["parent_task_id"] is None and parent["parent_step_id"] is None
    refund = _step(parent, "refund")
    assert refund["results"] == {
        "pay": {"step": "pay", "amount": 7},
        "confirm": {"step": "confirm", "amount": 7},
    }
    assert refund["decision"] == f"waiting for child task {child_id} (apitest/refund_child@1.0.0)"

    child = client.get(f"{API}/tasks/{child_id}").json()
    assert child["status"] == "complete"
    assert child["template"] == "apitest/refund_child@1.0.0"
    assert (child["parent_task_id"], child["parent_step_id"]) == (parent_id, refund["id"])
    assert child["correlation_id"] == parent["correlation_id"]
    assert child["context"] == {"amount": 7, "reason": "refund", "priority": 2}
    assert child["children"] == []

    # The list pages carry the link back (a column of the task) but not the children (a query).
    listed = client.get(f"{API}/tasks", params={"namespace": "apitest"}).json()["tasks"]
    by_id = {t["id"]: t for t in listed}
    assert (by_id[child_id]["parent_task_id"], by_id[child_id]["parent_step_id"]) == (
        parent_id,
        refund["id"],
    )
    assert by_id[parent_id]["parent_task_id"] is None
    assert all("children" not in t for t in listed)


def test_the_spec_documents_the_links(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    summary, detail = schemas["TaskSummary"]["properties"], schemas["TaskDetail"]["properties"]
    for name in ("parent_task_id", "parent_step_id"):
        assert summary[name]["description"] and name in detail
    assert "children" not in summary
    children = detail["children"]
    assert children["type"] == "array" and children["items"] == {"type": "integer"}
    assert "child task" in children["description"]
    step = schemas["StepTemplateOut"]["properties"]
    assert "task" in step and step["task"]["description"]


def test_a_task_step_in_a_template_names_the_template_it_runs(client: TestClient) -> None:
    response = client.get(f"{API}/handlers/apitest/refunds")
    assert response.status_code == 200, response.text
    (version,) = response.json()["versions"]
    steps = {s["name"]: s for s in version["step_templates"]}
    assert steps["refund"]["handler_class"] is None
    assert steps["refund"]["task"] == "apitest/refund_child"
    assert steps["check"]["task"] is None and steps["check"]["handler_class"] == HANDLER
    nodes = {n["name"]: n for n in version["dependency_graph"]["nodes"]}
    assert nodes["refund"]["task"] == "apitest/refund_child"
    assert nodes["refund"]["handler_class"] is None
    diagram = client.get(f"{API}/handlers/apitest/refunds/diagram")
    assert diagram.status_code == 200, diagram.text
