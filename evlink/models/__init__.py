"""Tortoise models of evlink, one module per concept; migrations in ``migrations/``."""

from evlink.models.commands import ChargingCommand, CommandState
from evlink.models.deliveries import WebhookDelivery
from evlink.models.mqtt import MqttLease, MqttUser
from evlink.models.sessions import ChargingSample, ChargingSession, UserTariff
from evlink.models.simulator import SimulatorAction, SimulatorCar
from evlink.models.users import ApiKey, Tier, User
from evlink.models.vehicles import ChargeState, Vehicle

__all__ = [
    "ApiKey",
    "ChargeState",
    "ChargingCommand",
    "ChargingSample",
    "ChargingSession",
    "CommandState",
    "MqttLease",
    "MqttUser",
    "SimulatorAction",
    "SimulatorCar",
    "Tier",
    "User",
    "UserTariff",
    "Vehicle",
    "WebhookDelivery",
]
