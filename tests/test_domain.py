"""evlink.domain's rules that are plain functions: run without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evlink.domain import format_timestamp, vehicle_name


@pytest.mark.parametrize(
    ("name", "information", "shown"),
    [
        ("Daily", {"displayName": "XPENG G6", "brand": "XPENG", "model": "G6"}, "Daily"),
        (None, {"displayName": "XPENG G6", "brand": "Xpeng", "model": "G6 RWD"}, "XPENG G6"),
        ("", {"displayName": "", "brand": "Xpeng", "model": "G6 RWD"}, "Xpeng G6 RWD"),
        (None, {"brand": "Xpeng"}, "Xpeng"),
        (None, {"model": "G6"}, "G6"),
        (None, {"vin": "LMGF"}, None),
        (None, None, None),
    ],
    ids=["given", "displayName", "brand and model", "brand", "model", "nothing", "no block"],
)
def test_a_vehicle_is_named_by_evlink_then_its_display_name_then_brand_and_model(
    name: str | None, information: dict[str, Any] | None, shown: str | None
) -> None:
    assert vehicle_name(name, information) == shown


def _strftime_way(value: datetime) -> str:
    """The REST contract's timestamp as evlink wrote it first (strftime)."""
    utc = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


_ZONES = st.sampled_from(
    [None, UTC, ZoneInfo("UTC"), ZoneInfo("Europe/Oslo"), timezone(-timedelta(hours=9, minutes=30))]
)


@given(st.datetimes(datetime(2, 1, 1), datetime(9998, 12, 31), timezones=_ZONES))
def test_a_timestamp_is_written_as_strftime_wrote_it(value: datetime) -> None:
    assert format_timestamp(value) == _strftime_way(value)


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (datetime(2026, 3, 4, 5, 6, 7, 999999, tzinfo=UTC), "2026-03-04T05:06:07.999Z"),
        (datetime(2026, 3, 4, 5, 6, 7), "2026-03-04T05:06:07.000Z"),
        (datetime(2026, 3, 4, 0, 30, tzinfo=ZoneInfo("Europe/Oslo")), "2026-03-03T23:30:00.000Z"),
        (datetime(999, 12, 31, 23, 59, 59, 1000, tzinfo=UTC), "999-12-31T23:59:59.001Z"),
    ],
    ids=["milliseconds cut", "naive is UTC", "another zone", "before year 1000"],
)
def test_a_timestamp_is_utc_with_milliseconds_and_z(value: datetime, written: str) -> None:
    assert format_timestamp(value) == written
    assert format_timestamp(None) is None
