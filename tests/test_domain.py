"""evlink.domain's rules that are plain functions: run without a server."""

from __future__ import annotations

from typing import Any

import pytest

from evlink.domain import vehicle_name


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
