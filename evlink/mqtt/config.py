"""The broker evlink publishes to: ``EVLINK_MQTT_URL`` parsed, and the topic prefixes checked.

``mqtt://user:password@host:1883`` (plain) or ``mqtts://…@host:8883`` (TLS with
the system's certificate authorities). The password never appears in ``repr``
or in a log line: :meth:`Broker.describe` names the broker without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

__all__ = ["Broker", "check_prefix", "parse_broker_url"]

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True, slots=True)
class Broker:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    def describe(self) -> str:
        """The broker as a log line may name it: no password."""
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


def parse_broker_url(raw: str) -> Broker:
    """A :class:`Broker` from ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://``;
    ValueError (without the password) otherwise."""
    try:
        parts = urlsplit(raw.strip())
        port = parts.port
    except ValueError:
        raise ValueError("expected mqtt://[USER:PASSWORD@]HOST[:PORT] or mqtts://") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError("expected mqtt://[USER:PASSWORD@]HOST[:PORT] or mqtts://")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("an mqtt:// URL has no path or query")
    return Broker(
        host=parts.hostname,
        port=port or DEFAULT_PORTS[parts.scheme],
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "mqtts",
    )


def check_prefix(raw: str) -> str:
    """A topic prefix: one or more levels, no wildcard, no empty level, no leading ``$``."""
    value = raw.strip()
    levels = value.split("/")
    if not value or any(not level for level in levels):
        raise ValueError("expected topic levels such as evlink or home/evlink")
    if any(char in value for char in "+#\x00") or value.startswith("$"):
        raise ValueError("a topic prefix has no +, # or leading $")
    return value
