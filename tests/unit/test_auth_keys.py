"""API keys: format, hashing, permission vocabulary, and the engine's key management on both
stores."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from tasker import Tasker
from tasker.api.auth import Permission
from tasker.domain.errors import NotFoundError, TaskerInputError
from tasker.store import api_keys as key_store
from tasker.store.schema import api_keys


def test_a_key_is_random_has_its_prefix_and_is_recognised() -> None:
    first, prefix = key_store.generate_key()
    second, _ = key_store.generate_key()
    assert first != second
    assert first.startswith(prefix + "_") and prefix.startswith("tk_") and len(prefix) == 11
    assert key_store.looks_like_key(first)
    assert len(first.split("_", 2)[2]) == 43  # 256 random bits, url-safe


@pytest.mark.parametrize(
    "value",
    [
        "",
        "tk_",
        "tk_0123abcd_short",
        "tk_0123ABCD_" + "a" * 43,
        "xx_0123abcd_" + "a" * 43,
        "tk_0123abcd_" + "a" * 42 + "!",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig",
        "tk_0123abcd_" + "a" * 44,
    ],
)
def test_values_that_are_not_keys(value: str) -> None:
    assert not key_store.looks_like_key(value)


def test_the_digest_is_sha256_hex() -> None:
    key, _ = key_store.generate_key()
    assert key_store.digest(key) == hashlib.sha256(key.encode()).hexdigest()
    assert len(key_store.digest(key)) == 64


def test_the_permission_class_and_the_vocabulary_agree() -> None:
    constants = {v for k, v in vars(Permission).items() if k.isupper() and isinstance(v, str)}
    assert constants == set(key_store.PERMISSIONS) == set(Permission.ALL)
    assert len(key_store.PERMISSIONS) == 23


@pytest.mark.parametrize(
    ("granted", "needed", "allowed"),
    [
        (["tasker.task:index"], "tasker.task:index", True),
        (["tasker.task:index"], "tasker.task:show", False),
        (["tasker.task:*"], "tasker.task:cancel", True),
        (["tasker.task:*"], "tasker.workflow_step:index", False),
        (["*"], "tasker.metrics:index", True),
        ([], "tasker.task:index", False),
        (["tasker.task"], "tasker.task:index", False),
        (["tasker.*"], "tasker.task:index", False),
    ],
)
def test_grants_and_wildcards(granted: list[str], needed: str, allowed: bool) -> None:
    assert key_store.grants(granted, needed) is allowed


def test_permissions_are_checked_deduplicated_and_kept_in_order() -> None:
    got = key_store.check_permissions(
        [" tasker.task:show", "tasker.task:*", "tasker.task:show", ""]
    )
    assert got == ("tasker.task:show", "tasker.task:*")


@pytest.mark.parametrize(
    "names", [["tasker.task:destroy"], ["TASKER.TASK:INDEX"], ["tasker.*"], [], [" "]]
)
def test_unknown_or_missing_permissions_are_refused_with_the_valid_ones_listed(
    names: list[str],
) -> None:
    with pytest.raises(TaskerInputError) as info:
        key_store.check_permissions(names)
    assert "tasker.task:index" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name", ["", "has space", "-starts-with-dash", "x" * 129, "emoji\u2603", "semi;colon"]
)
def test_bad_key_names_are_refused(name: str) -> None:
    with pytest.raises(TaskerInputError, match="invalid API key name"):
        key_store.check_name(name)


# -- the engine on both stores ---------------------------------------------------------------------


def _stored_hash(tasker: Tasker, name: str) -> str:
    with tasker.db.read() as conn:
        return str(
            conn.execute(select(api_keys.c.key_hash).where(api_keys.c.name == name)).scalar_one()
        )


def test_a_created_key_is_stored_as_a_digest_only_and_authenticates(tasker: Tasker) -> None:
    record, key = tasker.keys.create("ci", ["tasker.task:create", "tasker.task:show"])
    assert record.name == "ci" and record.permissions == ("tasker.task:create", "tasker.task:show")
    assert key.startswith(record.prefix) and not record.revoked
    assert _stored_hash(tasker, "ci") == hashlib.sha256(key.encode()).hexdigest()
    with tasker.db.read() as conn:
        row = conn.execute(select(api_keys)).one()
    assert key not in [str(v) for v in row]  # the secret is stored nowhere
    found = tasker.keys.authenticate(key)
    assert found is not None and found.name == "ci" and found.can("tasker.task:show")
    assert not found.can("tasker.task:cancel")


def test_permissions_may_be_given_as_a_comma_separated_string(tasker: Tasker) -> None:
    record, _ = tasker.keys.create("ops", "tasker.task:*,tasker.metrics:index")
    assert record.permissions == ("tasker.task:*", "tasker.metrics:index")


def test_unknown_malformed_and_revoked_keys_do_not_authenticate(tasker: Tasker) -> None:
    _, key = tasker.keys.create("ci", ["*"])
    other, _ = key_store.generate_key()
    assert tasker.keys.authenticate(other) is None  # well-formed, never issued
    assert tasker.keys.authenticate(key + "x") is None
    assert tasker.keys.authenticate("") is None
    assert tasker.keys.authenticate(key.upper()) is None
    revoked = tasker.keys.revoke("ci")
    assert revoked.revoked and revoked.revoked_at is not None
    assert tasker.keys.authenticate(key) is None
    again = tasker.keys.revoke("ci")
    assert again.revoked_at == revoked.revoked_at  # the first revocation date is kept


def test_names_are_unique_even_after_revocation(tasker: Tasker) -> None:
    tasker.keys.create("ci", ["*"])
    with pytest.raises(TaskerInputError, match="already exists"):
        tasker.keys.create("ci", ["*"])
    tasker.keys.revoke("ci")
    with pytest.raises(TaskerInputError, match="already exists"):
        tasker.keys.create("ci", ["*"])


def test_creation_refuses_bad_input_without_storing_anything(tasker: Tasker) -> None:
    with pytest.raises(TaskerInputError, match=r"unknown permission 'tasker\.task:destroy'"):
        tasker.keys.create("ci", ["tasker.task:destroy"])
    with pytest.raises(TaskerInputError, match="invalid API key name"):
        tasker.keys.create("bad name", ["*"])
    assert tasker.keys.all() == []


def test_revoking_an_unknown_key_says_how_to_find_keys(tasker: Tasker) -> None:
    with pytest.raises(NotFoundError, match="tasker keys list"):
        tasker.keys.revoke("nobody")


def test_keys_are_listed_by_name_without_secrets(tasker: Tasker) -> None:
    tasker.keys.create("zeta", ["*"])
    tasker.keys.create("alpha", ["tasker.metrics:index"])
    tasker.keys.revoke("zeta")
    listed = tasker.keys.all()
    assert [(k.name, k.revoked) for k in listed] == [("alpha", False), ("zeta", True)]
    assert not any(hasattr(k, "key_hash") for k in listed)


def test_last_used_is_written_at_most_once_a_minute(tasker: Tasker) -> None:
    record, key = tasker.keys.create("ci", ["*"])
    assert record.last_used_at is None
    tasker.keys.authenticate(key)
    first = tasker.keys.all()[0].last_used_at
    assert first is not None
    tasker.keys.authenticate(key)
    assert tasker.keys.all()[0].last_used_at == first  # within the minute: no write
    earlier = first - timedelta(minutes=2)
    with tasker.db.write() as conn:
        conn.execute(update(api_keys).values(last_used_at=earlier))
    tasker.keys.authenticate(key)
    latest = tasker.keys.all()[0].last_used_at
    assert latest is not None and latest > earlier + timedelta(minutes=1)
