"""Vehicle providers: the :class:`Provider` protocol, the simulator and Enode."""

from __future__ import annotations

from evlink.providers.base import Provider
from evlink.providers.enode import EnodeProvider
from evlink.providers.simulator import Simulator
from evlink.providers.simulator_db import DatabaseCars
from evlink.settings import Settings

__all__ = ["Provider", "build_provider"]


def build_provider(settings: Settings) -> Provider:
    """The provider the settings name, ready to be started in the app's lifespan."""
    if settings.provider == "simulator":
        return Simulator(
            action_delay=settings.simulator_action_delay,
            tick=settings.simulator_tick,
            speed=settings.simulator_speed,
            # In the database: every instance and worker drives the same cars.
            store=DatabaseCars(),
        )
    return EnodeProvider.from_settings(settings)
