"""Tier quotas and rate limits that hold across instances, told in RateLimit headers.

Policies, each a fixed window of the :mod:`limits` library (``300/30days``):

- ``burst``: every authenticated request, per API key (``EVLINK_BURST``);
- ``reads``: REST reads and GraphQL queries and subscriptions, per user and tier
  (``EVLINK_QUOTAS``);
- ``commands``: charging commands evlink sends, per user and tier
  (``EVLINK_COMMAND_QUOTAS``); charged by the use case, so an idempotent replay
  or a refused command costs nothing;
- ``auth-failures``: refused API keys, per client address (``EVLINK_AUTH_FAILURES``).

A window opens with its first request and lasts its length; the count lives in
Redis when ``EVLINK_REDIS_URL`` is set (instances share it: each count is one
atomic ``INCRBY``), else in this process. When Redis fails, the limiter counts
in memory, logs that once, and tries Redis again every
:data:`REDIS_RETRY_INTERVAL` seconds: limits are then per instance, never gone,
and the API keeps answering.

Every HTTP answer to an authenticated request carries the policies that applied
(draft-ietf-httpapi-ratelimit-headers, structured fields):

    RateLimit-Policy: "burst";q=60;w=60, "reads";q=300;w=2592000
    RateLimit: "burst";r=59;t=60, "reads";r=299;t=2592000

Time comes from :attr:`Limiter.clock` for the in-memory counts, so tests move
the windows without sleeping; Redis keeps time by its own key expiry.

This module knows rates, not callers: requests are authenticated by
:func:`evlink.resolvers.auth.authenticate_request` (which has refused keys
counted here, :meth:`Limiter.count_auth_failure`), and the vehicles a tier may
have (``EVLINK_VEHICLE_LIMITS``, read with :func:`parse_tier_counts`) are an
account rule of :mod:`evlink.resolvers.accounts`.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import redis.asyncio
from limits import RateLimitItem
from limits.aio.storage import RedisStorage, Storage
from limits.errors import StorageError
from limits.util import parse_many
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from evlink.errors import RateLimited
from evlink.events import REDIS_FAILURES
from evlink.models import Tier, User
from evlink.settings import Settings, SettingsError

__all__ = [
    "AUTH_FAILURES",
    "BURST",
    "COMMANDS",
    "READS",
    "REDIS_RETRY_INTERVAL",
    "LimitState",
    "Limiter",
    "MemoryCounters",
    "Policy",
    "QuotaExceeded",
    "Quotas",
    "check_settings",
    "describe",
    "limit_field",
    "parse_rate",
    "parse_tier_counts",
    "parse_tier_rates",
    "policy_field",
    "reported_limits",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]

BURST = "burst"
READS = "reads"
COMMANDS = "commands"
AUTH_FAILURES = "auth-failures"

# Seconds between two tries of a Redis that failed; meanwhile the counts are in memory.
REDIS_RETRY_INTERVAL = 5.0
# Seconds a Redis call may take: a hung Redis must not hold requests for long.
REDIS_TIMEOUT = 1.0
# Memory counters drop expired windows at most this often (seconds of the clock).
_SWEEP_INTERVAL = 60.0

_STORAGE_ERRORS: tuple[type[BaseException], ...] = (StorageError, TimeoutError, *REDIS_FAILURES)


# -- the syntax ------------------------------------------------------------------


def parse_rate(text: str) -> RateLimitItem:
    """One rate in the syntax of :mod:`limits`: ``60/minute``, ``300/30days``, ``5 per hour``."""
    try:
        items = parse_many(text.strip())
    except ValueError:
        raise ValueError("expected COUNT/[N]UNIT such as 60/minute or 300/30days") from None
    if len(items) != 1:
        raise ValueError("expected one rate, such as 60/minute")
    return items[0]


def _tier_entries(text: str) -> dict[Tier, str]:
    entries: dict[Tier, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"expected TIER=VALUE, got {part.strip()!r}")
        try:
            tier = Tier(name.strip().upper())
        except ValueError:
            raise ValueError(
                f"unknown tier {name.strip()!r} (one of {', '.join(t.value.lower() for t in Tier)})"
            ) from None
        entries[tier] = value.strip()
    return entries


def parse_tier_rates(
    text: str, defaults: Mapping[Tier, RateLimitItem | None] | None = None
) -> dict[Tier, RateLimitItem | None]:
    """``free=300/30days;basic=2000/30days;pro=unlimited``: a tier left out keeps its default."""
    rates: dict[Tier, RateLimitItem | None] = dict(defaults or {})
    for tier, value in _tier_entries(text).items():
        rates[tier] = None if value.lower() == "unlimited" else parse_rate(value)
    return rates


def parse_tier_counts(
    text: str, defaults: Mapping[Tier, int | None] | None = None
) -> dict[Tier, int | None]:
    """``free=1;basic=2;pro=5`` (or ``unlimited``): a tier left out keeps its default."""
    counts: dict[Tier, int | None] = dict(defaults or {})
    for tier, value in _tier_entries(text).items():
        if value.lower() == "unlimited":
            counts[tier] = None
            continue
        try:
            count = int(value)
        except ValueError:
            raise ValueError(f"expected a whole number for {tier.value.lower()}") from None
        if count < 0:
            raise ValueError(f"{tier.value.lower()} must be 0 or more")
        counts[tier] = count
    return counts


def describe(item: RateLimitItem) -> str:
    """A rate in the syntax it is configured in: ``300/30days``, ``60/minute``."""
    unit = item.GRANULARITY.name
    window = unit if item.multiples == 1 else f"{item.multiples}{unit}s"
    return f"{item.amount}/{window}"


# -- policies and what is left of them --------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """A named limit: ``limit`` requests per ``window`` seconds."""

    name: str
    item: RateLimitItem
    # Worked out once: the limit, the window and the parts of the counters' keys.
    limit: int = field(init=False, compare=False)
    window: int = field(init=False, compare=False)
    _key_head: str = field(init=False, compare=False, repr=False)
    _key_tail: str = field(init=False, compare=False, repr=False)
    _hash: int = field(init=False, compare=False, repr=False)
    # Its item of the RateLimit-Policy field, and the head of its item of RateLimit.
    policy_item: bytes = field(init=False, compare=False, repr=False)
    limit_head: bytes = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        head, _, tail = self.item.key_for(self.name, "\0").partition("/\0/")
        limit, window = self.item.amount, self.item.get_expiry()
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "_key_head", head + "/")
        object.__setattr__(self, "_key_tail", "/" + tail)
        object.__setattr__(self, "_hash", hash((self.name, self.item)))
        object.__setattr__(self, "policy_item", f'"{self.name}";q={limit};w={window}'.encode())
        object.__setattr__(self, "limit_head", f'"{self.name}";r='.encode())

    def __hash__(self) -> int:
        # Worked out once: limits hashes a rate in Python, and the RateLimit-Policy field
        # of every answer is looked up by its policies.
        return self._hash

    def key(self, subject: str) -> str:
        """limits' own key for ``subject`` (``item.key_for(name, subject)``): the rate is
        part of it, so a changed rate starts a fresh count."""
        return self._key_head + subject + self._key_tail


@dataclass(slots=True)
class LimitState:
    """Where one subject (a key, a user, an address) stands on one policy. A value, not
    changed once made (not a frozen dataclass: two are made per request, and a frozen
    one's ``__init__`` costs four times a plain one's)."""

    policy: Policy
    subject: str
    count: int  # counted in the open window, this request included; may pass the limit
    reset_in: float | None  # seconds until the window closes; None when none is open
    reset_at: float | None  # the same as a time of the limiter's clock (epoch seconds)

    @property
    def exceeded(self) -> bool:
        return self.count > self.policy.limit

    @property
    def used(self) -> int:
        return min(self.count, self.policy.limit)

    @property
    def remaining(self) -> int:
        return max(0, self.policy.limit - self.count)

    @property
    def reset_datetime(self) -> datetime | None:
        return None if self.reset_at is None else datetime.fromtimestamp(self.reset_at, UTC)

    @property
    def reset_seconds(self) -> int:
        """Whole seconds until the quota is whole again (a full window when none is open)."""
        if self.reset_in is None:
            return self.policy.window
        return max(0, math.ceil(self.reset_in))


class QuotaExceeded(RateLimited):
    """429 RATE_LIMITED: ``state`` says which policy and when it resets (``Retry-After``)."""

    def __init__(self, state: LimitState) -> None:
        policy = state.policy
        super().__init__(
            f"Rate limit exceeded: {policy.name} allows {describe(policy.item)}; "
            f"retry in {max(1, state.reset_seconds)} s",
            retry_after=float(max(1, state.reset_seconds)),
        )
        self.state = state


@dataclass(frozen=True, slots=True)
class Quotas:
    """The configured policies per tier, from the settings."""

    burst: RateLimitItem
    reads: Mapping[Tier, RateLimitItem | None]
    commands: Mapping[Tier, RateLimitItem | None]
    auth_failures: RateLimitItem
    # The policies made once (every request is charged to them): name -> tier -> policy.
    _made: dict[str, dict[Tier, Policy | None]] = field(init=False, compare=False, repr=False)
    burst_policy: Policy = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        made: dict[str, dict[Tier, Policy | None]] = {}
        for name, rates in ((READS, self.reads), (COMMANDS, self.commands)):
            made[name] = {}
            for tier in Tier:
                item = rates.get(tier)
                made[name][tier] = None if item is None else _policy(name, item)
        burst = _policy(BURST, self.burst)
        made[BURST] = dict.fromkeys(Tier, burst)
        object.__setattr__(self, "_made", made)
        object.__setattr__(self, "burst_policy", burst)

    @classmethod
    def from_settings(cls, settings: Settings) -> Quotas:
        """Parse the settings; raises ValueError (the settings check names the variable)."""
        return cls(
            burst=parse_rate(settings.burst),
            reads=parse_tier_rates(settings.quotas, _DEFAULT_READS),
            commands=parse_tier_rates(settings.command_quotas, _DEFAULT_COMMANDS),
            auth_failures=parse_rate(settings.auth_failures),
        )

    def policies(self, tier: Tier) -> list[Policy]:
        """The policies a user of ``tier`` is held to: burst, then reads and commands."""
        found = [self._made[BURST][tier]]
        found += [self._made[name][tier] for name in (READS, COMMANDS)]
        return [policy for policy in found if policy is not None]

    def policy(self, name: str, tier: Tier) -> Policy | None:
        """One of :meth:`policies` (None: ``tier`` is not held to it)."""
        by_tier = self._made.get(name)
        return None if by_tier is None else by_tier[tier]


@functools.lru_cache(maxsize=256)
def _policy(name: str, item: RateLimitItem) -> Policy:
    """The same few policies on every request, made once."""
    return Policy(name, item)


# The documented defaults are the settings' own; a tier left out of a variable keeps them.
# (Charging needs PRO and FORBIDDEN_TIER comes first: only PRO's command quota is reached.)
_DEFAULTS = Settings()
_DEFAULT_READS = parse_tier_rates(_DEFAULTS.quotas)
_DEFAULT_COMMANDS = parse_tier_rates(_DEFAULTS.command_quotas)


def check_settings(settings: Settings) -> None:
    """Raise :class:`~evlink.settings.SettingsError` naming the first unusable variable."""
    checks: list[tuple[str, Callable[[str], object]]] = [
        ("quotas", parse_tier_rates),
        ("command_quotas", parse_tier_rates),
        ("burst", parse_rate),
        ("auth_failures", parse_rate),
        ("vehicle_limits", parse_tier_counts),
    ]
    for name, parse in checks:
        raw = getattr(settings, name)
        try:
            parse(raw)
        except ValueError as exc:
            raise SettingsError(f"EVLINK_{name.upper()}: {exc} (got {raw!r})") from None


# -- counting ------------------------------------------------------------------------


class MemoryCounters(Storage):
    """Fixed-window counters in this process, on an injectable clock.

    :class:`limits.aio.storage.MemoryStorage` reads ``time.time()`` itself (and
    expires keys on it from a background task), so tests could not move its
    windows; this storage speaks the same interface and asks ``clock``.
    Single event loop, no ``await`` between read and write: each call is atomic.
    """

    STORAGE_SCHEME = None  # not selectable by URI

    def __init__(self, clock: Clock) -> None:
        super().__init__(None)
        self.clock = clock
        self._windows: dict[str, tuple[int, float]] = {}  # key -> (count, closes at)
        self._next_sweep = 0.0

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        count, _, _ = self.hit(key, expiry, amount)
        return count

    def hit(
        self, key: str, expiry: int, amount: int = 1, now: float | None = None
    ) -> tuple[int, float, float]:
        """Count ``amount`` on ``key``: (the count, when its window closes, now).
        ``now``: the clock's time, when the caller has read it already."""
        if now is None:
            now = self.clock()
        if now >= self._next_sweep:
            self._sweep(now)
        windows = self._windows
        count, closes = windows.get(key, (0, now))
        if closes <= now:
            count, closes = 0, now + expiry
        count += amount
        windows[key] = (count, closes)
        return count, closes, now

    async def get(self, key: str) -> int:
        count, closes = self._windows.get(key, (0, 0.0))
        return count if closes > self.clock() else 0

    async def get_expiry(self, key: str) -> float:
        now = self.clock()
        _, closes = self._windows.get(key, (0, now))
        return closes if closes > now else now

    async def check(self) -> bool:
        return True

    async def reset(self) -> int | None:
        dropped = len(self._windows)
        self._windows.clear()
        return dropped

    async def clear(self, key: str) -> None:
        self._windows.pop(key, None)

    def _sweep(self, now: float) -> None:
        # Windows of users who went quiet would otherwise stay forever.
        self._next_sweep = now + _SWEEP_INTERVAL
        for key in [k for k, (_, closes) in self._windows.items() if closes <= now]:
            del self._windows[key]


