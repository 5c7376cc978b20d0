"""The dashboard's session cookie, its CSRF tokens and its flash messages.

Why a cookie that carries the credential rather than a server-side session: the dashboard has no
tables of its own (docs/architecture.md: no SQL outside the store), and re-verifying the API key or
JWT on every request with the API's own code means a revoked key or an expired token ends the
session at once, with the same permissions the API would grant. The credential is encrypted and
authenticated (Fernet: AES-128-CBC + HMAC-SHA256) with a key derived from the server's secret, so
the cookie is opaque to whoever sees it and cannot be forged; it is HttpOnly and SameSite=Strict.

Every session, signed in or not, holds a random nonce. A CSRF token is the HMAC of that nonce
under the server secret: a page embeds it in its forms, and a POST must send it back. Another
site can neither read the token nor make the browser send the cookie (SameSite=Strict).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken

SESSION_COOKIE = "tasker_session"
FLASH_COOKIE = "tasker_flash"
#: A session lasts this long after sign-in, whatever the credential's own lifetime.
SESSION_SECONDS = 12 * 3600
#: Longer cookies are ignored unread.
MAX_COOKIE_CHARS = 12_000


@dataclass(frozen=True)
class Session:
    """What the cookie holds: a nonce for CSRF and, when signed in, the credential and its kind."""

    nonce: str
    kind: str | None = None  # "api_key" | "jwt"
    credential: str | None = None

    @property
    def signed_in(self) -> bool:
        return self.kind is not None and self.credential is not None


def new_session(kind: str | None = None, credential: str | None = None) -> Session:
    return Session(secrets.token_urlsafe(18), kind, credential)


class SessionCodec:
    """Seals sessions into cookie values and opens them; makes and checks CSRF tokens, flashes."""

    def __init__(self, secret: str) -> None:
        digest = hashlib.sha256(b"tasker-session\x00" + secret.encode("utf-8")).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))
        self._mac_key = hashlib.sha256(b"tasker-csrf\x00" + secret.encode("utf-8")).digest()

    # -- sessions --------------------------------------------------------------------------------
    def seal(self, session: Session) -> str:
        data = {"n": session.nonce, "k": session.kind, "c": session.credential}
        return self._fernet.encrypt(json.dumps(data).encode("utf-8")).decode("ascii")

    def open(self, value: str | None) -> Session | None:
        """The session in a cookie value, or None when absent, expired, forged or malformed."""
        if not value or len(value) > MAX_COOKIE_CHARS:
            return None
        try:
            raw = self._fernet.decrypt(value.encode("ascii"), ttl=SESSION_SECONDS)
            data = json.loads(raw)
        except (InvalidToken, ValueError, UnicodeError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("n"), str):
            return None
        kind, credential = data.get("k"), data.get("c")
        if kind not in (None, "api_key", "jwt") or not isinstance(credential, str | None):
            return None
        return Session(data["n"], kind, credential)

    # -- CSRF ------------------------------------------------------------------------------------
    def csrf_token(self, session: Session) -> str:
        return hmac.new(
            self._mac_key, b"csrf:" + session.nonce.encode(), hashlib.sha256
        ).hexdigest()

    def csrf_ok(self, session: Session | None, token: str | None) -> bool:
        if session is None or not token:
            return False
        return hmac.compare_digest(self.csrf_token(session), token)

    # -- flash messages --------------------------------------------------------------------------
    def seal_flash(self, kind: str, message: str) -> str:
        """A signed `kind:message` (kind: ok | error), so no other page can plant a message."""
        body = base64.urlsafe_b64encode(json.dumps([kind, message[:500]]).encode()).decode()
        mac = hmac.new(self._mac_key, b"flash:" + body.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{body}.{mac}"

    def open_flash(self, value: str | None) -> tuple[str, str] | None:
        if not value or "." not in value or len(value) > 2000:
            return None
        body, mac = value.rsplit(".", 1)
        want = hmac.new(self._mac_key, b"flash:" + body.encode(), hashlib.sha256).hexdigest()[:32]
        if not hmac.compare_digest(want, mac):
            return None
        try:
            kind, message = json.loads(base64.urlsafe_b64decode(body.encode()))
        except (ValueError, TypeError):
            return None
        if kind not in ("ok", "error") or not isinstance(message, str):
            return None
        return kind, message


def session_secret(configured: str | None) -> str:
    """The configured secret, or a random one for this process (sessions end on restart)."""
    return configured if configured else secrets.token_urlsafe(48)
