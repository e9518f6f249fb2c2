"""Settings (SPEC section 10): read once at the entry point into one frozen object.

Sources, strongest first: `WKS_*` environment variables, the seed system's names
(`REDIS_URL`, `DATABASE_PATH`, ...), an optional `wks.toml` (top-level keys named as the
settings: `redisUrl = "redis://..."`), then the defaults. Nothing below the CLI reads
`os.environ`; everything gets a `Settings`.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from wks.errors import ConfigError
from wks.keys import Keys

COMPRESSIONS = ("none", "gzip", "zstd")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
DEFAULT_EXTERNAL_URL = "redis://localhost:6379/0"

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse_duration(text: str) -> float:
    """`250ms`, `2s`, `5m`, `1h`, `7d` or a bare number of seconds -> seconds."""
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 250ms, 2s, 5m, 1h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


def parse_rate_limit(text: str) -> tuple[int, float]:
    """`600/60s` -> (600 requests, 60.0 seconds)."""
    count, sep, window = str(text).partition("/")
    if not sep:
        raise ValueError(f"not a rate limit: {text!r} (use REQUESTS/WINDOW, e.g. 600/60s)")
    return _positive_int(count), _positive_duration(window)


def _int(text: Any) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None


def _positive_int(text: Any) -> int:
    value = _int(text)
    if value <= 0:
        raise ValueError(f"must be a positive integer, got {text!r}")
    return value


def _port(text: Any) -> int:
    value = _int(text)
    if not 0 < value < 65536:
        raise ValueError(f"not a TCP port: {text!r}")
    return value


def _positive_duration(text: Any) -> float:
    value = parse_duration(str(text))
    if value <= 0 or not math.isfinite(value):
        raise ValueError(f"must be a positive duration, got {text!r}")
    return value


# scheduled backups: what PUT /api/backups/config accepts too (wks.backup_job)
BACKUP_INTERVAL_MIN = 1.0  # seconds
BACKUP_INTERVAL_MAX = 366 * 86_400.0


def _in_interval_range(value: float, text: Any, *, millis: bool = False) -> float:
    if not BACKUP_INTERVAL_MIN <= value <= BACKUP_INTERVAL_MAX:
        if millis:
            raise ValueError(f"must be between {BACKUP_INTERVAL_MIN * 1000:.0f} and "
                             f"{BACKUP_INTERVAL_MAX * 1000:.0f} ms, got {text!r}")
        raise ValueError(f"must be between 1s and 366d, got {text!r} (a plain number is "
                         "seconds in WKS_ names and wks.toml; 86400000ms is a day)")
    return value


def _backup_interval(text: Any) -> float:
    return _in_interval_range(_positive_duration(text), text)


JWT_SECRET_MIN_BYTES = 32  # SPEC 8; wks.http.auth checks it again for settings built in code


def _jwt_secret(text: Any) -> str:
    value = str(text)
    if len(value.encode()) < JWT_SECRET_MIN_BYTES:
        raise ValueError("must be at least 32 bytes (use e.g. `openssl rand -hex 32`)")
    return value


def _millis(text: Any) -> float:
    value = _int(text)
    if value <= 0:
        raise ValueError(f"must be a positive number of milliseconds, got {text!r}")
    return value / 1000


def _choice(options: tuple[str, ...], upper: bool = False) -> Callable[[Any], str]:
    def parse(text: Any) -> str:
        value = str(text).strip()
        value = value.upper() if upper else value.lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {text!r}")
        return value

    return parse


def _prefix(text: Any) -> str:
    if not _PREFIX.match(str(text)):
        raise ValueError(f"must be 1-64 chars of [A-Za-z0-9_.-], got {text!r}")
    return str(text)


def _redis_url(text: Any) -> str:
    value = str(text).strip()
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"must start with redis://, rediss:// or unix://, got {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Every setting of SPEC section 10, parsed and validated. Durations are in seconds."""

    redis_url: str | None = None  # None: `wks up` manages its own server
    redis_url_source: str = "default"  # env | toml | file | default
    prefix: str = "wks"
    db_path: Path = Path("var/workstation.db")
    backup_dir: Path = Path("var/backups")
    max_backups: int = 10
    auto_backup_enabled: bool = False
    auto_backup_interval: float = 86400.0
    compression: str = "none"
    host: str = "127.0.0.1"
    port: int = 3000
    jwt_secret: str | None = None
    log_level: str = "INFO"
    log_format: str | None = None  # console | json; None: console on a TTY, else json
    stale_after: float = 3600.0
    state_ttl: float = 3600.0
    lock_ttl: float = 300.0
    claim_idle: float = 60.0
    max_deliveries: int = 5
    stream_retention: float = 7 * 86400.0
    event_log_retention: float = 30 * 86400.0
    shutdown_grace: float = 10.0
    rate_limit: tuple[int, float] = (600, 60.0)
    max_body_bytes: int = 1024 * 1024
    producer_buffer: int = 10_000
    var_dir: Path = Path("var")
    # test hook, off (0) by default: the state consumer exits (137) after its Nth SQLite
    # commit and before XACK, so the fault suite can crash exactly in that window
    debug_crash_after_commit: int = 0
    extra: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)

    @property
    def redis_url_file(self) -> Path:
        return self.var_dir / "redis.url"

    def effective_redis_url(self) -> str:
        """The URL a command other than `wks up` connects to."""
        return self.redis_url or DEFAULT_EXTERNAL_URL

    def with_redis_url(self, url: str, source: str) -> Settings:
        return replace(self, redis_url=url, redis_url_source=source)

    @classmethod
    def load(
        cls,
        env: Mapping[str, str],
        toml_path: Path | None = None,
        cwd: Path | None = None,
    ) -> Settings:
        """Read, parse and validate; raise ConfigError naming the first bad setting."""
        return _load(env, toml_path, cwd or Path.cwd())