def _storage_uri(redis_url: str) -> str:
    """The URI limits selects its async Redis storage by (the pool itself is redis-py's)."""
    if redis_url.startswith("unix://"):
        return "async+redis+unix://" + redis_url.removeprefix("unix://")
    return "async+" + redis_url


async def _twice(operation: Callable[[Storage], Awaitable[T]], storage: Storage) -> T:
    """``operation``, tried once more on a failure: the first try after a Redis restart
    or a reset connection meets a dead pooled connection, which redis-py then drops."""
    try:
        return await operation(storage)
    except _STORAGE_ERRORS:
        return await operation(storage)


class Limiter:
    """Counts requests against the policies, in Redis when configured, else in memory."""

    def __init__(
        self,
        quotas: Quotas,
        *,
        redis_url: str = "",
        key_prefix: str = "evlink:ratelimit",
        clock: Clock = time.time,
        retry_interval: float = REDIS_RETRY_INTERVAL,
    ) -> None:
        self.quotas = quotas
        self.clock = clock
        self.retry_interval = retry_interval
        self.memory = MemoryCounters(lambda: self.clock())
        self._pool: redis.asyncio.ConnectionPool | None = None
        self._redis: RedisStorage | None = None
        self._redis_up = True
        self._retry_at = 0.0
        if redis_url:
            # Our own pool: no retries with backoff inside redis-py (the fallback is
            # ours), short timeouts, and a handle to close on shutdown.
            self._pool = redis.asyncio.ConnectionPool.from_url(
                redis_url,
                socket_connect_timeout=REDIS_TIMEOUT,
                socket_timeout=REDIS_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
            )
            self._redis = RedisStorage(
                _storage_uri(redis_url),
                wrap_exceptions=True,
                implementation="redispy",
                key_prefix=key_prefix,
                # limits types its options as scalars; the redis-py bridge takes a pool.
                connection_pool=self._pool,  # type: ignore[arg-type]
            )

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock = time.time) -> Limiter:
        """The limiter the settings describe; Redis keys are named after the database
        (as the event channels are) unless ``EVLINK_RATELIMIT_PREFIX`` names them."""
        namespace = hashlib.sha256(settings.database_url.encode()).hexdigest()[:12]
        prefix = settings.ratelimit_prefix or f"evlink:{namespace}:ratelimit"
        return cls(
            Quotas.from_settings(settings),
            redis_url=settings.redis_url,
            key_prefix=prefix,
            clock=clock,
        )

    @property
    def shared(self) -> bool:
        """True while the counts are in Redis, shared by every instance."""
        return self._redis is not None and self._redis_up

    async def start(self) -> None:
        """Say at start-up whether Redis answers (the first request would find out too)."""
        if self._redis is not None and not await self._redis.check():
            self._redis_down("it does not answer at start-up")

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.disconnect()

    # -- the requests' charges

    async def admit(self, user: User, key: str, *, reads: bool = True) -> list[LimitState]:
        """Charge one request: ``burst`` for the key, then ``reads`` unless it is a
        mutation or a charging command. Raises :class:`QuotaExceeded` (429)."""
        quotas = self.quotas
        checks = [(quotas.burst_policy, f"key:{key}")]
        if reads:
            read_policy = quotas.policy(READS, user.tier)
            if read_policy is not None:
                checks.append((read_policy, f"user:{user.id}"))
        return await self._charge(checks)

    async def charge_command(self, user: User) -> LimitState | None:
        """Charge one charging command to the user's tier quota (none: not limited)."""
        policy = self.quotas.policy(COMMANDS, user.tier)
        if policy is None:
            return None
        (state,) = await self._charge([(policy, f"user:{user.id}")])
        return state

    async def count_auth_failure(self, address: str) -> None:
        """Count one refused key from ``address``; past the limit, 429 instead of 401."""
        policy = _policy(AUTH_FAILURES, self.quotas.auth_failures)
        await self._charge([(policy, f"ip:{address}")])

    async def usage(self, user: User, keys: Sequence[str] = ()) -> list[LimitState]:
        """What ``user`` has spent of each quota (``burst`` per key in ``keys``), uncharged."""
        burst = self.quotas.burst_policy
        states = [await self._peek(burst, f"key:{k}") for k in keys]
        for policy in self.quotas.policies(user.tier):
            if policy.name != BURST:
                states.append(await self._peek(policy, f"user:{user.id}"))
        return states

    async def _charge(self, checks: list[tuple[Policy, str]]) -> list[LimitState]:
        # Hit in order and stop at the first refusal: a request the burst limit
        # refuses costs no quota. Policies after a refusal are only read, for the headers.
        states: list[LimitState] = []
        refused: LimitState | None = None
        # No coroutine for a count in memory, and one reading of the clock for all.
        now = self.clock() if self._redis is None else None
        for policy, subject in checks:
            if refused is None:
                if now is not None:
                    state = self._memory_hit(policy, subject, now)
                else:
                    state = await self._hit(policy, subject)
                if state.exceeded:
                    refused = state
            else:
                state = await self._peek(policy, subject)
            states.append(state)
        _report(states)
        if refused is not None:
            raise QuotaExceeded(refused)
        return states

    def _memory_hit(self, policy: Policy, subject: str, now: float | None = None) -> LimitState:
        # Memory only, on the limiter's clock: no round trip to wrap.
        count, closes, now = self.memory.hit(policy.key(subject), policy.window, now=now)
        return LimitState(policy, subject, count, closes - now, closes)

    async def _hit(self, policy: Policy, subject: str) -> LimitState:
        if self._redis is None:
            return self._memory_hit(policy, subject)
        key = policy.key(subject)

        async def hit(storage: Storage) -> tuple[int, float]:
            count = await storage.incr(key, policy.window)
            return count, await storage.get_expiry(key)

        (count, closes), now = await self._run(hit)
        return LimitState(policy, subject, count, closes - now, self._to_clock(closes, now))

    async def _peek(self, policy: Policy, subject: str) -> LimitState:
        key = policy.key(subject)

        async def peek(storage: Storage) -> tuple[int, float]:
            return await storage.get(key), await storage.get_expiry(key)

        (count, closes), now = await self._run(peek)
        if count == 0:
            return LimitState(policy, subject, 0, None, None)
        return LimitState(policy, subject, count, closes - now, self._to_clock(closes, now))

    def _to_clock(self, closes: float, now: float) -> float:
        # Redis reports expiry on the wall clock; resetAt is told on the limiter's.
        return self.clock() + (closes - now)

    async def _run(self, operation: Callable[[Storage], Awaitable[T]]) -> tuple[T, float]:
        """``operation`` on Redis while it answers, else on memory; with that storage's now."""
        if self._redis is not None and (self._redis_up or self.clock() >= self._retry_at):
            try:
                result = await _twice(operation, self._redis)
            except _STORAGE_ERRORS as exc:
                self._redis_down(f"{type(exc).__name__}: {exc}")
            else:
                if not self._redis_up:
                    self._redis_up = True
                    logger.info("rate limits: Redis answers again; counts are shared again")
                # limits' Redis storage tells expiry as time.time() plus the key's TTL.
                return result, time.time()
        return await operation(self.memory), self.clock()

    def _redis_down(self, reason: str) -> None:
        self._retry_at = self.clock() + self.retry_interval
        if self._redis_up:
            # Once per outage: every request during it would otherwise log the same.
            logger.warning(
                "rate limits: Redis failed (%s); counting in this instance's memory "
                "until it answers again",
                reason,
            )
        self._redis_up = False


