"""`tasker keys create | list | revoke` on both stores, through the real command line."""

from __future__ import annotations

import hashlib

import pytest
from click.testing import CliRunner, Result
from rich.console import Console
from sqlalchemy import select

from tasker import Tasker
from tasker.cli.main import cli
from tasker.store.api_keys import looks_like_key
from tasker.store.schema import api_keys


def keys(store_url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--database-url", store_url, "keys", *args])


def test_create_prints_the_key_alone_on_stdout_and_stores_its_digest(store_url: str) -> None:
    result = keys(
        store_url,
        "create",
        "--name",
        "ci",
        "--permissions",
        "tasker.task:create,tasker.task:show",
        "--permission",
        "tasker.workflow_step:*",
    )
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert looks_like_key(key), result.stdout
    assert (
        "shown once" in result.stderr
        and "tasker.workflow_step:*" in result.stderr
        and key not in result.stderr
    )
    with Tasker(store_url) as engine:
        found = engine.keys.authenticate(key)
        assert found is not None
        assert found.permissions == (
            "tasker.task:create",
            "tasker.task:show",
            "tasker.workflow_step:*",
        )
        with engine.db.read() as conn:
            assert (
                conn.execute(select(api_keys.c.key_hash)).scalar_one()
                == hashlib.sha256(key.encode()).hexdigest()
            )


def test_the_database_url_may_come_from_the_environment(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKER_DATABASE_URL", store_url)
    result = CliRunner().invoke(cli, ["keys", "create", "--name", "env", "--permission", "*"])
    assert result.exit_code == 0, result.output
    listed = CliRunner().invoke(cli, ["keys", "list"])
    assert listed.exit_code == 0 and "env" in listed.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--permissions", "tasker.task:destroy"],
            "unknown permission 'tasker.task:destroy'; valid permissions: ",
        ),
        (
            ["--permission", "tasker.task:index", "--permission", "admin"],
            "unknown permission 'admin'",
        ),
        ([], "needs at least one permission"),
        (["--permissions", " , "], "needs at least one permission"),
    ],
)
def test_create_refuses_bad_permissions_with_exit_2_and_the_valid_list(
    store_url: str, args: list[str], message: str
) -> None:
    result = keys(store_url, "create", "--name", "ci", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "tasker.analytics:index" in result.stderr
    assert result.stdout == "" and "Traceback" not in result.output
    assert "0 API keys" in keys(store_url, "list").stdout


def test_create_refuses_a_taken_or_bad_name(store_url: str) -> None:
    assert keys(store_url, "create", "--name", "ci", "--permission", "*").exit_code == 0
    taken = keys(store_url, "create", "--name", "ci", "--permission", "*")
    assert taken.exit_code == 2 and "already exists" in taken.stderr
    bad = keys(store_url, "create", "--name", "two words", "--permission", "*")
    assert bad.exit_code == 2 and "invalid API key name" in bad.stderr
    missing = keys(store_url, "create", "--permission", "*")
    assert missing.exit_code == 2 and "--name" in missing.output


def test_list_shows_names_prefixes_and_status_but_never_secrets(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "tasker.cli.keys.console", Console(width=200)
    )  # one row per key, whatever the terminal
    first = keys(
        store_url, "create", "--name", "dashboard", "--permissions", "tasker.task:index"
    ).stdout.strip()
    second = keys(
        store_url, "create", "--name", "deployer", "--permission", "tasker.task:*"
    ).stdout.strip()
    assert keys(store_url, "revoke", "deployer").exit_code == 0
    result = keys(store_url, "list")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "2 API keys" in out
    lines = out.splitlines()
    dashboard = next(i for i, line in enumerate(lines) if "dashboard" in line)
    deployer = next(i for i, line in enumerate(lines) if "deployer" in line)
    assert "active" in lines[dashboard] and "tasker.task:index" in lines[dashboard]
    assert first[:11] in lines[dashboard + 1]  # the prefix, under the name
    assert "revoked" in lines[deployer] and "tasker.task:*" in lines[deployer]
    assert second[:11] in lines[deployer + 1]
    for key in (first, second):
        assert key.split("_", 2)[2] not in out


def test_revoke_makes_the_key_unusable_and_unknown_names_exit_2(store_url: str) -> None:
    key = keys(store_url, "create", "--name", "leaked", "--permission", "*").stdout.strip()
    result = keys(store_url, "revoke", "leaked")
    assert (
        result.exit_code == 0
        and "API key 'leaked'" in result.stdout
        and "revoked at" in result.stdout
    )
    with Tasker(store_url) as engine:
        assert engine.keys.authenticate(key) is None
    unknown = keys(store_url, "revoke", "nobody")
    assert unknown.exit_code == 2 and "no API key named 'nobody'" in unknown.stderr
    assert "tasker keys list" in unknown.stderr
