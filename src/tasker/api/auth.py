"""Authentication (API keys, JWT bearer tokens) and permission checks for the REST API.

Routes declare what they need and nothing else:

    @router.post("/tasks", dependencies=[Depends(require(Permission.TASK_CREATE))])

Authentication is off by default (a laptop needs none) and then `require` lets every request
through; the server warns about it at start-up (`auth_warning`). When it is on, a request carries
one credential: `X-API-Key: <key>`, or `Authorization: Bearer <token>` where the token is an API key
or a JWT. Without either, a GET or HEAD may carry the dashboard's session cookie
(`tasker.web.session`); a cookie never authorises a write, so a cross-site form cannot act through
the API. Missing, bad, expired or revoked credentials get 401 with a `WWW-Authenticate` challenge; a
good credential without the permission gets 403. Both use the API's error body
(`tasker.api.errors`); messages say what is wrong and never repeat the credential.

JWTs are verified with the algorithm the server configured for them, never one the token picks:
HS256 only when `jwt_secret` is set, RS256 only when `jwt_public_key` is, so a token signed with
HS256 using the public key as the secret (the classic confusion) or with `alg: none` is refused.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from tasker.api.errors import error_body
from tasker.domain.errors import TaskerInputError
from tasker.settings import Settings
from tasker.store.api_keys import GRANTABLE, PERMISSIONS, grants, looks_like_key
from tasker.web.session import SESSION_COOKIE

log = logging.getLogger("tasker.api.auth")

#: Clock skew tolerated on `exp`, `nbf` and `iat`.
JWT_LEEWAY_SECONDS = 30
#: Longer bearer tokens are refused before any parsing.
MAX_TOKEN_CHARS = 8192
#: HS256 secrets shorter than this can be brute-forced from one token (RFC 7518 section 3.2).
MIN_SECRET_BYTES = 32
_REALM = 'Bearer realm="tasker"'
_ALG_NAME = re.compile(r"^[A-Za-z0-9]{1,16}$")


class Permission:
    """Every permission a route can require; a credential may also hold `<resource>:*` or `*`."""

    TASK_INDEX = "tasker.task:index"
    TASK_SHOW = "tasker.task:show"
    TASK_CREATE = "tasker.task:create"
    TASK_UPDATE = "tasker.task:update"
    TASK_CANCEL = "tasker.task:cancel"
    TASK_RETRY = "tasker.task:retry"
    TASK_SIGNAL = "tasker.task:signal"
    #: Retry, cancel and purge every task a filter picks (`POST /tasks/bulk/...`): one request
    #: may touch thousands of tasks, so it is granted apart from the per-task actions.
    TASK_BULK = "tasker.task:bulk"
    STEP_INDEX = "tasker.workflow_step:index"
    STEP_SHOW = "tasker.workflow_step:show"
    STEP_UPDATE = "tasker.workflow_step:update"
    STEP_RETRY = "tasker.workflow_step:retry"
    HANDLER_INDEX = "tasker.handler:index"
    HANDLER_SHOW = "tasker.handler:show"
    HEALTH_STATUS = "tasker.health_status:index"
    METRICS_INDEX = "tasker.metrics:index"
    ANALYTICS_INDEX = "tasker.analytics:index"
    EVENTS_INDEX = "tasker.events:index"
    SCHEDULE_INDEX = "tasker.schedule:index"
    SCHEDULE_CREATE = "tasker.schedule:create"
    SCHEDULE_UPDATE = "tasker.schedule:update"
    SCHEDULE_TRIGGER = "tasker.schedule:trigger"
    SCHEDULE_DELETE = "tasker.schedule:delete"

    #: All of the above, in catalogue order (the same list `tasker keys create` accepts).
    ALL: tuple[str, ...] = PERMISSIONS


@dataclass(frozen=True)
class Principal:
    """Who made a request: `kind` is "anonymous" (auth off), "api_key" or "jwt"; `name` the key or
    subject."""

    kind: str
    name: str
    permissions: frozenset[str]

    def can(self, permission: str) -> bool:
        return grants(self.permissions, permission)

    def describe(self) -> str:
        return {"api_key": f"API key '{self.name}'", "jwt": f"token of '{self.name}'"}.get(
            self.kind, self.name
        )


#: The caller when authentication is off: allowed everything, as the warning at start-up says.
ANONYMOUS = Principal("anonymous", "anonymous", frozenset({"*"}))


class CredentialError(Exception):
    """A missing, malformed, expired or revoked credential: answered with 401."""

    def __init__(self, message: str, *, challenge_error: str | None = "invalid_token"):
        super().__init__(message)
        self.message = message
        self.challenge_error = challenge_error


class AuthConfigError(TaskerInputError):
    """The server's own JWT settings are unusable (an unreadable or invalid public key, say)."""


# -- start-up checks -------------------------------------------------------------------------------