# setting -> (WKS_ name, seed names, toml key, parser, field)
_SPECS: list[tuple[str, str, tuple[str, ...], Callable[[Any], Any], str]] = [
    ("prefix", "WKS_PREFIX", (), _prefix, "prefix"),
    ("dbPath", "WKS_DB_PATH", ("DATABASE_PATH",), Path, "db_path"),
    ("backupDir", "WKS_BACKUP_DIR", ("BACKUP_DIR",), Path, "backup_dir"),
    ("maxBackups", "WKS_MAX_BACKUPS", ("MAX_BACKUPS",), _positive_int, "max_backups"),
    (
        "autoBackupEnabled",
        "WKS_AUTO_BACKUP_ENABLED",
        ("AUTO_BACKUP_ENABLED",),
        parse_bool,
        "auto_backup_enabled",
    ),
    ("compression", "WKS_BACKUP_COMPRESSION", ("BACKUP_COMPRESSION",), _choice(COMPRESSIONS),
     "compression"),
    ("host", "WKS_HOST", (), str, "host"),
    ("port", "WKS_PORT", ("PORT",), _port, "port"),
    ("jwtSecret", "WKS_JWT_SECRET", ("JWT_SECRET",), _jwt_secret, "jwt_secret"),
    ("logLevel", "WKS_LOG_LEVEL", ("LOG_LEVEL",), _choice(LOG_LEVELS, upper=True), "log_level"),
    ("logFormat", "WKS_LOG_FORMAT", (), _choice(("console", "json")), "log_format"),
    ("staleAfter", "WKS_STALE_AFTER", (), _positive_duration, "stale_after"),
    ("stateTtl", "WKS_STATE_TTL", (), _positive_duration, "state_ttl"),
    ("lockTtl", "WKS_LOCK_TTL", (), _positive_duration, "lock_ttl"),
    ("claimIdle", "WKS_CLAIM_IDLE", (), _positive_duration, "claim_idle"),
    ("maxDeliveries", "WKS_MAX_DELIVERIES", (), _positive_int, "max_deliveries"),
    ("streamRetention", "WKS_STREAM_RETENTION", (), _positive_duration, "stream_retention"),
    ("eventLogRetention", "WKS_EVENT_LOG_RETENTION", (), _positive_duration,
     "event_log_retention"),
    ("shutdownGrace", "WKS_SHUTDOWN_GRACE", (), _positive_duration, "shutdown_grace"),
    ("rateLimit", "WKS_RATE_LIMIT", (), parse_rate_limit, "rate_limit"),
    ("maxBodyBytes", "WKS_MAX_BODY_BYTES", (), _positive_int, "max_body_bytes"),
    ("producerBuffer", "WKS_PRODUCER_BUFFER", (), _positive_int, "producer_buffer"),
    ("varDir", "WKS_VAR_DIR", (), Path, "var_dir"),
    ("debugCrashAfterCommit", "WKS_DEBUG_CRASH_AFTER_COMMIT", (), _int,
     "debug_crash_after_commit"),
]


