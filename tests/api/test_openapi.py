"""The OpenAPI spec: every route under the prefix, credentials declared, errors documented; Swagger
UI."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

API = "/api/v1"
MINE = {
    ("post", "/tasks"),
    ("get", "/tasks"),
    ("get", "/tasks/{task_id}"),
    ("post", "/tasks/{task_id}/cancel"),
    ("post", "/tasks/{task_id}/retry"),
    ("post", "/tasks/{task_id}/compensate"),
    ("get", "/tasks/{task_id}/steps"),
    ("get", "/tasks/{task_id}/steps/{step_name}"),
    ("post", "/tasks/{task_id}/steps/{step_name}/resolve"),
    ("post", "/tasks/{task_id}/steps/{step_name}/retry"),
    ("get", "/handlers"),
    ("get", "/handlers/{namespace}"),
    ("get", "/handlers/{namespace}/{name}"),
    ("get", "/handlers/{namespace}/{name}/diagram"),
    ("get", "/tasks/{task_id}/diagram"),
}


def operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): op for path, item in spec["paths"].items() for method, op in item.items()
    }


def test_every_route_is_under_one_prefix_and_documents_its_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ops = operations(spec)
    assert all(path.startswith(API + "/") for _, path in ops)
    for method, path in MINE:
        op = ops[(method, API + path)]
        codes = set(op["responses"])
        assert {"401", "403"} <= codes, (method, path)
        assert codes & {"200", "201"}, (method, path)
        if "{" in path or method == "post":
            assert "422" in codes, (method, path)
        for code in codes - {"200", "201"}:
            schema = op["responses"][code]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, code)
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert set(ops[("post", f"{API}/tasks")]["responses"]) >= {"200", "201", "404", "413"}
    diagram = ops[("get", f"{API}/tasks/{{task_id}}/diagram")]["responses"]["200"]["content"]
    assert set(diagram) == {"application/json", "text/plain"}


def test_the_spec_declares_api_keys_and_bearer_tokens(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    api_key = [
        n
        for n, s in schemes.items()
        if s["type"] == "apiKey" and s["name"] == "X-API-Key" and s["in"] == "header"
    ]
    bearer = [
        n for n, s in schemes.items() if s["type"] == "http" and s["scheme"].lower() == "bearer"
    ]
    assert len(api_key) == 1 and len(bearer) == 1
    for method, path in MINE:
        security = operations(spec)[(method, API + path)]["security"]
        named = {name for requirement in security for name in requirement}
        assert named == {api_key[0], bearer[0]}, (method, path, security)


def test_swagger_ui_is_served(client: TestClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200 and "swagger-ui" in r.text
    assert (
        "openapi.json" in client.get("/docs/assets/tasker-docs.js").text
    )  # the page's start-up script
