"""The Home Assistant test uses the MQTT tests' broker and settings."""

from tests.mqtt.conftest import broker, settings

__all__ = ["broker", "settings"]