def auth_warning(settings: Settings) -> str | None:
    """What `tasker serve` should warn about at start-up, or None when the configuration looks
    safe."""
    if not settings.auth_enabled:
        return (
            "authentication is OFF: anyone who can reach this server can create, cancel and retry"
            " tasks; set TASKER_AUTH_ENABLED=true before exposing it beyond this machine (see"
            " docs/authentication.md)"
        )
    if (
        settings.jwt_secret is not None
        and len(settings.jwt_secret.encode("utf-8")) < MIN_SECRET_BYTES
    ):
        return (
            f"TASKER_JWT_SECRET is shorter than {MIN_SECRET_BYTES} bytes, so HS256 tokens signed"
            " with it can be brute-forced; use a long random secret (python -c 'import secrets;"
            " print(secrets.token_urlsafe(48))')"
        )
    return None


def check_auth_settings(settings: Settings) -> None:
    """Fail at start-up, with one line, on JWT settings that would make every bearer token fail
    later."""
    if settings.auth_enabled and settings.jwt_public_key:
        _public_key(settings.jwt_public_key)
    if (
        settings.auth_enabled
        and settings.jwt_secret is not None
        and not settings.jwt_secret.strip()
    ):
        raise AuthConfigError(
            "TASKER_JWT_SECRET is empty; fix: set a long random secret or unset it"
        )


@functools.lru_cache(maxsize=8)
def _public_key(setting: str) -> RSAPublicKey:
    """The RS256 verification key from PEM text or a PEM file, parsed once per process."""
    text = setting.strip()
    if not text.startswith("-----BEGIN"):
        try:
            text = Path(text).expanduser().read_text(encoding="utf-8")
        except (OSError, ValueError) as exc:
            reason = (
                exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a readable file"
            )
            raise AuthConfigError(
                f"TASKER_JWT_PUBLIC_KEY: cannot read the PEM file {setting!r} ({reason}); fix: give"
                " PEM text or the path of a PEM file holding an RSA public key"
            ) from None
    elif "\\n" in text and "\n" not in text:  # PEM text squeezed into one line of an env file
        text = text.replace("\\n", "\n")
    try:
        key = load_pem_public_key(text.encode("utf-8"))
    except (ValueError, TypeError):
        raise AuthConfigError(
            "TASKER_JWT_PUBLIC_KEY is not a PEM public key; fix: give the '-----BEGIN PUBLIC"
            " KEY-----' block of the RSA key pair that signs the tokens"
        ) from None
    if not isinstance(key, RSAPublicKey):
        raise AuthConfigError(
            "TASKER_JWT_PUBLIC_KEY is not an RSA key; RS256 needs an RSA public key"
        )
    return key


def _jwt_keys(settings: Settings) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    if settings.jwt_secret:
        keys["HS256"] = settings.jwt_secret
    if settings.jwt_public_key:
        keys["RS256"] = _public_key(settings.jwt_public_key)
    return keys


# -- verification ----------------------------------------------------------------------------------


def verify_jwt(token: str, settings: Settings) -> Principal:
    """The principal a JWT stands for; raises `CredentialError` for any token that does not
    verify."""
    keys = _jwt_keys(settings)
    if not keys:
        raise CredentialError(
            "bearer token is neither an API key nor accepted as a JWT (this server has no JWT key"
            " configured)"
        )
    if len(token) > MAX_TOKEN_CHARS:
        raise CredentialError(f"bearer token is longer than {MAX_TOKEN_CHARS} characters")
    try:
        alg = jwt.get_unverified_header(token).get("alg")
    except jwt.PyJWTError:
        raise CredentialError(
            "bearer token is malformed: it is neither an API key nor a JWT"
        ) from None
    if alg not in keys:
        shown = f"'{alg}'" if isinstance(alg, str) and _ALG_NAME.match(alg) else "of this token"
        raise CredentialError(
            f"JWT algorithm {shown} is not accepted; this server accepts {', '.join(keys)}"
        )
    try:
        claims = jwt.decode(
            token,
            keys[alg],
            algorithms=[alg],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=JWT_LEEWAY_SECONDS,
            options={"require": ["exp"]},
        )
    except jwt.InvalidKeyError:
        raise AuthConfigError(f"the configured {alg} key cannot verify tokens") from None
    except jwt.PyJWTError as exc:
        raise CredentialError(_jwt_reason(exc, settings)) from None
    return Principal("jwt", _subject(claims), _claimed_permissions(claims))


def _jwt_reason(exc: jwt.PyJWTError, settings: Settings) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "JWT has expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "JWT is not valid yet (nbf or iat is in the future)"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"JWT lacks the required claim '{exc.claim}'"
    if isinstance(exc, jwt.InvalidAudienceError):
        if settings.jwt_audience is None:
            return (
                "JWT names an audience but this server expects none (set TASKER_JWT_AUDIENCE to"
                " accept it)"
            )
        return "JWT audience does not match this server's"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "JWT issuer does not match this server's"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "JWT signature is invalid"
    return "JWT is malformed or has an invalid claim"


def _subject(claims: dict[str, Any]) -> str:
    sub = claims.get("sub")
    return sub if isinstance(sub, str) and sub else "unnamed subject"


