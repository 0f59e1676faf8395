"""A user's electricity tariff: a price per kWh, optionally by time of day.

Pure rules, no I/O. A :class:`Tariff` has a base price and currency, and may
have time-of-use periods (``22:00-06:00`` at another price) read in the user's
IANA time zone (UTC by default). A period may wrap midnight; periods may not
overlap. :meth:`Tariff.price_at` is the price in force at an instant: the
period's that holds it, else the base price. The JSON form (:meth:`to_json`)
is what a charging session keeps of the tariff it opened under, so that a later
change does not rewrite its cost.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from evlink.errors import BadRequest

__all__ = ["Period", "Tariff", "parse_period", "period_of"]

MINUTES_PER_DAY = 24 * 60
_CLOCK = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_PERIOD = re.compile(r"\s*(\d\d:\d\d)\s*-\s*(\d\d:\d\d)\s*=\s*(\S+)\s*")
_CURRENCY = re.compile(r"[A-Z]{3}")

# The highest price per kWh a tariff takes: far above any real one, and low enough
# that a session's cost (energy times price) stays a finite JSON number.
MAX_PRICE = 1000.0


@dataclass(frozen=True, slots=True)
class Period:
    """From ``start`` to ``end`` (minutes after local midnight; wraps when end <= start)."""

    start: int
    end: int
    price: float

    def minutes(self) -> set[int]:
        """The minutes of the day it covers."""
        if self.end > self.start:
            return set(range(self.start, self.end))
        return set(range(self.start, MINUTES_PER_DAY)) | set(range(0, self.end))

    def holds(self, minute: int) -> bool:
        if self.end > self.start:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    @property
    def text(self) -> str:
        return f"{_clock(self.start)}-{_clock(self.end)}"


@dataclass(frozen=True, slots=True)
class Tariff:
    price_per_kwh: float
    currency: str
    periods: tuple[Period, ...] = field(default_factory=tuple)
    time_zone: str = "UTC"

    @classmethod
    def checked(
        cls,
        price_per_kwh: float,
        currency: str,
        periods: Iterable[Period] = (),
        time_zone: str | None = None,
    ) -> Tariff:
        """A tariff from a client's values; BAD_REQUEST naming what is wrong."""
        _check_price(price_per_kwh, "pricePerKwh")
        code = currency.strip().upper()
        if not _CURRENCY.fullmatch(code):
            raise BadRequest("currency must be a 3-letter ISO 4217 code, such as EUR")
        zone = (time_zone or "UTC").strip()
        _zone(zone)
        ordered = tuple(sorted(periods, key=lambda p: p.start))
        for period in ordered:
            _check_price(period.price, f"the price of period {period.text}")
            if period.start == period.end:
                raise BadRequest(f"period {period.text} is empty")
        covered: set[int] = set()
        for period in ordered:
            if covered & period.minutes():
                raise BadRequest(f"period {period.text} overlaps another period")
            covered |= period.minutes()
        return cls(float(price_per_kwh), code, ordered, zone)

    def price_at(self, instant: datetime) -> float:
        """The price per kWh in force at ``instant`` (aware), in the tariff's time zone."""
        if not self.periods:
            return self.price_per_kwh
        local = instant.astimezone(_zone(self.time_zone))
        minute = local.hour * 60 + local.minute
        for period in self.periods:
            if period.holds(minute):
                return period.price
        return self.price_per_kwh

    def to_json(self) -> dict[str, Any]:
        return {
            "pricePerKwh": self.price_per_kwh,
            "currency": self.currency,
            "periods": [{"period": p.text, "price": p.price} for p in self.periods],
            "timeZone": self.time_zone,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Tariff:
        periods = tuple(
            _period(str(p["period"]), float(p["price"])) for p in raw.get("periods") or []
        )
        return cls(
            float(raw["pricePerKwh"]),
            str(raw["currency"]),
            periods,
            str(raw.get("timeZone") or "UTC"),
        )


def parse_period(text: str) -> Period:
    """``HH:MM-HH:MM=PRICE`` (the CLI's ``--period``) as a :class:`Period`."""
    match = _PERIOD.fullmatch(text)
    if match is None:
        raise BadRequest(f"period {text!r} must be HH:MM-HH:MM=PRICE, such as 22:00-06:00=0.12")
    try:
        price = float(match.group(3))
    except ValueError:
        raise BadRequest(f"period {text!r}: the price must be a number") from None
    return _period(f"{match.group(1)}-{match.group(2)}", price)


def period_of(start: str, end: str, price: float) -> Period:
    """A period from its two ``HH:MM`` times (GraphQL's TariffPeriodInput)."""
    return _period(f"{start.strip()}-{end.strip()}", price)


def _period(span: str, price: float) -> Period:
    start, _, end = span.partition("-")
    return Period(_minute(start), _minute(end), price)


def _minute(text: str) -> int:
    match = _CLOCK.fullmatch(text)
    if match is None:
        raise BadRequest(f"{text!r} is not a time of day HH:MM (00:00 to 23:59)")
    return int(match.group(1)) * 60 + int(match.group(2))


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _check_price(price: float, name: str) -> None:
    if not math.isfinite(price) or not 0 <= price <= MAX_PRICE:
        raise BadRequest(f"{name} must be a number from 0 to {MAX_PRICE:g}")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(
            f"timeZone {name!r} is not an IANA time zone, such as Europe/Oslo"
        ) from None
