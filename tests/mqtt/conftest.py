"""MQTT tests: each test's own Mosquitto, and evlink's settings pointing at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from evlink.settings import Settings
from tests.conftest import _test_settings
from tests.mqtt.broker import Mosquitto, mosquitto


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    async with mosquitto(tmp_path) as running:
        yield running


@pytest.fixture
def settings(database_url: str, broker: Mosquitto) -> Settings:
    # A short cache ttl: the publisher scans for enabled users this often.
    return replace(_test_settings(database_url), mqtt_url=broker.url(), cache_ttl=0.2)
