"""JWT bearer tokens: HS256 and RS256, claims, algorithm confusion, `none`, malformed tokens,
settings."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tasker.api.auth import (
    AuthConfigError,
    CredentialError,
    auth_warning,
    check_auth_settings,
    verify_jwt,
)
from tasker.settings import Settings

SECRET = "a-test-secret-that-is-long-enough-for-hs256!"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def claims(**extra: Any) -> dict[str, Any]:
    return {
        "sub": "deployer",
        "exp": int(time.time()) + 300,
        "permissions": ["tasker.task:create"],
        **extra,
    }


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token built by hand, as an attacker would, without PyJWT's guard rails."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    sig = (
        b""
        if hmac_key is None
        else hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    )
    return f"{signing_input}.{b64(sig)}"


HS = Settings(auth_enabled=True, jwt_secret=SECRET)


def test_a_valid_hs256_token_gives_its_subject_and_permissions() -> None:
    p = verify_jwt(jwt.encode(claims(), SECRET, algorithm="HS256"), HS)
    assert (p.kind, p.name, p.permissions) == ("jwt", "deployer", frozenset({"tasker.task:create"}))
    assert p.can("tasker.task:create") and not p.can("tasker.task:cancel")


def test_a_valid_rs256_token_verifies_with_the_public_key(rsa_key: rsa.RSAPrivateKey) -> None:
    settings = Settings(auth_enabled=True, jwt_public_key=public_pem(rsa_key))
    p = verify_jwt(jwt.encode(claims(), rsa_key, algorithm="RS256"), settings)
    assert p.can("tasker.task:create")


def test_the_public_key_may_be_a_file_or_one_line_pem(
    rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    path = tmp_path / "jwt.pub"
    path.write_text(public_pem(rsa_key))
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert (
        verify_jwt(token, Settings(auth_enabled=True, jwt_public_key=str(path))).name == "deployer"
    )
    one_line = public_pem(rsa_key).replace("\n", "\\n")
    assert (
        verify_jwt(token, Settings(auth_enabled=True, jwt_public_key=one_line)).name == "deployer"
    )


def test_a_token_signed_by_another_key_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(CredentialError, match="signature is invalid"):
        verify_jwt(jwt.encode(claims(), SECRET + "x", algorithm="HS256"), HS)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    settings = Settings(auth_enabled=True, jwt_public_key=public_pem(rsa_key))
    with pytest.raises(CredentialError, match="signature is invalid"):
        verify_jwt(jwt.encode(claims(), other, algorithm="RS256"), settings)


def test_a_tampered_payload_is_refused() -> None:
    head, _, sig = jwt.encode(claims(), SECRET, algorithm="HS256").split(".")
    body = b64(json.dumps(claims(permissions=["*"])).encode())
    with pytest.raises(CredentialError, match="signature is invalid"):
        verify_jwt(f"{head}.{body}.{sig}", HS)


def test_hs256_signed_with_the_public_key_is_refused_when_only_rs256_is_configured(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    pem = public_pem(rsa_key)
    token = forge({"alg": "HS256", "typ": "JWT"}, claims(permissions=["*"]), pem.encode())
    with pytest.raises(
        CredentialError, match="algorithm 'HS256' is not accepted; this server accepts RS256"
    ):
        verify_jwt(token, Settings(auth_enabled=True, jwt_public_key=pem))


def test_hs256_signed_with_the_public_key_is_refused_when_both_are_configured(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    pem = public_pem(rsa_key)
    token = forge({"alg": "HS256", "typ": "JWT"}, claims(permissions=["*"]), pem.encode())
    with pytest.raises(CredentialError, match="signature is invalid"):
        verify_jwt(token, Settings(auth_enabled=True, jwt_secret=SECRET, jwt_public_key=pem))


def test_rs256_is_refused_when_only_a_secret_is_configured(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(CredentialError, match="'RS256' is not accepted; this server accepts HS256"):
        verify_jwt(jwt.encode(claims(), rsa_key, algorithm="RS256"), HS)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "HS512", "ES256", ""])
def test_algorithms_the_server_did_not_configure_are_refused(alg: str) -> None:
    token = forge({"alg": alg, "typ": "JWT"}, claims(permissions=["*"]), None)
    with pytest.raises(CredentialError, match="is not accepted"):
        verify_jwt(token, HS)


def test_a_hostile_algorithm_name_is_not_echoed() -> None:
    token = forge({"alg": "<script>alert(1)</script>"}, claims(), None)
    with pytest.raises(CredentialError) as info:
        verify_jwt(token, HS)
    assert "script" not in info.value.message


def test_expiry_is_required_and_checked_with_a_small_leeway() -> None:
    now = int(time.time())
    with pytest.raises(CredentialError, match="has expired"):
        verify_jwt(jwt.encode(claims(exp=now - 120), SECRET, algorithm="HS256"), HS)
    assert (
        verify_jwt(jwt.encode(claims(exp=now - 5), SECRET, algorithm="HS256"), HS).name
        == "deployer"
    )
    no_exp = claims()
    del no_exp["exp"]
    with pytest.raises(CredentialError, match="lacks the required claim 'exp'"):
        verify_jwt(jwt.encode(no_exp, SECRET, algorithm="HS256"), HS)
    with pytest.raises(CredentialError, match="malformed or has an invalid claim"):
        verify_jwt(jwt.encode(claims(exp="tomorrow"), SECRET, algorithm="HS256"), HS)


def test_nbf_and_iat_in_the_future_are_refused_beyond_the_leeway() -> None:
    now = int(time.time())
    for claim in ("nbf", "iat"):
        with pytest.raises(CredentialError, match="not valid yet"):
            verify_jwt(jwt.encode(claims(**{claim: now + 600}), SECRET, algorithm="HS256"), HS)
        assert verify_jwt(
            jwt.encode(claims(**{claim: now + 5}), SECRET, algorithm="HS256"), HS
        ).name


def test_audience_and_issuer_are_checked_when_configured() -> None:
    strict = Settings(
        auth_enabled=True, jwt_secret=SECRET, jwt_audience="tasker-api", jwt_issuer="https://idp"
    )

    def token(**extra: Any) -> str:
        return jwt.encode(claims(**extra), SECRET, algorithm="HS256")

    assert verify_jwt(token(aud="tasker-api", iss="https://idp"), strict).name == "deployer"
    assert (
        verify_jwt(token(aud=["other", "tasker-api"], iss="https://idp"), strict).name == "deployer"
    )
    with pytest.raises(CredentialError, match="audience does not match"):
        verify_jwt(token(aud="billing-api", iss="https://idp"), strict)
    with pytest.raises(CredentialError, match="lacks the required claim 'aud'"):
        verify_jwt(token(iss="https://idp"), strict)
    with pytest.raises(CredentialError, match="issuer does not match"):
        verify_jwt(token(aud="tasker-api", iss="https://evil"), strict)
    with pytest.raises(CredentialError, match="lacks the required claim 'iss'"):
        verify_jwt(token(aud="tasker-api"), strict)


def test_a_token_meant_for_an_audience_is_refused_by_a_server_that_expects_none() -> None:
    with pytest.raises(CredentialError, match="set TASKER_JWT_AUDIENCE"):
        verify_jwt(jwt.encode(claims(aud="billing-api"), SECRET, algorithm="HS256"), HS)


def test_permissions_come_from_the_permissions_list_and_the_scope() -> None:
    token = jwt.encode(
        claims(permissions=["tasker.task:*"], scope="openid tasker.metrics:index email"),
        SECRET,
        algorithm="HS256",
    )
    p = verify_jwt(token, HS)
    assert p.permissions == frozenset(
        {"tasker.task:*", "tasker.metrics:index"}
    )  # unknown scopes grant nothing
    assert (
        p.can("tasker.task:retry")
        and p.can("tasker.metrics:index")
        and not p.can("tasker.handler:index")
    )
    scoped = {"sub": "svc", "exp": int(time.time()) + 60, "scope": "tasker.handler:index"}
    assert verify_jwt(jwt.encode(scoped, SECRET, algorithm="HS256"), HS).can("tasker.handler:index")
    bare = verify_jwt(jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"), HS)
    assert bare.permissions == frozenset() and bare.name == "unnamed subject"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"permissions": "tasker.task:index"}, "'permissions' must be a list of strings"),
        ({"permissions": [1, 2]}, "'permissions' must be a list of strings"),
        ({"scope": ["tasker.task:index"]}, "'scope' must be a space-separated string"),
        ({"sub": 42}, "malformed or has an invalid claim"),
    ],
)
def test_badly_typed_claims_are_refused(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(CredentialError, match=message):
        verify_jwt(jwt.encode(claims(**extra), SECRET, algorithm="HS256"), HS)


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b.c",
        "a.b",
        "....",
        "eyJhbGciOiJIUzI1NiJ9",
        "\u2603.\u2603.\u2603",
        b64(b"not json") + "." + b64(b"{}") + ".",
        b64(b'["list"]') + "." + b64(b"{}") + ".",
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(CredentialError):
        verify_jwt(token, HS)


def test_a_header_with_a_valid_signature_but_a_broken_payload_is_refused() -> None:
    header = b64(json.dumps({"alg": "HS256"}).encode())
    signing_input = f"{header}.{b64(b'not json')}"
    sig = b64(hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())
    with pytest.raises(CredentialError, match="malformed"):
        verify_jwt(f"{signing_input}.{sig}", HS)


def test_huge_tokens_are_refused_before_parsing() -> None:
    with pytest.raises(CredentialError, match="longer than"):
        verify_jwt("a" * 10_000, HS)


def test_without_a_jwt_key_bearer_tokens_are_refused() -> None:
    with pytest.raises(CredentialError, match="no JWT key configured"):
        verify_jwt(jwt.encode(claims(), SECRET, algorithm="HS256"), Settings(auth_enabled=True))


# -- settings --------------------------------------------------------------------------------------


def test_warnings_at_start_up() -> None:
    off = auth_warning(Settings())
    assert off is not None and "authentication is OFF" in off and "TASKER_AUTH_ENABLED" in off
    assert auth_warning(Settings(auth_enabled=True)) is None
    assert auth_warning(HS) is None
    short = auth_warning(Settings(auth_enabled=True, jwt_secret="tiny-secret"))
    assert short is not None and "shorter than 32 bytes" in short and "tiny-secret" not in short


def test_bad_public_keys_fail_at_start_up_with_one_line(tmp_path: Path) -> None:
    check_auth_settings(Settings())  # off: nothing to check
    missing = tmp_path / "missing.pem"
    with pytest.raises(AuthConfigError, match="cannot read the PEM file"):
        check_auth_settings(Settings(auth_enabled=True, jwt_public_key=str(missing)))
    with pytest.raises(AuthConfigError, match="not a PEM public key"):
        check_auth_settings(
            Settings(auth_enabled=True, jwt_public_key="-----BEGIN PUBLIC KEY-----\ngarbage\n")
        )
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(AuthConfigError, match="not an RSA key"):
        check_auth_settings(Settings(auth_enabled=True, jwt_public_key=ec_pem))
    with pytest.raises(AuthConfigError, match="TASKER_JWT_SECRET is empty"):
        check_auth_settings(Settings(auth_enabled=True, jwt_secret="  "))


def test_a_bad_public_key_at_request_time_is_a_configuration_error_not_a_401(
    tmp_path: Path,
) -> None:
    settings = Settings(auth_enabled=True, jwt_public_key=str(tmp_path / "gone.pem"))
    with pytest.raises(AuthConfigError):
        verify_jwt(jwt.encode(claims(), SECRET, algorithm="HS256"), settings)
