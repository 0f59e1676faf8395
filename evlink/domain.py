"""evlink's own vocabulary: the provider-neutral data every layer speaks.

A vehicle's charge state, a vehicle, a charge action, and the START/STOP action,
shaped like Enode's (the REST contract follows Enode), with the timestamp format of
the REST contract. Providers produce these types, use cases keep and decide on them,
and the GraphQL and REST adapters render them; this module imports nothing of
evlink's, so every layer may import it and it depends on none. Enum values that
evlink does not know (a new ``powerDeliveryState``, a new vendor) are kept as plain
strings and pass through.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "CAPABILITY_NAMES",
    "CHARGING",
    "UNPLUGGED",
    "ActionState",
    "ChargeAction",
    "ChargeStateData",
    "ChargingAction",
    "ProviderUpdate",
    "VehicleData",
    "format_timestamp",
    "parse_timestamp",
    "vehicle_name",
]


class ChargingAction(StrEnum):
    START = "START"
    STOP = "STOP"


class ActionState(StrEnum):
    """States of a provider's charge action (Enode's ChargeAction.state)."""

    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


CHARGING = "PLUGGED_IN:CHARGING"
UNPLUGGED = "UNPLUGGED"

CAPABILITY_NAMES = (
    "information",
    "chargeState",
    "location",
    "odometer",
    "setMaxCurrent",
    "startCharging",
    "stopCharging",
    "smartCharging",
)


def parse_timestamp(value: object) -> datetime | None:
    """An ISO 8601 timestamp from a provider, as an aware UTC datetime."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: an offset past year 1 or 9999
        return None