# -- the RateLimit headers -----------------------------------------------------------

# The limits charged while handling the current HTTP request, for its RateLimit headers;
# evlink.edge.HttpEdge sets a list per request and writes the headers.
reported_limits: contextvars.ContextVar[list[LimitState] | None] = contextvars.ContextVar(
    "ratelimit_report", default=None
)


def _report(states: Sequence[LimitState]) -> None:
    """Add ``states`` to the current HTTP request's RateLimit headers (one per policy)."""
    reported = reported_limits.get()
    if reported is None:
        return  # a websocket operation, the CLI: no headers to tell
    if not reported:  # the request's first charge
        reported.extend(states)
        return
    for state in states:
        name = state.policy.name
        for i, told in enumerate(reported):  # at most one per policy
            if told.policy.name == name:
                del reported[i]
                break
        reported.append(state)


def policy_field(states: Sequence[LimitState]) -> bytes:
    """``RateLimit-Policy``: a structured-field list, one item per policy (each made
    once, by its :class:`Policy`)."""
    return b", ".join([state.policy.policy_item for state in states])


def limit_field(states: Sequence[LimitState]) -> bytes:
    """``RateLimit``: remaining (``r``) and seconds to reset (``t``) per policy."""
    return b", ".join(
        [
            b"%s%d;t=%d" % (state.policy.limit_head, state.remaining, state.reset_seconds)
            for state in states
        ]
    )