def _claimed_permissions(claims: dict[str, Any]) -> frozenset[str]:
    """Grants from a `permissions` list and/or a space-separated `scope`; names we do not know grant
    nothing."""
    found: set[str] = set()
    listed = claims.get("permissions")
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
            raise CredentialError("JWT claim 'permissions' must be a list of strings")
        found.update(listed)
    scope = claims.get("scope")
    if scope is not None:
        if not isinstance(scope, str):
            raise CredentialError("JWT claim 'scope' must be a space-separated string")
        found.update(scope.split())
    return frozenset(found & GRANTABLE)


def _credential(request: Request) -> tuple[str, str]:
    """("api_key" | "jwt", value) from the request's headers."""
    api_key = request.headers.get("x-api-key")
    authorization = request.headers.get("authorization")
    if api_key is not None and authorization is not None:
        raise CredentialError(
            "send one credential, X-API-Key or Authorization, not both",
            challenge_error="invalid_request",
        )
    if api_key is not None:
        if not api_key.strip():
            raise CredentialError("the X-API-Key header is empty")
        return "api_key", api_key.strip()
    if authorization is None:
        from_cookie = _session_credential(request)
        if from_cookie is not None:
            return from_cookie
        raise CredentialError(
            "authentication required: send 'X-API-Key: <key>' or 'Authorization: Bearer <token>'",
            challenge_error=None,
        )
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise CredentialError(
            "unsupported Authorization scheme; use 'Authorization: Bearer <token>' or X-API-Key",
            challenge_error="invalid_request",
        )
    token = value.strip()
    if not token:
        raise CredentialError("the bearer token is empty", challenge_error="invalid_request")
    return ("api_key" if looks_like_key(token) else "jwt"), token


def _session_credential(request: Request) -> tuple[str, str] | None:
    """The dashboard session's credential, for GET and HEAD only: a cookie never authorises a write.

    So the dashboard's own pages can read the API (live task state, the event stream) with the
    session they signed in with, while a cross-site form can never act through the API.
    """
    codec = getattr(request.app.state, "web_sessions", None)
    if codec is None or request.method not in ("GET", "HEAD"):
        return None
    session = codec.open(request.cookies.get(SESSION_COOKIE))
    if session is None or not session.signed_in:
        return None
    return session.kind, session.credential


async def authenticate(request: Request) -> Principal:
    """The caller of an authenticated request (cached on the request); raises `CredentialError`."""
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    kind, value = _credential(request)
    principal = await verify_credential(request, kind, value)
    request.state.principal = principal
    return principal


async def verify_credential(request: Request, kind: str, value: str) -> Principal:
    """The principal of an API key (`kind` "api_key") or a JWT; raises `CredentialError`."""
    if kind == "api_key":
        engine = request.app.state.tasker
        record = await run_in_threadpool(
            engine.keys.authenticate, value
        )  # a DB read: off the event loop
        if record is None:
            raise CredentialError("invalid or revoked API key")
        principal = Principal("api_key", record.name, frozenset(record.permissions))
    else:
        principal = verify_jwt(value, request.app.state.settings)
    return principal


# -- the dependency --------------------------------------------------------------------------------


class PermissionCheck:
    """The dependency `require` builds; `permission` says what it checks (tests read it off the
    routes).

    `permission=None` checks only that the credential is valid (`require_credential`).
    """

    def __init__(self, permission: str | None):
        if permission is not None and permission not in PERMISSIONS:
            raise ValueError(f"unknown permission {permission!r}; known: {', '.join(PERMISSIONS)}")
        self.permission = permission

    def __repr__(self) -> str:
        return f"require({self.permission!r})"

    async def __call__(self, request: Request) -> Principal:
        settings: Settings = request.app.state.settings
        if not settings.auth_enabled:
            return ANONYMOUS
        try:
            principal = await authenticate(request)
        except CredentialError as exc:
            log.info("refused %s %s: %s", request.method, request.url.path, exc.message)
            challenge = _REALM + (f', error="{exc.challenge_error}"' if exc.challenge_error else "")
            raise HTTPException(
                401,
                detail=error_body(401, "unauthorized", exc.message),
                headers={"WWW-Authenticate": challenge},
            ) from None
        except AuthConfigError as exc:
            log.error("JWT configuration error: %s", exc)
            raise HTTPException(
                500,
                detail=error_body(
                    500,
                    "auth_misconfigured",
                    "the server's JWT configuration is invalid; see the server log",
                ),
            ) from None
        if self.permission is not None and not principal.can(self.permission):
            log.info(
                "forbidden %s %s: %s lacks %s",
                request.method,
                request.url.path,
                principal.describe(),
                self.permission,
            )
            raise HTTPException(
                403,
                detail=error_body(
                    403,
                    "forbidden",
                    f"{principal.describe()} lacks the permission {self.permission}",
                ),
            )
        return principal


def require_credential() -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets through any caller with a valid credential (everyone when auth is
    off)."""
    return PermissionCheck(None)


def require(permission: str) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency that lets a request through only with `permission` (always when auth is
    off).

    Its result is the caller (`Principal`). An unknown permission name fails here, when the route
    module is imported, rather than on a request.
    """
    return PermissionCheck(permission)
