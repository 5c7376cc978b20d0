"""Handler discovery and diagrams over HTTP."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tasker import Tasker
from tests.api.conftest import create, error_of

API = "/api/v1"


def test_namespaces_with_counts(client: TestClient) -> None:
    body = client.get(f"{API}/handlers").json()
    assert body == {
        "namespaces": [
            {"name": "apitest", "handler_count": 1, "version_count": 2},
            {"name": "other", "handler_count": 1, "version_count": 1},
        ],
        "total_namespaces": 2,
    }


def test_templates_of_a_namespace_and_unknown_namespaces(client: TestClient) -> None:
    body = client.get(f"{API}/handlers/apitest").json()
    assert body == {
        "namespace": "apitest",
        "total_handlers": 1,
        "handlers": [
            {
                "namespace": "apitest",
                "name": "order",
                "description": "Version two",
                "versions": ["1.0.0", "1.1.0"],
                "latest_version": "1.1.0",
            }
        ],
    }
    error = error_of(client.get(f"{API}/handlers/payments"), 404, "not_found")
    assert "apitest, other" in error["message"]
    error_of(client.get(f"{API}/handlers/' OR 1=1 --"), 422, "validation_error")


def test_one_template_with_steps_graph_and_order(client: TestClient) -> None:
    body = client.get(f"{API}/handlers/apitest/order").json()
    assert body["latest_version"] == "1.1.0"
    assert [v["version"] for v in body["versions"]] == ["1.0.0", "1.1.0"]
    v = body["versions"][1]
    assert v["key"] == "apitest/order@1.1.0" and v["context_schema"]["required"] == ["email"]
    # every dependency counts, depends_on_steps included (the Ruby engine's graph dropped those)
    assert sorted((e["from"], e["to"]) for e in v["dependency_graph"]["edges"]) == [
        ("charge", "ship"),
        ("reserve", "ship"),
        ("validate", "charge"),
        ("validate", "reserve"),
    ]
    assert [n["id"] for n in v["dependency_graph"]["nodes"]] == [
        "validate",
        "charge",
        "reserve",
        "ship",
    ]
    assert v["execution_order"] == ["validate", "charge", "reserve", "ship"]
    assert v["execution_levels"] == [["validate"], ["charge", "reserve"], ["ship"]]
    steps = {s["name"]: s for s in v["step_templates"]}
    assert (
        steps["ship"]["dependencies"] == ["charge", "reserve"]
        and steps["ship"]["depends_on_step"] is None
    )
    assert (
        steps["charge"]["dependent_system"] == "payments"
        and steps["reserve"]["dependent_system"] == "shop"
    )
    assert steps["validate"]["timeout_seconds"] == 5
    # handler_config values may hold secrets from ${VAR}: only the keys are shown
    assert steps["validate"]["handler_config_keys"] == ["api_token", "timeout_seconds"]
    assert "s3cret" not in client.get(f"{API}/handlers/apitest/order").text


def test_one_version_of_a_template_and_unknown_ones(client: TestClient) -> None:
    body = client.get(f"{API}/handlers/apitest/order", params={"version": "1.0.0"}).json()
    assert [v["version"] for v in body["versions"]] == ["1.0.0"] and body[
        "latest_version"
    ] == "1.1.0"
    error = error_of(
        client.get(f"{API}/handlers/apitest/order", params={"version": "2.0.0"}),
        404,
        "unknown_template",
    )
    assert "apitest/order@1.0.0" in error["message"]
    error = error_of(client.get(f"{API}/handlers/apitest/refund"), 404, "unknown_template")
    assert "other/ping@0.1.0" in error["message"]
    error_of(
        client.get(f"{API}/handlers/apitest/order", params={"version": "latest"}),
        422,
        "validation_error",
    )


def test_template_diagram_as_json_or_text(client: TestClient) -> None:
    body = client.get(f"{API}/handlers/apitest/order/diagram").json()
    assert body["template"] == "apitest/order@1.1.0" and body["task_id"] is None
    assert body["mermaid"].startswith("graph TD\n") and "s2 --> s3" in body["mermaid"]
    text = client.get(
        f"{API}/handlers/apitest/order/diagram", params={"format": "text", "version": "1.0.0"}
    )
    assert text.headers["content-type"].startswith("text/plain") and text.text == body["mermaid"]
    accepted = client.get(f"{API}/handlers/apitest/order/diagram", headers={"Accept": "text/plain"})
    assert accepted.headers["content-type"].startswith("text/plain")
    both = client.get(
        f"{API}/handlers/apitest/order/diagram", headers={"Accept": "application/json, text/plain"}
    )
    assert both.json()["mermaid"] == body["mermaid"]
    error_of(client.get(f"{API}/handlers/apitest/nope/diagram"), 404, "unknown_template")
    error_of(client.get(f"{API}/handlers/apitest/order/diagram", params={"format": "svg"}), 422)


def test_task_diagram_colours_each_step_by_state(client: TestClient, engine: Tasker) -> None:
    task_id = create(client, context={"email": "a@example.com", "fail": "charge"})["id"]
    engine.run(task_id)
    body = client.get(f"{API}/tasks/{task_id}/diagram").json()
    assert body["task_id"] == task_id and body["template"] == "apitest/order@1.1.0"
    for line in (
        's0["validate<br/>complete"]',
        's1["charge<br/>error"]',
        "class s1 error",
        "class s3 pending",
        "classDef error fill:#fee2e2",
    ):
        assert line in body["mermaid"]
    text = client.get(f"{API}/tasks/{task_id}/diagram?format=text")
    assert text.text == body["mermaid"]
    error_of(client.get(f"{API}/tasks/424242/diagram"), 404, "not_found")
    error_of(client.get(f"{API}/tasks/x/diagram"), 422)