def format_timestamp(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with milliseconds and ``Z``, as the REST contract shows."""
    if value is None:
        return None
    utc = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if utc.year >= 1000:  # the same text, made without strftime (half the time)
        return utc.isoformat(timespec="milliseconds")[:-6] + "Z"  # "...+00:00"
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def vehicle_name(name: str | None, information: Mapping[str, Any] | None) -> str | None:
    """A vehicle's name as shown: the one given in evlink, else the provider's
    ``displayName``, else its brand and model."""
    if name:
        return name
    info = information or {}
    if info.get("displayName"):
        return str(info["displayName"])
    brand_model = " ".join(str(info[k]) for k in ("brand", "model") if info.get(k))
    return brand_model or None


@dataclass(frozen=True, slots=True)
class ChargeStateData:
    """A vehicle's charge state as a provider reports it; most fields may be unknown."""

    power_delivery_state: str = "UNKNOWN"
    battery_level: int | None = None
    range: float | None = None
    is_plugged_in: bool | None = None
    is_charging: bool | None = None
    is_fully_charged: bool | None = None
    battery_capacity: float | None = None
    charge_limit: int | None = None
    charge_rate: float | None = None
    charge_time_remaining: int | None = None
    max_current: float | None = None
    plugged_in_charger_id: str | None = None
    last_updated: datetime | None = None

    @classmethod
    def from_enode(cls, raw: Mapping[str, Any]) -> ChargeStateData:
        return cls(
            power_delivery_state=str(raw.get("powerDeliveryState") or "UNKNOWN"),
            battery_level=_int(raw.get("batteryLevel")),
            range=_float(raw.get("range")),
            is_plugged_in=_bool(raw.get("isPluggedIn")),
            is_charging=_bool(raw.get("isCharging")),
            is_fully_charged=_bool(raw.get("isFullyCharged")),
            battery_capacity=_float(raw.get("batteryCapacity")),
            charge_limit=_int(raw.get("chargeLimit")),
            charge_rate=_float(raw.get("chargeRate")),
            charge_time_remaining=_int(raw.get("chargeTimeRemaining")),
            max_current=_float(raw.get("maxCurrent")),
            plugged_in_charger_id=_str(raw.get("pluggedInChargerId")),
            last_updated=parse_timestamp(raw.get("lastUpdated")),
        )

    def to_enode(self) -> dict[str, Any]:
        """The charge state as Enode shapes it (JSON-ready; also carried by events)."""
        return {
            "batteryLevel": self.battery_level,
            "range": self.range,
            "isPluggedIn": self.is_plugged_in,
            "isCharging": self.is_charging,
            "isFullyCharged": self.is_fully_charged,
            "batteryCapacity": self.battery_capacity,
            "chargeLimit": self.charge_limit,
            "chargeRate": self.charge_rate,
            "chargeTimeRemaining": self.charge_time_remaining,
            "lastUpdated": format_timestamp(self.last_updated),
            "maxCurrent": self.max_current,
            "powerDeliveryState": self.power_delivery_state,
            "pluggedInChargerId": self.plugged_in_charger_id,
        }


@dataclass(frozen=True, slots=True)
class VehicleData:
    """A vehicle as a provider reports it. Nested blocks keep Enode's camelCase JSON."""

    id: str
    user_id: str | None = None
    vendor: str | None = None
    last_seen: datetime | None = None
    is_reachable: bool | None = None
    information: dict[str, Any] = field(default_factory=dict)
    charge_state: ChargeStateData = field(default_factory=ChargeStateData)
    smart_charging_policy: dict[str, Any] = field(default_factory=dict)
    location: dict[str, Any] | None = None
    odometer: dict[str, Any] | None = None
    capabilities: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_enode(cls, raw: Mapping[str, Any]) -> VehicleData:
        return cls(
            id=str(raw["id"]),
            user_id=_str(raw.get("userId")),
            vendor=_str(raw.get("vendor")),
            last_seen=parse_timestamp(raw.get("lastSeen")),
            is_reachable=_bool(raw.get("isReachable")),
            information=dict(raw.get("information") or {}),
            charge_state=ChargeStateData.from_enode(raw.get("chargeState") or {}),
            smart_charging_policy=dict(raw.get("smartChargingPolicy") or {}),
            location=dict(raw["location"]) if raw.get("location") else None,
            odometer=dict(raw["odometer"]) if raw.get("odometer") else None,
            capabilities=dict(raw.get("capabilities") or {}),
        )

    def is_capable(self, capability: str) -> bool:
        block = self.capabilities.get(capability)
        return isinstance(block, Mapping) and block.get("isCapable") is True


@dataclass(frozen=True, slots=True)
class ChargeAction:
    """A provider's charging action (Enode's ChargeAction); ``state`` is an open enum."""

    id: str
    target_id: str
    kind: str
    state: str
    user_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    completed_at: datetime | None = None
    failure_reason: dict[str, Any] | None = None

    @classmethod
    def from_enode(cls, raw: Mapping[str, Any]) -> ChargeAction:
        failure = raw.get("failureReason")
        return cls(
            id=str(raw["id"]),
            target_id=str(raw.get("targetId") or ""),
            kind=str(raw.get("kind") or ""),
            state=str(raw.get("state") or "PENDING"),
            user_id=_str(raw.get("userId")),
            created_at=parse_timestamp(raw.get("createdAt")),
            updated_at=parse_timestamp(raw.get("updatedAt")),
            completed_at=parse_timestamp(raw.get("completedAt")),
            failure_reason=dict(failure) if isinstance(failure, Mapping) else None,
        )

    def to_enode(self) -> dict[str, Any]:
        """The action as Enode shapes it: the REST contract's ``enode_response``."""
        return {
            "id": self.id,
            "userId": self.user_id,
            "createdAt": format_timestamp(self.created_at),
            "updatedAt": format_timestamp(self.updated_at),
            "completedAt": format_timestamp(self.completed_at),
            "state": self.state,
            "targetId": self.target_id,
            "targetType": "vehicle",
            "kind": self.kind,
            "failureReason": self.failure_reason,
        }

    @property
    def is_resolved(self) -> bool:
        return self.state != ActionState.PENDING


ProviderUpdate = VehicleData | ChargeAction
"""What a provider pushes: a vehicle's new data or a charge action's new state."""


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: object) -> int | None:
    """An integer field of the REST contract and GraphQL's ``Int`` (batteryLevel,
    chargeLimit, chargeTimeRemaining): Enode's numbers may be fractional (63.5), and
    are rounded, halves to even, so that clients keep the types the contract gives."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return round(value)
