"""Typed settings, read once from the environment and an optional ``.env`` file.

Every variable is named ``EVLINK_*``. A bad value raises :class:`SettingsError`
whose message is one line naming the variable, so that start-up can stop with
that line and nothing else.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import parse_qsl, urlsplit

from tortoise.backends.base.config_generator import expand_db_url

from evlink.mqtt.config import check_prefix, parse_broker_url

__all__ = [
    "RENAMED",
    "Settings",
    "SettingsError",
    "describe_database",
    "read_env_file",
    "renamed_names",
    "unknown_names",
]

T = TypeVar("T")

ProviderName = Literal["simulator", "enode"]
EnodeEnv = Literal["sandbox", "production"]
LogFormat = Literal["text", "json"]
Environment = Literal["development", "production"]
PROVIDERS: tuple[ProviderName, ...] = ("simulator", "enode")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DB_SCHEMES = ("sqlite", "postgres", "asyncpg", "psycopg")


class SettingsError(ValueError):
    """A setting has a value evlink cannot use; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    """The one settings object. Defaults give the embedded single-machine setup."""

    database_url: str = "sqlite://var/evlink.sqlite3"
    # Seconds one database call may take in all (waiting for a connection included);
    # longer is 503 DATABASE_UNAVAILABLE (evlink.models.backends).
    database_timeout: float = 5.0
    provider: ProviderName = "simulator"
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    # Seconds a stored charge state may be served before a read refreshes it.
    status_max_age: float = 60.0
    # Seconds a read waits for a provider refresh before it answers with the stored state
    # (or 502/503/504 without one); the refresh goes on in the background.
    provider_read_budget: float = 2.0
    # Seconds within which set_charging trusts stored state to judge a command.
    charging_fresh_age: float = 5.0
    charging_max_attempts: int = 3
    charging_deadline: float = 300.0
    # Watcher timings: first poll after this many seconds, doubling up to the cap.
    charging_poll_interval: float = 2.0
    charging_poll_max_interval: float = 30.0
    # Base of the exponential backoff (with jitter) between re-sent actions.
    charging_retry_backoff: float = 2.0
    # Seconds a START/STOP takes to reach a simulated car.
    simulator_action_delay: float = 3.0
    # Seconds between two steps of the simulator's physics.
    simulator_tick: float = 1.0
    # Simulated seconds per real second: 60 makes an hour of charging take a minute.
    simulator_speed: float = 1.0
    # Enode (EVLINK_PROVIDER=enode). Secrets never appear in repr or logs.
    enode_client_id: str = ""
    enode_client_secret: str = field(default="", repr=False)
    enode_env: EnodeEnv = "sandbox"
    # Explicit hosts override EVLINK_ENODE_ENV (a proxy, or a fake server in tests).
    enode_api_url: str = ""
    enode_oauth_url: str = ""
    enode_webhook_secret: str = field(default="", repr=False)
    enode_timeout: float = 10.0  # seconds to connect and to read
    enode_max_connections: int = 20
    enode_retries: int = 3  # tries of an idempotent read
    enode_breaker_threshold: int = 5  # failures in a row that open the circuit
    enode_breaker_cooldown: float = 30.0  # seconds the circuit stays open
    webhook_max_body: int = 1_048_576  # bytes
    # Several instances: Redis carries events (and rate limits) between them.
    redis_url: str = ""
    log_format: LogFormat = "text"
    # Seconds an instance holds a command it follows; another takes it over after that.
    command_lease: float = 30.0
    # production: GraphQL errors make no field suggestions and name nothing of the schema
    # the client did not write, and introspection is off unless explicitly turned on.
    environment: Environment = "development"
    graphql_introspection: bool | None = None  # None: not given (see `introspection`)
    graphql_max_depth: int = 10
    graphql_max_tokens: int = 2000
    graphql_max_aliases: int = 15
    graphql_max_cost: int = 5000
    graphql_max_spreads: int = 100  # fragment spreads written in one document
    max_body: int = 65_536  # bytes of a REST or GraphQL request body
    # Seconds an idle HTTP connection is kept open for the client's next request: longer
    # than clients' and load balancers' own idle timeouts (commonly 5 s and 60 s), so that
    # the client or balancer, never the server, closes it: a server closing just as the
    # client reuses the connection fails that request (Home Assistant's REST sensor).
    keepalive: float = 75.0
    # Seconds a connection may take to send a request head (slowloris sockets are closed).
    header_timeout: float = 10.0
    # Seconds a connection may take to send a request's body once its head is in: bodies
    # are small (EVLINK_MAX_BODY; a webhook at most EVLINK_WEBHOOK_MAX_BODY), and a body
    # sent a byte at a time, or never, would otherwise hold the connection for ever.
    body_timeout: float = 10.0
    # Open connections (websockets included) past which new ones get 503; 0: the
    # open-files limit less what the process needs for itself (evlink.connections).
    max_connections: int = 0
    ws_max_message: int = 65_536  # bytes of one websocket message
    # permessage-deflate on GraphQL websockets: off, since events are a few hundred bytes
    # and each compressed socket costs zlib work per message and its own zlib state.
    ws_compression: bool = False
    ws_max_operations: int = 20  # subscriptions at once on one websocket
    # Websockets open at once per user, all of its keys together (the old name,
    # EVLINK_WS_MAX_CONNECTIONS_PER_KEY, still works for one release: RENAMED).
    ws_max_connections_per_user: int = 10
    ws_init_timeout: float = 10.0  # seconds to send connection_init
    # Websockets awaiting connection_init per client address; more are refused (429).
    ws_pending_per_address: int = 20
    ws_keepalive: float = 15.0  # seconds between keep-alive pings
    # Origins allowed by CORS, comma-separated ("*" for any); empty: CORS off.
    cors_origins: str = ""
    # Peers whose X-Forwarded-For and X-Forwarded-Proto are believed: IP addresses or
    # networks, comma-separated, or "*"; empty: none, the client is the connection's peer.
    forwarded_allow_ips: str = ""
    # Rate limits (evlink.ratelimit), COUNT/[N]UNIT per tier; a tier left out keeps its default.
    quotas: str = "free=300/30days;basic=2000/30days;pro=10000/30days"  # reads per user
    command_quotas: str = "free=0/day;basic=0/day;pro=200/day"  # charging commands per user
    burst: str = "60/minute"  # every authenticated request, per API key
    auth_failures: str = "20/minute"  # refused API keys per client address
    vehicle_limits: str = "free=1;basic=2;pro=5"
    ratelimit_prefix: str = ""  # Redis key prefix of the counts; empty: named after the database
    # Seconds an entry of the read cache (keys, statuses, GraphQL results) lives at most;
    # also how long a key revoked from another process without Redis may still work. 0: off.
    cache_ttl: float = 5.0
    # Seconds without a state after which an open charging session ends UNREACHABLE.
    session_stale_after: float = 1800.0
    # Days a closed charging session keeps its samples (the session itself is kept).
    session_samples_keep_days: int = 90
    # MQTT with Home Assistant discovery (evlink.mqtt): mqtt://USER:PASSWORD@HOST:PORT or
    # mqtts://; empty: off. Publishing is per user (`evlink mqtt enable --user EMAIL`).
    mqtt_url: str = field(default="", repr=False)
    mqtt_prefix: str = "evlink"  # evlink's topics: <prefix>/status, <prefix>/<user>/<car>/...
    mqtt_discovery_prefix: str = "homeassistant"  # Home Assistant's discovery prefix

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        env_file: str | Path | None = ".env",
    ) -> Settings:
        """Read settings from ``environ`` (default: ``os.environ``) over ``env_file``."""
        env = _environment(environ, env_file)
        defaults = cls()
        values: dict[str, Any] = {}
        for setting in fields(cls):
            name = _given_name(env, f"EVLINK_{setting.name.upper()}")
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            parse = _PARSERS.get(setting.name, _parser_for(getattr(defaults, setting.name)))
            try:
                values[setting.name] = parse(str(raw))
            except ValueError as exc:
                # A secret's value (a URL's password) is never repeated in the message.
                got = f" (got {raw!r})" if setting.repr else ""
                raise SettingsError(f"{name}: {exc}{got}") from None
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Rules across variables; raises :class:`SettingsError` naming the variable."""
        if self.provider == "enode":
            for name in ("enode_client_id", "enode_client_secret"):
                if not getattr(self, name):
                    variable = f"EVLINK_{name.upper()}"
                    raise SettingsError(f"{variable}: required with EVLINK_PROVIDER=enode")
        from evlink.ratelimit import check_settings  # lazily: it imports the models

        check_settings(self)

    @property
    def introspection(self) -> bool:
        """EVLINK_GRAPHQL_INTROSPECTION when it is given (true or false); otherwise on,
        except in production."""
        if self.graphql_introspection is not None:
            return self.graphql_introspection
        return self.environment != "production"

    @property
    def enode_urls(self) -> tuple[str, str]:
        """(API base URL, OAuth base URL) for Enode."""
        api = self.enode_api_url or f"https://enode-api.{self.enode_env}.enode.io"
        oauth = self.enode_oauth_url or f"https://oauth.{self.enode_env}.enode.io"
        return api.rstrip("/"), oauth.rstrip("/")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite://")

    def tortoise_config(self) -> dict[str, Any]:
        """The Tortoise ORM configuration for this database, every call bounded."""
        return tortoise_config(self.database_url, timeout=self.database_timeout)


# EVLINK_* names that are not settings of the server: the test suite's and the client
# examples' (README.md, docs/home-assistant.md). Any other unknown name is warned about.
NOT_SETTINGS = frozenset(
    {
        "EVLINK_TEST_DATABASE_URL",
        "EVLINK_TEST_REDIS_URL",
        "EVLINK_TEST_HASS",
        "EVLINK_UPDATE_SCREENSHOTS",
        "EVLINK_FUZZ_EXAMPLES",
        "EVLINK_PROPERTY_EXAMPLES",
        "EVLINK_KEY",
        "EVLINK_VEHICLE_ID",
        "EVLINK_WS",
    }
)


# Old names of renamed settings, each still read for one release when the new one is not
# given (with a warning: renamed_names): old name -> new name.
RENAMED: Mapping[str, str] = {
    "EVLINK_WS_MAX_CONNECTIONS_PER_KEY": "EVLINK_WS_MAX_CONNECTIONS_PER_USER",
}


def _given_name(env: Mapping[str, str], name: str) -> str:
    """``name``, or the old name of that setting when only the old one is given."""
    if env.get(name):
        return name
    for old, new in RENAMED.items():
        if new == name and env.get(old):
            return old
    return name


def read_env_file(path: str | Path) -> dict[str, str]:
    """``NAME=value`` lines of a ``.env`` file; ``export NAME=value`` (shell syntax) too.

    Blank lines and ``#`` comments are skipped; one pair of surrounding quotes is removed.
    """
    values: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        name = name.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


def _environment(environ: Mapping[str, str] | None, env_file: str | Path | None) -> dict[str, str]:
    """``environ`` (default: ``os.environ``) over the ``env_file``'s values, if it exists."""
    env = dict(os.environ if environ is None else environ)
    path = Path(env_file) if env_file is not None else None
    from_file = read_env_file(path) if path is not None and path.is_file() else {}
    return {**from_file, **env}


