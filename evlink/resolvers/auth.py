"""API keys: minting, checking and revoking, and authenticating a request.

:func:`authenticate_request` is the one way in for REST, GraphQL over HTTP (the
answer cache's path included) and websockets (``connection_init``, then each
operation): the caller and its key's hash, with refused keys counted per client
address by the rate limiter (``auth-failures``, :mod:`evlink.ratelimit`).

A key reads ``evl_<random>_<checksum>``: 192 bits from :mod:`secrets` in base62,
then a CRC32 of the random part in base62. The checksum lets a mistyped key be
refused without touching the database and lets secret scanners recognise a
real key. Only the SHA-256 of the key and its short public prefix are stored;
the key itself is shown once, when it is made.

``ApiKey.last_used_at`` is the time of a use to within a minute: a key whose stored
time is a minute old (or none) when it is looked up is noted, and a running app
writes the noted keys in batches (:class:`KeyUses`), one ``UPDATE`` every
:data:`KEY_USE_FLUSH_INTERVAL` seconds and one at shutdown, so a fleet of keys is
not a commit per key per minute. The stored time can so lag the key's last use by
a minute and that interval.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from evlink.cache import ReadCache, user_tag
from evlink.errors import EvlinkError, NotFound, Unauthenticated
from evlink.models import ApiKey, User
from evlink.models.users import ActiveKey, active_key_with_user

if TYPE_CHECKING:
    from evlink.services import Services

__all__ = [
    "KEY_ID_LENGTH",
    "KEY_USE_BATCH",
    "KEY_USE_FLUSH_INTERVAL",
    "Caller",
    "IssuedKey",
    "KeyLookup",
    "KeyUses",
    "authenticate",
    "authenticate_request",
    "cached_user",
    "check_key_format",
    "hash_key",
    "issue_key",
    "key_from_authorization",
    "key_id",
    "revoke_key",
]

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_BYTES = 24  # 192 bits
_RANDOM_CHARS = 33  # 62**33 > 2**192
_CHECKSUM_CHARS = 6  # 62**6 > 2**32
_KEY_RE = re.compile(r"evl_([0-9A-Za-z]{33})_([0-9A-Za-z]{6})")
PREFIX_LENGTH = 12  # "evl_" and 8 characters of the random part
# A key's name in the rate-limit counters (key_id): this many hex digits of its hash.
KEY_ID_LENGTH = 16
# Writing last_used_at on every request would make each read a write.
_LAST_USED_RESOLUTION = timedelta(minutes=1)
# Seconds between two writes of the noted key uses (KeyUses.flush_every).
KEY_USE_FLUSH_INTERVAL = 5.0
# Keys per UPDATE of a flush (PostgreSQL takes at most 32,767 parameters a statement).
KEY_USE_BATCH = 1000

logger = logging.getLogger(__name__)

KeyLookup = Callable[[str], Awaitable[ActiveKey | None]]
"""Reads the active key with this :func:`hash_key` (and its user) from the database."""


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A freshly made key: ``secret`` is shown once and never stored."""

    secret: str
    record: ApiKey


def _base62(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def _checksum(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode()), _CHECKSUM_CHARS)


class KeyUses:
    """Keys used since the last flush, by id, each with the time it was first noted;
    :meth:`flush` writes them to ``last_used_at``, :data:`KEY_USE_BATCH` keys an
    ``UPDATE`` (the earliest noted time for all: never later than a use)."""

    def __init__(self) -> None:
        self._noted: dict[int, datetime] = {}
        self._flushed = asyncio.Event()

    def note(self, key_id: int, when: datetime) -> None:
        self._noted.setdefault(key_id, when)

    async def flush(self) -> None:
        """Write the noted uses; on a database failure they are kept for the next flush."""
        noted, self._noted = self._noted, {}
        if not noted:
            return
        when, ids = min(noted.values()), list(noted)
        try:
            for start in range(0, len(ids), KEY_USE_BATCH):
                chunk = ids[start : start + KEY_USE_BATCH]
                await ApiKey.filter(id__in=chunk).update(last_used_at=when)
        except EvlinkError:
            for key_id, when in noted.items():
                self.note(key_id, when)
            raise
        finally:
            self._flushed.set()
            self._flushed.clear()

    async def flush_every(self, interval: float) -> None:
        """Flush every ``interval`` seconds until cancelled (the app's lifespan, which
        flushes once more at shutdown)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush()
            except EvlinkError as exc:
                logger.warning("key uses not written (%s); kept for the next flush", exc.code)

    async def flushed(self) -> None:
        """Wait for the next flush that had something to write (written or failed)."""
        await self._flushed.wait()


@dataclass(frozen=True, slots=True)
class Caller:
    """Whom a request comes from: the user, and the SHA-256 of the key it came with."""

    user: User
    key_hash: str

    @property
    def key_id(self) -> str:
        """The key's name in the rate-limit counters (:func:`key_id`)."""
        return key_id(self.key_hash)


