"""Authentication and authorisation over HTTP: the `require` dependency, and the 401/403/200 matrix
over every route of the real app, on both stores."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from tasker import Tasker
from tasker.api.app import create_app
from tasker.api.auth import Permission, PermissionCheck, Principal, require
from tasker.api.errors import install_error_handlers
from tasker.settings import Settings

SECRET = "a-test-secret-that-is-long-enough-for-hs256!"
ON = Settings(auth_enabled=True, jwt_secret=SECRET)
OPEN_PATHS = re.compile(r"/health/(live|ready)$")


def token(permissions: list[str] | None = None, **extra: Any) -> str:
    payload = {"sub": "deployer", "exp": int(time.time()) + 300, **extra}
    if permissions is not None:
        payload["permissions"] = permissions
    return jwt.encode(payload, SECRET, algorithm="HS256")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# -- `require` on a small app ----------------------------------------------------------------------


def small_app(engine: Tasker, settings: Settings) -> FastAPI:
    app = FastAPI()
    app.state.tasker = engine
    app.state.settings = settings
    install_error_handlers(app)

    @app.get("/open")
    def open_route() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/tasks", dependencies=[Depends(require(Permission.TASK_INDEX))])
    def list_tasks() -> dict[str, str]:
        return {"ok": "listed"}

    @app.post("/tasks")
    def create(
        who: Principal = Depends(require(Permission.TASK_CREATE)),
    ) -> dict[str, str]:
        return {"kind": who.kind, "name": who.name}

    return app


@pytest.fixture
def client(tasker: Tasker) -> Iterator[TestClient]:
    with TestClient(small_app(tasker, ON)) as c:
        yield c


def assert_401(response: Any, message: str) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["error"]["status"] == 401 and body["error"]["code"] == "unauthorized", body
    assert message in body["error"]["message"], body
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="tasker"')


def test_auth_off_lets_every_request_through(tasker: Tasker) -> None:
    with TestClient(small_app(tasker, Settings())) as c:
        assert c.get("/tasks").status_code == 200
        assert c.post("/tasks").json() == {"kind": "anonymous", "name": "anonymous"}
        assert c.get("/tasks", headers={"X-API-Key": "rubbish"}).status_code == 200


def test_no_credential_is_401_with_a_challenge_and_the_api_error_body(client: TestClient) -> None:
    response = client.get("/tasks")
    assert_401(response, "authentication required")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tasker"'
    assert client.get("/open").status_code == 200  # a route without `require` stays open


def test_an_api_key_with_the_permission_passes_and_one_without_gets_403(
    tasker: Tasker, client: TestClient
) -> None:
    _, reader = tasker.keys.create("reader", ["tasker.task:index"])
    assert client.get("/tasks", headers={"X-API-Key": reader}).json() == {"ok": "listed"}
    response = client.post("/tasks", headers={"X-API-Key": reader})
    assert response.status_code == 403
    assert response.json()["error"] == {
        "status": 403,
        "code": "forbidden",
        "details": [],
        "message": "API key 'reader' lacks the permission tasker.task:create",
    }
    assert reader not in response.text


def test_an_api_key_may_be_sent_as_a_bearer_token(tasker: Tasker, client: TestClient) -> None:
    _, key = tasker.keys.create("ci", ["tasker.task:create"])
    assert client.post("/tasks", headers=bearer(key)).json() == {"kind": "api_key", "name": "ci"}
    assert client.post("/tasks", headers={"Authorization": f"bEaReR   {key}  "}).status_code == 200


def test_wildcards_grant_a_resource_or_everything(tasker: Tasker, client: TestClient) -> None:
    _, tasks_key = tasker.keys.create("tasks", ["tasker.task:*"])
    _, admin = tasker.keys.create("admin", ["*"])
    _, other = tasker.keys.create("steps", ["tasker.workflow_step:*"])
    for key in (tasks_key, admin):
        assert client.post("/tasks", headers={"X-API-Key": key}).status_code == 200
    assert client.post("/tasks", headers={"X-API-Key": other}).status_code == 403


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X-API-Key": "tk_0123abcd_" + "a" * 43}, "invalid or revoked API key"),
        ({"X-API-Key": "not-a-key"}, "invalid or revoked API key"),
        ({"X-API-Key": "   "}, "X-API-Key header is empty"),
        ({"Authorization": "Bearer"}, "the bearer token is empty"),
        ({"Authorization": "Bearer    "}, "the bearer token is empty"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "unsupported Authorization scheme"),
        ({"Authorization": "Bearer not.a.jwt"}, "malformed"),
        ({"Authorization": "Bearer " + "x" * 9000}, "longer than"),
        ({"X-API-Key": "k", "Authorization": "Bearer t"}, "not both"),
    ],
)
def test_bad_credentials_are_401(client: TestClient, headers: dict[str, str], message: str) -> None:
    response = client.get("/tasks", headers=headers)
    assert_401(response, message)
    assert "error=" in response.headers["WWW-Authenticate"]


def test_a_revoked_key_is_refused_at_once(tasker: Tasker, client: TestClient) -> None:
    _, key = tasker.keys.create("leaked", ["*"])
    assert client.get("/tasks", headers={"X-API-Key": key}).status_code == 200
    tasker.keys.revoke("leaked")
    assert_401(client.get("/tasks", headers={"X-API-Key": key}), "invalid or revoked API key")
    assert_401(client.get("/tasks", headers=bearer(key)), "invalid or revoked API key")


def test_messages_never_echo_the_credential(tasker: Tasker, client: TestClient) -> None:
    _, key = tasker.keys.create("ci", ["tasker.task:index"])
    secret = key.split("_", 2)[2]
    for headers in (
        {"Authorization": key},
        {"Authorization": f"Token {key}"},
        {"X-API-Key": key + "x"},
        {"X-API-Key": key},
        bearer(token(["tasker.task:index"], exp=1)),
    ):
        for response in (
            client.get("/tasks", headers=headers),
            client.post("/tasks", headers=headers),
        ):
            assert response.status_code in (200, 401, 403)
            assert secret not in response.text and secret not in str(response.headers)


def test_jwt_bearer_tokens(client: TestClient) -> None:
    assert client.post("/tasks", headers=bearer(token(["tasker.task:create"]))).json() == {
        "kind": "jwt",
        "name": "deployer",
    }
    assert client.get("/tasks", headers=bearer(token(scope="tasker.task:index"))).status_code == 200
    forbidden = client.post("/tasks", headers=bearer(token(["tasker.task:index"])))
    assert (
        forbidden.status_code == 403
        and "token of 'deployer' lacks" in forbidden.json()["error"]["message"]
    )
    assert_401(
        client.get("/tasks", headers=bearer(token(["*"], exp=int(time.time()) - 600))), "expired"
    )
    wrong = jwt.encode(
        {"exp": int(time.time()) + 60, "permissions": ["*"]}, SECRET + "!", algorithm="HS256"
    )
    assert_401(client.get("/tasks", headers=bearer(wrong)), "signature is invalid")


def test_a_misconfigured_public_key_is_a_clear_500_not_a_traceback(
    tasker: Tasker, tmp_path: Path
) -> None:
    settings = Settings(auth_enabled=True, jwt_public_key=str(tmp_path / "missing.pem"))
    with TestClient(small_app(tasker, settings), raise_server_exceptions=False) as c:
        response = c.get("/tasks", headers=bearer(token(["*"])))
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "auth_misconfigured"
    assert "missing.pem" not in response.text


def test_unknown_permissions_fail_when_routes_are_declared() -> None:
    with pytest.raises(ValueError, match=r"unknown permission 'tasker\.task:destroy'"):
        require("tasker.task:destroy")


# -- the matrix over the real app ------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    path: str
    method: str
    permission: str | None  # None: the route is open


def routes_of(app: FastAPI) -> list[Endpoint]:
    """Every API route of the app with the permission its `require` checks, as FastAPI will serve
    it."""
    try:  # FastAPI >= 0.16x nests included routers; older releases flatten them into app.routes
        from fastapi.routing import iter_route_contexts

        contexts: list[Any] = list(iter_route_contexts(app.routes))
    except ImportError:  # pragma: no cover - depends on the FastAPI release
        contexts = list(app.routes)
    out = []
    for ctx in contexts:
        original = getattr(ctx, "original_route", ctx)
        if not isinstance(original, APIRoute):
            continue  # /openapi.json and /docs
        dependant = getattr(ctx, "dependant", None) or original.dependant
        checks = [d.call for d in dependant.dependencies if isinstance(d.call, PermissionCheck)]
        assert len(checks) <= 1, f"{ctx.path} requires several permissions"
        for method in sorted(ctx.methods or ()):
            out.append(Endpoint(ctx.path, method, checks[0].permission if checks else None))
    return out


def call(client: TestClient, endpoint: Endpoint, headers: dict[str, str]) -> Any:
    path = re.sub(r"\{[^}/]+\}", "1", endpoint.path)
    # timeout_seconds ends the event stream; other routes ignore unknown query parameters.
    return client.request(
        endpoint.method,
        path,
        headers=headers,
        params={"timeout_seconds": "0.2"},
        json={} if endpoint.method in ("POST", "PUT", "PATCH") else None,
    )


def test_every_route_but_health_live_and_ready_requires_a_permission(tasker: Tasker) -> None:
    endpoints = routes_of(create_app(tasker, ON))
    open_paths = sorted({e.path for e in endpoints if e.permission is None})
    assert len(open_paths) == 2 and all(OPEN_PATHS.search(p) for p in open_paths), open_paths
    used = {e.permission for e in endpoints if e.permission}
    # No route edits a task's attributes, so tasker.task:update guards nothing (yet).
    assert set(Permission.ALL) - used <= {Permission.TASK_UPDATE}, sorted(
        set(Permission.ALL) - used
    )


def test_health_live_and_ready_stay_open_with_auth_on(tasker: Tasker) -> None:
    app = create_app(tasker, ON)
    with TestClient(app, raise_server_exceptions=False) as c:
        for endpoint in routes_of(app):
            if endpoint.permission is None:
                response = call(c, endpoint, {})
                assert response.status_code in (200, 503), (endpoint, response.text)


def test_401_403_200_matrix_over_every_route(tasker: Tasker) -> None:
    app = create_app(tasker, ON)
    endpoints = [e for e in routes_of(app) if e.permission is not None]
    keys: dict[str, tuple[str, str]] = {}
    for i, permission in enumerate(sorted({e.permission for e in endpoints if e.permission})):
        _, exact = tasker.keys.create(f"only-{i}", [permission])
        _, others = tasker.keys.create(
            f"all-but-{i}", [p for p in Permission.ALL if p != permission]
        )
        keys[permission] = (exact, others)
    problems: list[str] = []
    with TestClient(app, raise_server_exceptions=False) as c:
        for endpoint in endpoints:
            assert endpoint.permission is not None
            exact, others = keys[endpoint.permission]
            all_but = [p for p in Permission.ALL if p != endpoint.permission]
            refused = [
                ("no credential", {}, 401),
                ("an unknown key", {"X-API-Key": "tk_0123abcd_" + "b" * 43}, 401),
                ("a key without it", {"X-API-Key": others}, 403),
                ("a token without it", bearer(token(all_but)), 403),
            ]
            for what, headers, expected in refused:
                response = call(c, endpoint, headers)
                if response.status_code != expected:
                    problems.append(
                        f"{endpoint} with {what}: {response.status_code} {response.text[:200]}"
                    )
            for what, headers in (
                ("a key with exactly it", {"X-API-Key": exact}),
                ("a token with exactly it", bearer(token([endpoint.permission]))),
            ):
                response = call(c, endpoint, headers)
                if response.status_code in (401, 403) or response.status_code >= 500:
                    problems.append(
                        f"{endpoint} with {what}: {response.status_code} {response.text[:200]}"
                    )
    assert len(endpoints) >= 15, f"only {len(endpoints)} protected routes found"
    assert not problems, "\n".join(problems)


def test_the_checkout_story_with_keys(tasker: Tasker, tmp_path: Path) -> None:
    """What an operator does with auth on: a creating key creates (201), a reading key reads, others
    are refused."""
    path = tmp_path / "shop.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "checkout",
                "namespace_name": "shop",
                "version": "1.0.0",
                "step_templates": [
                    {"name": "charge", "handler_class": "tests.unit.sample_handlers:Ok"}
                ],
            }
        )
    )
    tasker.load_templates(path)
    _, creator = tasker.keys.create("shop-frontend", ["tasker.task:create"])
    _, reader = tasker.keys.create("dashboard", ["tasker.task:index", "tasker.task:show"])
    body = {"template": "shop/checkout", "context": {"order": 1}}
    with TestClient(create_app(tasker, ON)) as c:
        assert c.post("/api/v1/tasks", json=body).status_code == 401
        assert c.post("/api/v1/tasks", json=body, headers={"X-API-Key": reader}).status_code == 403
        created = c.post("/api/v1/tasks", json=body, headers={"X-API-Key": creator})
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        assert c.get(f"/api/v1/tasks/{task_id}", headers={"X-API-Key": creator}).status_code == 403
        shown = c.get(f"/api/v1/tasks/{task_id}", headers={"X-API-Key": reader})
        assert shown.status_code == 200 and shown.json()["id"] == task_id
    used = {k.name: k.last_used_at for k in tasker.keys.all()}
    assert used["shop-frontend"] is not None and used["dashboard"] is not None