# the settings a wks.toml may hold: those read by name below, and the two read on their own
_TOML_KEYS = frozenset([spec[0] for spec in _SPECS] + ["autoBackupInterval", "redisUrl"])


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("wks.toml", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("wks.toml", f"{path} is not valid TOML: {exc}") from None
    table = data.get("wks", data)  # accept both top-level keys and a [wks] table
    for key in table:
        if key not in _TOML_KEYS:  # a typo must not leave a setting at its default unseen
            close = difflib.get_close_matches(key, sorted(_TOML_KEYS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError("wks.toml", f"unknown setting {key!r} in {path}{hint}")
    return dict(table)


def _load(env: Mapping[str, str], toml_path: Path | None, cwd: Path) -> Settings:
    if toml_path is None:
        named = env.get("WKS_CONFIG")
        toml_path = Path(named) if named else cwd / "wks.toml"
        if not named and not toml_path.exists():
            toml_path = None
    toml = _read_toml(toml_path) if toml_path else {}

    values: dict[str, Any] = {}
    for setting, env_name, seed_names, parse, attr in _SPECS:
        raw, origin = _lookup(env, toml, setting, env_name, seed_names)
        if raw is None:
            continue
        try:
            values[attr] = parse(raw)
        except (ValueError, TypeError) as exc:
            raise ConfigError(origin, str(exc)) from None

    # seed names without a WKS_ twin spelled the same way
    if "auto_backup_interval" not in values:
        raw, origin = _lookup(env, toml, "autoBackupInterval", "WKS_AUTO_BACKUP_INTERVAL", ())
        seed = env.get("AUTO_BACKUP_INTERVAL")
        try:
            if raw is not None:
                values["auto_backup_interval"] = _backup_interval(raw)
            elif seed not in (None, ""):
                origin = "AUTO_BACKUP_INTERVAL"
                # the seed's unit is ms
                values["auto_backup_interval"] = _in_interval_range(
                    _millis(seed), seed, millis=True)
        except ValueError as exc:
            raise ConfigError(origin, str(exc)) from None

    if "rate_limit" not in values and (
        env.get("RATE_LIMIT_MAX_REQUESTS") or env.get("RATE_LIMIT_WINDOW_MS")
    ):
        count, window = Settings.rate_limit
        try:
            if env.get("RATE_LIMIT_MAX_REQUESTS"):
                count = _positive_int(env["RATE_LIMIT_MAX_REQUESTS"])
            if env.get("RATE_LIMIT_WINDOW_MS"):
                window = _millis(env["RATE_LIMIT_WINDOW_MS"])
        except ValueError as exc:
            name = "RATE_LIMIT_MAX_REQUESTS / RATE_LIMIT_WINDOW_MS"
            raise ConfigError(name, str(exc)) from None
        values["rate_limit"] = (count, window)

    settings = Settings(**values, extra=dict(env))
    url, source = _redis_url_from(env, toml, settings.var_dir if settings.var_dir.is_absolute()
                                  else cwd / settings.var_dir)
    if url is not None:
        settings = settings.with_redis_url(url, source)
    return settings


def _lookup(
    env: Mapping[str, str],
    toml: Mapping[str, Any],
    setting: str,
    env_name: str,
    seed_names: tuple[str, ...],
) -> tuple[Any, str]:
    if env.get(env_name) not in (None, ""):
        return env[env_name], env_name
    for seed in seed_names:
        if env.get(seed) not in (None, ""):
            return env[seed], seed
    if setting in toml:
        return toml[setting], f"wks.toml {setting}"
    return None, setting


_SEED_REDIS = ("REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_DB")


def _redis_url_from(
    env: Mapping[str, str], toml: Mapping[str, Any], var_dir: Path
) -> tuple[str | None, str]:
    for name in ("WKS_REDIS_URL", "REDIS_URL"):
        if env.get(name):
            try:
                return _redis_url(env[name]), "env"
            except ValueError as exc:
                raise ConfigError(name, str(exc)) from None
    if any(env.get(name) for name in _SEED_REDIS):
        # any of the seed's four names configures Redis, the others taking the seed's
        # defaults: a deployment that sets only REDIS_PORT must not reach another server
        host = env.get("REDIS_HOST") or "localhost"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address
        port = env.get("REDIS_PORT") or "6379"
        db = env.get("REDIS_DB") or "0"
        try:
            _port(port)
        except ValueError as exc:
            raise ConfigError("REDIS_PORT", str(exc)) from None
        if not db.isdigit():
            raise ConfigError("REDIS_DB", f"must be a database number, got {db!r}")
        auth = f":{quote(env['REDIS_PASSWORD'], safe='')}@" if env.get("REDIS_PASSWORD") else ""
        return f"redis://{auth}{host}:{port}/{db}", "env"
    if "redisUrl" in toml:
        try:
            return _redis_url(toml["redisUrl"]), "toml"
        except ValueError as exc:
            raise ConfigError("wks.toml redisUrl", str(exc)) from None
    url_file = var_dir / "redis.url"
    if url_file.exists():
        text = url_file.read_text().strip()
        try:
            return _redis_url(text), "file"
        except ValueError as exc:
            raise ConfigError(str(url_file), str(exc)) from None
    return None, "default"