def hash_key(key: str) -> str:
    """The SHA-256 of ``key`` in hex: all that is stored of it."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key_hash: str) -> str:
    """A key's name in the rate-limit counters, from its :func:`hash_key` (or
    ``ApiKey.hash``): a prefix of the hash, never the secret itself."""
    return key_hash[:KEY_ID_LENGTH]


def new_key() -> str:
    random_part = _base62(int.from_bytes(secrets.token_bytes(_RANDOM_BYTES), "big"), _RANDOM_CHARS)
    return f"evl_{random_part}_{_checksum(random_part)}"


def check_key_format(key: str) -> bool:
    """True when ``key`` is shaped like an evlink key and its checksum holds."""
    match = _KEY_RE.fullmatch(key)
    return match is not None and secrets.compare_digest(_checksum(match[1]), match[2])


async def issue_key(user: User, name: str = "") -> IssuedKey:
    key = new_key()
    record = await ApiKey.create(
        user=user, name=name, prefix=key[:PREFIX_LENGTH], hash=hash_key(key)
    )
    return IssuedKey(secret=key, record=record)


async def revoke_key(prefix_or_id: str, cache: ReadCache | None = None) -> ApiKey:
    """Revoke the key with this database id or public prefix.

    ``cache``: the read cache to drop the key from (and, through its event bus, every
    instance's). Without one, a server stops taking the key once its cached
    authentication expires (``EVLINK_CACHE_TTL``).
    """
    query = ApiKey.filter(revoked_at=None)
    if prefix_or_id.isascii() and prefix_or_id.isdecimal():
        key_id = int(prefix_or_id)
        record = await query.get_or_none(id=key_id) if key_id < 2**31 else None
    else:
        matches = await query.filter(prefix=prefix_or_id[:PREFIX_LENGTH]).limit(2)
        record = matches[0] if len(matches) == 1 else None
    if record is None:
        raise NotFound("No single active key matches")
    record.revoked_at = datetime.now(UTC)
    await record.save(update_fields=["revoked_at"])
    if cache is not None:
        await cache.invalidate(user_tag(record.user_id))  # type: ignore[attr-defined]
    return record


def key_from_authorization(authorization: str | None) -> str | None:
    """The key in an ``Authorization: Bearer <key>`` value, if there is one."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


def cached_user(cache: ReadCache, digest: str) -> User | None:
    """The user of the key with this :func:`hash_key` if it was accepted a moment ago
    (``cache``), without a lookup."""
    if not cache.enabled:
        return None
    user: User | None = cache.get(("key", digest))
    return user


async def authenticate(
    key: str | None,
    cache: ReadCache | None = None,
    *,
    digest: str | None = None,
    uses: KeyUses | None = None,
    lookup: KeyLookup | None = None,
) -> User:
    """The user a key belongs to. Missing, malformed, unknown and revoked keys alike fail.

    With ``cache``, an accepted key is remembered for the cache's ttl (tagged with
    its user, whom revoking a key or changing the tier invalidates); refused keys
    never are. ``digest``: the key's :func:`hash_key`, when the caller has it already.
    ``uses``: where a use is noted for the next batch (the app's); without it (the
    CLI, scripts) ``last_used_at`` is written at once. ``lookup``: how the active key
    with this hash is read from the database when it must be, if not by
    :func:`~evlink.models.users.active_key_with_user` (a route that reads more in the
    same statement, :class:`evlink.resolvers.vehicles.StatusRead`).
    """
    if key is None:
        raise Unauthenticated()
    digest = digest or hash_key(key)
    # Only a well-formed key was ever stored: a hit needs no format check.
    user = cached_user(cache, digest) if cache is not None else None
    if user is not None:
        return user
    if not check_key_format(key):
        raise Unauthenticated()
    began = cache.begin() if cache is not None else 0
    record = await (lookup or active_key_with_user)(digest)
    if record is None:
        raise Unauthenticated()
    now = datetime.now(UTC)
    if record.last_used_at is None or now - record.last_used_at > _LAST_USED_RESOLUTION:
        if uses is not None:
            uses.note(record.id, now)
        else:
            await ApiKey.filter(id=record.id).update(last_used_at=now)
    if cache is not None:
        cache.put(("key", digest), record.user, tags=[user_tag(record.user.id)], began=began)
    return record.user


async def authenticate_request(
    services: Services,
    authorization: str | None,
    address: str | None,
    lookup: KeyLookup | None = None,
) -> Caller:
    """The caller of a request with this ``Authorization``, from client ``address``;
    failed attempts are limited per address.

    A well-formed key is always checked first and only a refused one is counted,
    so a valid key is never turned away for others' failures from its address
    (a shared NAT, an office). Past the limit a refused key gets 429 with
    ``Retry-After`` instead of 401; a malformed one is refused without a lookup
    either way. No ``Authorization`` at all is not an attempt and is not counted.
    """
    key = key_from_authorization(authorization)
    if key is None:
        raise Unauthenticated()
    digest = hash_key(key)
    try:
        user = await authenticate(
            key, services.cache, digest=digest, uses=services.key_uses, lookup=lookup
        )
        return Caller(user, digest)
    except Unauthenticated:
        pass
    if services.limiter is not None and address is not None:
        await services.limiter.count_auth_failure(address)
    raise Unauthenticated()
