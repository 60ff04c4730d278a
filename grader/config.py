"""Service settings, read from environment variables (twelve-factor): one place, so the web
app, the worker and the CLI agree, and production refuses to start half-configured."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

ENVIRONMENTS = ("production", "development", "testing")
_WEAK_KEYS = {"", "dev", "secret", "changeme", "change-me", "development"}


class ConfigError(RuntimeError):
    """The service cannot start with this configuration; the message says what to set."""


@dataclass(frozen=True)
class Settings:
    env: str
    database_url: str
    broker_url: str
    secret_key: str
    instance_path: Path
    queue: str = "grader"
    max_upload_bytes: int = 1 << 20
    ratelimit_storage_uri: str = "memory://"
    login_rate: str = "10 per minute"
    submit_rate: str = "20 per minute"
    sweep_seconds: float = 30.0  # how often the sweeper looks for stuck submissions
    stuck_seconds: float = 120.0  # queued this long without a worker: re-enqueue
    # How long a worker holds a submission; Celery's time limits are derived from it.
    lease_seconds: float = 300.0
    # Trusted reverse proxies in front of the web app (X-Forwarded-For hops); 0: none.
    proxy_hops: int = 0
    # Log lines: "json" (one object per line, for a log pipeline) or "text" (key=value, for
    # a terminal). Production defaults to json, development and testing to text.
    log_format: str = "json"
    # Bearer token that opens GET /metrics to a scraper; unset: site instructors only.
    metrics_token: str = ""

    @property
    def production(self) -> bool:
        return self.env == "production"

    @classmethod
    def from_env(cls, environ: Optional[dict[str, str]] = None, **overrides: Any) -> "Settings":
        env_vars = os.environ if environ is None else environ
        env = overrides.pop("env", None) or env_vars.get("GRADER_ENV", "production")
        if env not in ENVIRONMENTS:
            raise ConfigError(f"GRADER_ENV={env!r}: use one of {', '.join(ENVIRONMENTS)}")
        instance = Path(overrides.pop("instance_path", None) or env_vars.get("GRADER_INSTANCE", "instance")).resolve()
        database_url = overrides.pop("database_url", None) or env_vars.get("DATABASE_URL", "")
        broker_url = overrides.pop("broker_url", None) or env_vars.get("BROKER_URL") or env_vars.get("REDIS_URL", "")
        secret_key = overrides.pop("secret_key", None) or env_vars.get("SECRET_KEY", "")
        if env == "production":
            missing = [name for name, value in (("DATABASE_URL", database_url), ("BROKER_URL or REDIS_URL", broker_url)) if not value]
            if missing:
                raise ConfigError(f"production needs {' and '.join(missing)} set")
            if secret_key.strip().lower() in _WEAK_KEYS or len(secret_key) < 32:
                raise ConfigError(
                    "production needs SECRET_KEY set to a random value of at least 32 characters "
                    "(for example: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
                )
        else:
            database_url = database_url or f"sqlite:///{instance / 'grader.db'}"
            broker_url = broker_url or "redis://127.0.0.1:6379/0"
            secret_key = secret_key or _instance_secret(instance)
        settings = cls(
            env=env,
            database_url=database_url,
            broker_url=broker_url,
            secret_key=secret_key,
            instance_path=instance,
            queue=env_vars.get("GRADER_QUEUE", "grader"),
            max_upload_bytes=int(env_vars.get("GRADER_MAX_UPLOAD_BYTES", 1 << 20)),
            ratelimit_storage_uri=env_vars.get("RATELIMIT_STORAGE_URI", "memory://"),
            submit_rate=_rate(env_vars, "GRADER_SUBMIT_RATE", "20 per minute"),
            sweep_seconds=_seconds(env_vars, "GRADER_SWEEP_SECONDS", 30.0),
            stuck_seconds=_seconds(env_vars, "GRADER_STUCK_SECONDS", 120.0),
            lease_seconds=_seconds(env_vars, "GRADER_LEASE_SECONDS", 300.0),
            proxy_hops=_hops(env_vars.get("GRADER_PROXY_HOPS", "0")),
            log_format=log_format_from(env_vars, env),
            metrics_token=_metrics_token(env_vars.get("GRADER_METRICS_TOKEN", "")),
        )
        return replace(settings, **overrides) if overrides else settings


def log_format_from(env_vars: Any, env: str) -> str:
    """GRADER_LOG_FORMAT, or the default for `env` (json in production, text elsewhere)."""
    raw = (env_vars.get("GRADER_LOG_FORMAT") or "").strip().lower()
    if not raw:
        return "json" if env == "production" else "text"
    if raw not in ("json", "text"):
        raise ConfigError(f"GRADER_LOG_FORMAT={raw!r}: use json or text")
    return raw


def _metrics_token(raw: str) -> str:
    if raw and len(raw) < 32:
        raise ConfigError("GRADER_METRICS_TOKEN is too short: give at least 32 random characters, or leave it unset")
    return raw


def _rate(env_vars: Any, name: str, default: str) -> str:
    raw = (env_vars.get(name) or "").strip()
    if not raw:
        return default
    from limits import parse_many  # flask-limiter's own parser, so what passes here works there

    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: give a rate such as '20 per minute'") from None
    return raw


def _hops(raw: str) -> int:
    if not raw.isdigit() or int(raw) > 10:
        raise ConfigError(f"GRADER_PROXY_HOPS={raw!r}: give the number of trusted proxies in front of the web app (0-10)")
    return int(raw)


def _seconds(env_vars: Any, name: str, default: float) -> float:
    raw = env_vars.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: give a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name}={raw!r}: give a positive number of seconds")
    return value


def _instance_secret(instance: Path) -> str:
    """Outside production, a random key kept in the instance folder, so sessions survive a
    restart without anyone choosing a weak key."""
    instance.mkdir(parents=True, exist_ok=True)
    path = instance / "secret_key"
    if path.is_file():
        return path.read_text().strip()
    # Written aside, then linked into place: two processes starting at once (a web server
    # and its workers) never see a half-written key, and the first link wins for both.
    draft = instance / f".secret_key.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(48))
    try:
        os.link(draft, path)
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return path.read_text().strip()