def unknown_names(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
) -> list[str]:
    """One warning per ``EVLINK_*`` name (environment or ``env_file``) evlink does not
    read, with the setting it most likely meant: a misspelt name is otherwise ignored."""
    known = {f"EVLINK_{setting.name.upper()}" for setting in fields(Settings)} | set(RENAMED)
    warnings = []
    for name in sorted(_environment(environ, env_file)):
        if not name.startswith("EVLINK_") or name in known or name in NOT_SETTINGS:
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        warnings.append(f"{name} is not an evlink setting{hint}: ignored")
    return warnings


def renamed_names(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
) -> list[str]:
    """One warning per old name of a renamed setting (:data:`RENAMED`) that is given:
    read this release in place of the new name, or ignored when the new one is given."""
    env = _environment(environ, env_file)
    warnings = []
    for old, new in sorted(RENAMED.items()):
        if not env.get(old):
            continue
        if env.get(new):
            warnings.append(f"{old} is ignored: {new}, its new name, is given")
        else:
            warnings.append(f"{old} is renamed {new}; the old name stops working next release")
    return warnings


def describe_database(database_url: str) -> str:
    """The database as a person can find it, without its password: a SQLite URL's file
    as an absolute path (relative ones depend on the folder evlink runs in)."""
    if database_url.startswith("sqlite://"):
        path = database_url.removeprefix("sqlite://").split("?", 1)[0]
        return path if path == ":memory:" else str(Path(path).absolute())
    scheme, _, rest = database_url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    return f"{scheme}://{credentials}{at}{host}"


