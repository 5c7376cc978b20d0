"""One settings object, read from `TASKER_*` environment variables and an optional TOML file.

Defaults work on a laptop with nothing installed: an embedded SQLite file in the current directory
and templates from `./templates` when that folder exists. Precedence: explicit argument >
environment > config file > default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tasker.domain import bounds
from tasker.domain.bounds import Range
from tasker.domain.errors import TaskerInputError
from tasker.domain.retention import (
    BATCH,
    INTERVAL_SECONDS,
    WORKER_ROWS_SECONDS,
    HousekeepingConfig,
    RetentionPolicy,
    parse_archive,
)

CONFIG_ENV = "TASKER_CONFIG"
DEFAULT_CONFIG_FILE = "tasker.toml"

#: The range of every number setting (docs/configuration.md lists them); None stays "not set".
NUMBER_RANGES: dict[str, Range] = {
    "concurrency": bounds.CONCURRENCY,
    "lease_seconds": bounds.LEASE_SECONDS,
    "poll_interval": bounds.POLL_INTERVAL,
    "grace_seconds": bounds.GRACE_SECONDS,
    "api_port": bounds.PORT,
    "metrics_port": bounds.PORT,
    "max_body_bytes": bounds.MAX_BODY_BYTES,
    "sse_max_streams_per_client": Range(1, 100_000, integer=True, unit="streams"),
    "sse_max_streams": Range(1, 100_000, integer=True, unit="streams"),
    "sse_heartbeat_seconds": Range(1, 3600, unit="seconds"),
    "housekeeping_seconds": Range(1, 86_400, unit="seconds"),
    "retention_batch": Range(1, 10_000, integer=True, unit="tasks"),
    "worker_rows_seconds": Range(60, 366 * 86_400, unit="seconds"),
}


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    #: Migrate the schema when a command opens the store: None (default) for the embedded SQLite
    #: only; PostgreSQL waits for `tasker db upgrade` unless this is true (docs/configuration.md).
    auto_migrate: bool | None = None
    template_paths: tuple[str, ...] = ()
    environment: str = "development"
    concurrency: int = 10
    lease_seconds: float = 30.0
    poll_interval: float = 0.5
    grace_seconds: float = 30.0
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    #: Import paths (`pkg.module:Class`) of `Subscriber` classes attached to every engine the CLI
    #: opens; classes advertised under the `tasker.subscribers` entry point group are attached too.
    subscribers: tuple[str, ...] = field(default_factory=tuple)
    # -- API server --------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    #: Authentication is off by default for local use; `tasker serve` warns when it is.
    auth_enabled: bool = False
    #: HS256 shared secret for JWT bearer tokens (None: HS256 tokens are refused).
    jwt_secret: str | None = None
    #: RS256 public key, PEM text or a path to a PEM file (None: RS256 tokens are refused).
    jwt_public_key: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    #: Request bodies larger than this are refused with 413.
    max_body_bytes: int = 1_048_576
    #: Open `GET /events` streams allowed per credential (API key, JWT subject, or client address
    #: when auth is off) and in total; one more is answered 429 with Retry-After.
    sse_max_streams_per_client: int = 10
    sse_max_streams: int = 100
    #: Seconds between keep-alive comments on an idle event stream; a dead client is found when one
    #: fails.
    sse_heartbeat_seconds: float = 15.0
    #: With auth on, `/docs` and `/openapi.json` need a credential unless this makes them public.
    docs_public: bool = False
    #: Signs and encrypts the dashboard's session cookie and its CSRF tokens; None: a random secret
    #: per process (sessions end when the server restarts). Set it when several servers share a URL.
    session_secret: str | None = None
    # -- observability -----------------------------------------------------------------------------
    #: "json" (structlog JSON lines) or "console" (human-readable); level as in `logging`.
    log_format: str = "console"
    log_level: str = "INFO"
    #: Serve a worker's own Prometheus metrics on this port (None: not served).
    metrics_port: int | None = None
    # -- housekeeping (docs/operations.md, "Retention") -----------------------------------------
    #: How long finished tasks are kept, per state, where their template does not say
    #: (`complete=30d,error=90d`, or a TOML table); empty: no task is deleted automatically.
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    #: Write tasks to an archive before deleting them: `table` (`tasker_archived_tasks`) or a
    #: directory of gzip-compressed JSON Lines files; None: deleted without an archive.
    archive: str | None = None
    #: Seconds between two passes of the housekeeping job, and tasks deleted per transaction.
    housekeeping_seconds: float = INTERVAL_SECONDS
    retention_batch: int = BATCH
    #: The job forgets the rows of workers not seen for this long.
    worker_rows_seconds: float = WORKER_ROWS_SECONDS

    @classmethod
    def load(cls, config_file: str | Path | None = None) -> Settings:
        data: dict[str, Any] = {}
        path = config_file or os.environ.get(CONFIG_ENV)
        if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
            path = DEFAULT_CONFIG_FILE
        if path is not None:
            data.update(_read_toml(Path(path)))
        env = {
            "database_url": os.environ.get("TASKER_DATABASE_URL"),
            "auto_migrate": os.environ.get("TASKER_AUTO_MIGRATE"),
            "template_paths": os.environ.get("TASKER_TEMPLATE_PATH"),
            "environment": os.environ.get("TASKER_ENV"),
            "concurrency": os.environ.get("TASKER_CONCURRENCY"),
            "lease_seconds": os.environ.get("TASKER_LEASE_SECONDS"),
            "poll_interval": os.environ.get("TASKER_POLL_INTERVAL"),
            "grace_seconds": os.environ.get("TASKER_GRACE_SECONDS"),
            "namespaces": os.environ.get("TASKER_NAMESPACES"),
            "subscribers": os.environ.get("TASKER_SUBSCRIBERS"),
            "api_host": os.environ.get("TASKER_API_HOST"),
            "api_port": os.environ.get("TASKER_API_PORT"),
            "auth_enabled": os.environ.get("TASKER_AUTH_ENABLED"),
            "jwt_secret": os.environ.get("TASKER_JWT_SECRET"),
            "jwt_public_key": os.environ.get("TASKER_JWT_PUBLIC_KEY"),
            "jwt_audience": os.environ.get("TASKER_JWT_AUDIENCE"),
            "jwt_issuer": os.environ.get("TASKER_JWT_ISSUER"),
            "max_body_bytes": os.environ.get("TASKER_MAX_BODY_BYTES"),
            "sse_max_streams_per_client": os.environ.get("TASKER_SSE_MAX_STREAMS_PER_CLIENT"),
            "sse_max_streams": os.environ.get("TASKER_SSE_MAX_STREAMS"),
            "sse_heartbeat_seconds": os.environ.get("TASKER_SSE_HEARTBEAT_SECONDS"),
            "docs_public": os.environ.get("TASKER_DOCS_PUBLIC"),
            "session_secret": os.environ.get("TASKER_SESSION_SECRET"),
            "log_format": os.environ.get("TASKER_LOG_FORMAT"),
            "log_level": os.environ.get("TASKER_LOG_LEVEL"),
            "metrics_port": os.environ.get("TASKER_METRICS_PORT"),
            "retention": os.environ.get("TASKER_RETENTION"),
            "archive": os.environ.get("TASKER_ARCHIVE"),
            "housekeeping_seconds": os.environ.get("TASKER_HOUSEKEEPING_SECONDS"),
            "retention_batch": os.environ.get("TASKER_RETENTION_BATCH"),
            "worker_rows_seconds": os.environ.get("TASKER_WORKER_ROWS_SECONDS"),
        }
        data.update({k: v for k, v in env.items() if v not in (None, "")})
        return cls.from_mapping(data, source=str(path) if path else "environment")

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str = "settings") -> Settings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TaskerInputError(
                f"{source}: unknown setting(s) {', '.join(unknown)}; known:"
                f" {', '.join(sorted(known))}"
            )
        out: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            try:
                if f.name in ("template_paths", "namespaces", "subscribers"):
                    if isinstance(value, str):
                        sep = os.pathsep if f.name == "template_paths" else ","
                        value = tuple(v.strip() for v in value.split(sep) if v.strip())
                    else:
                        value = tuple(str(v) for v in value)
                elif f.name in NUMBER_RANGES:
                    value = _number(value, NUMBER_RANGES[f.name])
                elif f.name in ("auth_enabled", "docs_public", "auto_migrate"):
                    value = _boolean(value)
                elif f.name == "retention":
                    value = RetentionPolicy.parse(value)
                elif f.name == "archive":
                    value = parse_archive(value)
                else:
                    value = str(value)
            except ValueError as exc:
                raise TaskerInputError(f"{source}: setting {f.name}: {exc}") from None
            except TypeError:
                raise TaskerInputError(
                    f"{source}: setting {f.name}={value!r} has the wrong type"
                ) from None
            out[f.name] = value
        settings = cls(**out)
        if settings.log_format not in ("json", "console"):
            raise TaskerInputError(
                f"{source}: log_format must be 'json' or 'console', not {settings.log_format!r}"
            )
        return settings

    def housekeeping(self) -> HousekeepingConfig:
        """What the housekeeping job of a worker started with these settings does."""
        return HousekeepingConfig(
            default=self.retention,
            archive=self.archive,
            interval_seconds=self.housekeeping_seconds,
            batch=self.retention_batch,
            worker_rows_seconds=self.worker_rows_seconds,
        )

    def templates(self, explicit: tuple[str, ...] | list[str] | None = None) -> list[str]:
        """Template locations to load: those given, else the configured ones, else ./templates if
        present."""
        if explicit:
            return list(explicit)
        if self.template_paths:
            return list(self.template_paths)
        return ["templates"] if Path("templates").is_dir() else []


def _number(value: Any, limits: Range) -> int | float:
    """A number setting from TOML (typed) or the environment (text), refused outside `bounds`.

    TOML `true` or `2.5` where a count belongs, and `nan`/`inf` anywhere, are refused rather than
    becoming 1, 2 or a loop that never sleeps.
    """
    if isinstance(value, str):
        return limits.parse(value)
    return limits.check(value)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TaskerInputError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise TaskerInputError(f"{path}: invalid TOML: {exc}") from None
    section = raw.get("tasker", raw)
    if not isinstance(section, dict):
        raise TaskerInputError(f"{path}: expected a [tasker] table")
    return dict(section)
