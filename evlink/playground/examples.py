"""The example operations the playground opens with, one GraphiQL tab each.

A test validates every example against the schema as served, so that they
change with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["EXAMPLES", "Example"]

VEHICLE_ID_HINT = "a vehicle id from the Vehicles tab"
COMMAND_ID_HINT = "a command id from the StartCharging tab"


@dataclass(frozen=True, slots=True)
class Example:
    """One tab: an operation (GraphiQL names the tab after it) and its variables."""

    query: str
    variables: dict[str, str] | None = None

    def tab(self) -> dict[str, str]:
        """The tab as GraphiQL's ``defaultTabs`` takes it."""
        tab = {"query": self.query}
        if self.variables is not None:
            tab["variables"] = json.dumps(self.variables, indent=2)
        return tab


EXAMPLES: tuple[Example, ...] = (
    Example(
        """\
# The evlink GraphQL playground.
#
# 1. Paste your API key into the field above.
#    `evlink serve` prints one on its first
#    start; `evlink demo` makes another.
# 2. Run this query with the play button
#    (or Ctrl-Enter).
# 3. The other tabs start charging and follow
#    it over a websocket.
# Docs (top left) lists every type and field.
query Vehicles {
  viewer {
    email
    tier
  }
  vehicles {
    id
    name
    chargeState {
      batteryLevel
      range
      isPluggedIn
      isCharging
      powerDeliveryState
      chargeTimeRemaining
      lastUpdated
    }
  }
}
"""
    ),
    Example(
        """\
# Start or stop charging (PRO tier). Put a
# vehicle id into the variables below. The
# answer comes at once, as PENDING: follow it
# in the FollowChargingCommand tab until it
# is CONFIRMED, FAILED, CANCELLED or TIMED_OUT.
mutation StartCharging($vehicleId: ID!, $action: ChargingAction!) {
  setCharging(vehicleId: $vehicleId, action: $action) {
    id
    action
    state
    attempts
    createdAt
  }
}
""",
        {"vehicleId": VEHICLE_ID_HINT, "action": "START"},
    ),
    Example(
        """\
# A subscription over the websocket: the
# charge state now, then each change. The
# stop button ends it.
subscription WatchChargeState($vehicleId: ID!) {
  chargeState(vehicleId: $vehicleId) {
    batteryLevel
    range
    isPluggedIn
    isCharging
    powerDeliveryState
    chargeRate
    lastUpdated
  }
}
""",
        {"vehicleId": VEHICLE_ID_HINT},
    ),
    Example(
        """\
# The command now, then each change; the
# subscription completes once the command
# has ended.
subscription FollowChargingCommand($id: ID!) {
  chargingCommand(id: $id) {
    id
    action
    state
    attempts
    failureReason
    completedAt
  }
}
""",
        {"id": COMMAND_ID_HINT},
    ),
)