def connection_name(database_url: str) -> str:
    """The Tortoise connection's name: the backend's, since Tortoise caches SQL per name."""
    return "sqlite" if database_url.startswith("sqlite://") else "postgres"


def tortoise_config(
    database_url: str, *, timeout: float | None = None, connect_timeout: float | None = None
) -> dict[str, Any]:
    """Tortoise configuration with evlink's one app ``evlink``.

    With ``timeout``, every call is bounded and an outage raises DatabaseUnavailable
    (:mod:`evlink.models.backends`; the server). Without, Tortoise's own clients
    (migrations and the CLI, which may take their time); ``connect_timeout`` then
    bounds PostgreSQL's connecting alone (asyncpg's own ``timeout``), so that a server
    that takes connections but never answers is told, not waited for.
    """
    connection: str | dict[str, Any] = database_url
    if timeout is not None:
        connection = _bounded_connection(database_url, timeout)
    elif connect_timeout is not None:
        connection = _connecting_within(database_url, connect_timeout)
    return {
        "connections": {connection_name(database_url): connection},
        "apps": {
            "evlink": {
                "models": ["evlink.models"],
                "default_connection": connection_name(database_url),
                "migrations": "evlink.models.migrations",
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


# Tortoise's engines that evlink.models.backends bounds (sqlite://, postgres:// on asyncpg).
_BOUNDED_ENGINES = ("tortoise.backends.sqlite", "tortoise.backends.asyncpg")


def _bounded_connection(database_url: str, timeout: float) -> dict[str, Any]:
    connection: dict[str, Any] = expand_db_url(database_url)
    if connection["engine"] in _BOUNDED_ENGINES:
        connection["engine"] = "evlink.models.backends"
        connection["credentials"]["database_timeout"] = timeout
    return connection


def _connecting_within(database_url: str, seconds: float) -> str | dict[str, Any]:
    connection: dict[str, Any] = expand_db_url(database_url)
    if connection["engine"] != "tortoise.backends.asyncpg":
        return database_url  # SQLite opens a file: nothing to wait for
    connection["credentials"].setdefault("timeout", seconds)
    return connection


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number") from None
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if value < 1:
        raise ValueError("must be 1 or more")
    return value


def _non_negative_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _non_negative_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number") from None
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _port(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("expected a port number") from None
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def _choice(choices: tuple[str, ...], *, upper: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


# SQLite's values for ``PRAGMA synchronous`` (names or numbers): anything else SQLite
# ignores without a word, leaving the server's default in force.
SQLITE_SYNCHRONOUS = frozenset({"OFF", "NORMAL", "FULL", "EXTRA", "0", "1", "2", "3"})


def _database_url(raw: str) -> str:
    scheme, sep, rest = raw.partition("://")
    if not sep or scheme not in DB_SCHEMES:
        raise ValueError("expected sqlite://PATH or postgres://USER@HOST:PORT/DB")
    if scheme == "sqlite":
        for name, value in parse_qsl(urlsplit(f"x://{rest}").query, keep_blank_values=True):
            if name == "synchronous" and value.upper() not in SQLITE_SYNCHRONOUS:
                raise ValueError(f"synchronous={value!r}: expected OFF, NORMAL, FULL or EXTRA")
    return raw


def _http_url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return raw


def _redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("expected redis://HOST:PORT/DB")
    return raw


def _mqtt_url(raw: str) -> str:
    parse_broker_url(raw)  # checked here; evlink.mqtt parses it again when it connects
    return raw.strip()


def _forwarded_ips(raw: str) -> str:
    """``*``, or addresses and networks in the form uvicorn compares (which takes anything
    else, a typo included, for a name that never matches)."""
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if items == ["*"]:
        return "*"
    try:
        return ",".join(
            str(ipaddress.ip_network(item, strict=False))
            if "/" in item
            else str(ipaddress.ip_address(item))
            for item in items
        )
    except ValueError:
        raise ValueError("expected IP addresses or networks, comma-separated, or *") from None


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _parser_for(default: T) -> Callable[[str], T]:
    if isinstance(default, bool):
        return cast(Callable[[str], T], _bool)
    if isinstance(default, float):
        return cast(Callable[[str], T], _positive_float)
    if isinstance(default, int):
        return cast(Callable[[str], T], _positive_int)
    return cast(Callable[[str], T], str)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "database_url": _database_url,
    "provider": _choice(PROVIDERS),
    "port": _port,
    "log_level": _choice(LOG_LEVELS, upper=True),
    "simulator_action_delay": _non_negative_float,
    "cache_ttl": _non_negative_float,
    "max_connections": _non_negative_int,
    "enode_env": _choice(("sandbox", "production")),
    "redis_url": lambda raw: _redis_url(raw),
    "log_format": _choice(("text", "json")),
    "environment": _choice(("development", "production")),
    "graphql_introspection": _bool,
    "forwarded_allow_ips": _forwarded_ips,
    "enode_api_url": lambda raw: _http_url(raw),
    "enode_oauth_url": lambda raw: _http_url(raw),
    "mqtt_url": lambda raw: _mqtt_url(raw),
    "mqtt_prefix": lambda raw: check_prefix(raw),
    "mqtt_discovery_prefix": lambda raw: check_prefix(raw),
}


# For Tortoise's own CLI (`make migrations` runs `tortoise makemigrations`), which
# reads a module-level config; the server itself always goes through Settings.
TORTOISE_ORM = tortoise_config("sqlite://:memory:")
