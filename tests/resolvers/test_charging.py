"""Charging control, end to end over REST and GraphQL: rules, retries, restarts, idempotency."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from evlink.models import ChargingCommand, CommandState, Tier, Vehicle
from evlink.providers.simulator import ManualClock, SimulatorFault
from evlink.resolvers import accounts
from evlink.settings import Settings
from tests.conftest import TIMEOUT, Server, finished_command, run_server

SET_CHARGING = """
mutation($id: ID!, $action: ChargingAction!, $key: String) {
  setCharging(vehicleId: $id, action: $action, idempotencyKey: $key) {
    id state attempts action failureReason providerActionId
  }
}
"""


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def rest_charge(
    server: Server,
    vehicle_id: object,
    key: str,
    action: Any = "START",
    *,
    idempotency_key: str | None = None,
    **kwargs: Any,
) -> Any:
    headers = auth(key)
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return await server.http.post(
        f"/api/charging/{vehicle_id}", json={"action": action}, headers=headers, **kwargs
    )


async def gql_charge(
    server: Server, vehicle_id: object, key: str, action: str = "START", idem: str | None = None
) -> dict[str, Any]:
    return await server.graphql(
        SET_CHARGING, {"id": str(vehicle_id), "action": action, "key": idem}, key=key
    )


async def settled(server: Server, command_id: str, timeout: float = TIMEOUT) -> ChargingCommand:
    """The command at its end state, awaited on the command's own events."""
    from evlink.resolvers.follow import wait_for_command

    command = await ChargingCommand.get(id=command_id)
    command = await asyncio.wait_for(
        wait_for_command(server.services, command, timeout), timeout + 1
    )
    assert command.state.is_final, f"still {command.state} after {timeout}s"
    return command


async def advance_until_final(
    server: Server, command_id: str, step: float = 2.0
) -> ChargingCommand:
    """Move the simulated clock one step at a time until the command ends (bounded)."""
    from evlink.events import command_topic

    async with server.services.events.subscribe(command_topic(command_id)) as messages:
        for _ in range(20):
            command = await ChargingCommand.get(id=command_id)
            if command.state.is_final:
                return command
            await server.clock.advance(step)
            await messages.get(timeout=TIMEOUT)
    command = await ChargingCommand.get(id=command_id)
    assert command.state.is_final, f"still {command.state}"
    return command


# -- the happy path -------------------------------------------------------------


async def test_rest_start_answers_as_documented_and_confirms(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")

    response = await rest_charge(server, vehicle.id, key)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "status",
        "vehicle_id",
        "enode_vehicle_id",
        "action",
        "enode_response",
        "command_id",
    }
    assert body["status"] == "success"
    assert body["vehicle_id"] == str(vehicle.id)
    assert body["enode_vehicle_id"] == vehicle.provider_vehicle_id
    assert body["action"] == "START"
    assert body["enode_response"]["state"] == "PENDING"
    assert body["enode_response"]["kind"] == "START"
    assert body["enode_response"]["targetId"] == vehicle.provider_vehicle_id
    command = await advance_until_final(server, body["command_id"])
    assert command.state == CommandState.CONFIRMED
    assert command.attempts == 1
    assert server.car(vehicle).is_charging


async def test_rest_wait_answers_with_the_end_state(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "charging")

    # The car acts at once; the watcher's next poll of the provider sees it.
    server.simulator.action_delay = timedelta(0)

    response = await rest_charge(server, vehicle.id, key, "STOP", params={"wait": "10"})

    assert response.status_code == 200
    assert response.json()["state"] == "CONFIRMED"
    status = (await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))).json()
    assert status["isCharging"] is False
    assert status["chargingState"] == "PLUGGED_IN:STOPPED"


async def test_rest_wait_that_runs_out_answers_pending(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")

    response = await rest_charge(server, vehicle.id, key, params={"wait": "0.2"})

    assert response.status_code == 200
    assert response.json()["state"] == "PENDING"


@pytest.mark.parametrize("wait", ["61", "-1", "soon"])
async def test_bad_wait_is_400(server: Server, wait: str) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    response = await rest_charge(server, vehicle.id, key, params={"wait": wait})
    assert response.status_code == 400
    assert response.json()["code"] == "BAD_REQUEST"


# -- every documented error, by its real cause, on both APIs ------------------------


async def _both(
    server: Server, vehicle_id: object, key: str, action: str = "START"
) -> tuple[int, str, str]:
    rest = await rest_charge(server, vehicle_id, key, action)
    graphql = await gql_charge(server, vehicle_id, key, action)
    assert graphql["data"] is None
    return rest.status_code, rest.json()["code"], graphql["errors"][0]["extensions"]["code"]


async def test_error_codes_on_rest_and_graphql(server: Server) -> None:
    pro, pro_key = await server.user(tier=Tier.PRO)
    basic, basic_key = await server.user(tier=Tier.BASIC)
    other, _ = await server.user()
    cases: list[tuple[str, object, str, str, int, str]] = []

    cases.append(
        (
            "no such vehicle",
            "00000000-0000-0000-0000-000000000000",
            pro_key,
            "START",
            404,
            "NOT_FOUND",
        )
    )
    cases.append(("malformed id", "abc", pro_key, "START", 404, "NOT_FOUND"))
    cases.append(
        (
            "another's car",
            (await server.vehicle(other)).id,
            pro_key,
            "START",
            403,
            "FORBIDDEN_OWNER",
        )
    )
    cases.append(
        ("not Pro", (await server.vehicle(basic)).id, basic_key, "START", 403, "FORBIDDEN_TIER")
    )
    unlinked = await accounts.add_vehicle(pro, provider="simulator", provider_vehicle_id=None)
    cases.append(("no provider id", unlinked.id, pro_key, "START", 500, "PROVIDER_LINK_MISSING"))
    cases.append(
        (
            "unplugged",
            (await server.vehicle(pro, "unplugged")).id,
            pro_key,
            "START",
            400,
            "INVALID_VEHICLE_STATE",
        )
    )
    cases.append(
        (
            "already charging",
            (await server.vehicle(pro, "charging")).id,
            pro_key,
            "START",
            400,
            "INVALID_VEHICLE_STATE",
        )
    )
    cases.append(
        (
            "stop when not charging",
            (await server.vehicle(pro, "plugged")).id,
            pro_key,
            "STOP",
            400,
            "INVALID_VEHICLE_STATE",
        )
    )
    smart = await server.vehicle(pro, "plugged", smart_charging=True)
    cases.append(("smart charging", smart.id, pro_key, "START", 422, "SMART_CHARGING_ACTIVE"))

    for name, vehicle_id, key, action, status, code in cases:
        rest_status, rest_code, gql_code = await _both(server, vehicle_id, key, action)
        assert (rest_status, rest_code) == (status, code), name
        assert gql_code == code, name
    assert not await ChargingCommand.filter(state=CommandState.PENDING).exists()


async def test_not_capable_is_400(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))
    capabilities = dict(vehicle.capabilities or {})
    # The provider reports the car cannot be started remotely.
    from evlink.models import Vehicle

    stored = await Vehicle.get(id=vehicle.id)
    capabilities = dict(stored.capabilities)
    capabilities["startCharging"] = {"isCapable": False, "interventionIds": []}
    await Vehicle.filter(id=vehicle.id).update(capabilities=capabilities)

    rest = await rest_charge(server, vehicle.id, key)
    assert rest.status_code == 400
    assert rest.json()["code"] == "INVALID_VEHICLE_STATE"


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'{"action": "FLY"}', b'{"action": 1}', b"{}"],
)
async def test_bad_body_is_400(server: Server, body: bytes) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    response = await server.http.post(
        f"/api/charging/{vehicle.id}", content=body, headers=auth(key)
    )
    assert response.status_code == 400
    assert response.json()["code"] == "BAD_REQUEST"


async def test_ha_charging_path_is_the_same(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    response = await server.http.post(
        f"/api/ha/charging/{vehicle.id}", json={"action": "start"}, headers=auth(key)
    )
    assert response.status_code == 200
    assert response.json()["action"] == "START"


async def test_no_key_is_401(server: Server) -> None:
    user, _ = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    response = await server.http.post(f"/api/charging/{vehicle.id}", json={"action": "START"})
    assert response.status_code == 401
    assert response.json()["code"] == "UNAUTHENTICATED"


# -- confirmation: retries, failures, timeouts ------------------------------------


async def test_first_attempt_fails_then_resent_and_confirmed(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged", fault=SimulatorFault.FAILS_FIRST_ATTEMPT)

    created = (await gql_charge(server, vehicle.id, key))["data"]["setCharging"]
    command = await advance_until_final(server, created["id"])

    assert command.state == CommandState.CONFIRMED
    assert command.attempts == 2
    sends = [c for c in server.simulator.calls if c.startswith("set_charging")]
    assert len(sends) == 2


async def test_action_that_always_fails_ends_failed_with_the_reason(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged", fault=SimulatorFault.ACTION_FAILS)

    created = (await gql_charge(server, vehicle.id, key))["data"]["setCharging"]
    command = await advance_until_final(server, created["id"])

    assert command.state == CommandState.FAILED
    assert command.attempts == server.settings.charging_max_attempts
    assert command.failure_reason is not None
    assert "NO_RESPONSE" in command.failure_reason


async def test_car_that_never_changes_ends_timed_out(make_settings: Any) -> None:
    settings: Settings = make_settings(charging_deadline=1.0)
    from tests.conftest import _truncate

    await _truncate(settings.database_url)
    async with run_server(settings) as server:
        user, key = await server.user()
        vehicle = await server.vehicle(user, "plugged", fault=SimulatorFault.IGNORES_ACTION)
        created = (await gql_charge(server, vehicle.id, key))["data"]["setCharging"]
        await server.clock.advance(2)  # the action is CONFIRMED, the car stays stopped

        command = await settled(server, created["id"])

        assert command.state == CommandState.TIMED_OUT
        assert command.attempts >= 2  # re-sent after the lapse, counted
        assert command.attempts <= settings.charging_max_attempts


# -- one live command per vehicle, idempotency ---------------------------------------


async def test_same_action_while_pending_returns_the_pending_command(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")

    first = (await gql_charge(server, vehicle.id, key))["data"]["setCharging"]
    second = (await gql_charge(server, vehicle.id, key))["data"]["setCharging"]

    assert second["id"] == first["id"]
    assert [c for c in server.simulator.calls if c.startswith("set_charging")] == [
        f"set_charging {vehicle.provider_vehicle_id} START"
    ]


async def test_other_action_supersedes_the_pending_command(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")

    start = (await gql_charge(server, vehicle.id, key, "START"))["data"]["setCharging"]
    stop = (await gql_charge(server, vehicle.id, key, "STOP"))["data"]["setCharging"]

    assert stop["id"] != start["id"]
    cancelled = await ChargingCommand.get(id=start["id"])
    assert cancelled.state == CommandState.CANCELLED
    assert cancelled.failure_reason == "superseded"
    final = await advance_until_final(server, stop["id"])
    assert final.state == CommandState.CONFIRMED
    assert not server.car(vehicle).is_charging


async def test_idempotency_key_returns_the_first_command_without_a_second_call(
    server: Server,
) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")

    first = (await gql_charge(server, vehicle.id, key, idem="k-1"))["data"]["setCharging"]
    await advance_until_final(server, first["id"])  # now charging: a new START would be a 400
    again = (await gql_charge(server, vehicle.id, key, idem="k-1"))["data"]["setCharging"]
    rest = await rest_charge(server, vehicle.id, key, idempotency_key="k-1")

    assert again["id"] == first["id"]
    assert again["state"] == "CONFIRMED"
    assert rest.status_code == 200
    assert rest.json()["command_id"] == first["id"]
    assert len([c for c in server.simulator.calls if c.startswith("set_charging")]) == 1


async def test_idempotency_key_with_other_arguments_is_422(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    other = await server.vehicle(user, "plugged")
    await gql_charge(server, vehicle.id, key, idem="k-2")

    reused = await gql_charge(server, other.id, key, idem="k-2")
    rest = await server.http.post(
        f"/api/charging/{vehicle.id}",
        json={"action": "STOP"},
        headers={**auth(key), "Idempotency-Key": "k-2"},
    )

    assert reused["errors"][0]["extensions"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert rest.status_code == 422
    assert rest.json()["code"] == "IDEMPOTENCY_KEY_REUSED"


async def test_commands_are_listed_on_the_vehicle(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    created = (await gql_charge(server, vehicle.id, key))["data"]["setCharging"]

    listed = await server.graphql(
        "query($id: ID!) { vehicle(id: $id) { chargingCommands(last: 5) { id state action } } }",
        {"id": str(vehicle.id)},
        key=key,
    )

    assert listed["data"]["vehicle"]["chargingCommands"] == [
        {"id": created["id"], "state": "PENDING", "action": "START"}
    ]


async def test_a_command_is_found_only_on_the_callers_live_vehicles(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    command = await finished_command(vehicle, user)
    query = "query($id: ID!) { chargingCommand(id: $id) { id state } }"

    found = await server.graphql(query, {"id": str(command.id)}, key=key)
    # the provider dropped the car
    await Vehicle.filter(id=vehicle.id).update(deleted_at=command.completed_at)
    gone = await server.graphql(query, {"id": str(command.id)}, key=key)

    assert found["data"] == {"chargingCommand": {"id": str(command.id), "state": "CONFIRMED"}}
    assert gone["data"] is None
    assert gone["errors"][0]["message"] == "Command not found"
    assert gone["errors"][0]["extensions"]["code"] == "NOT_FOUND"


# -- restarts ---------------------------------------------------------------------------


async def test_restart_mid_command_resumes_and_confirms_without_resending(
    settings: Settings,
) -> None:
    from tests.conftest import _truncate

    await _truncate(settings.database_url)
    clock = ManualClock()
    async with run_server(settings, clock=clock) as first:
        simulator = first.simulator
        user, key = await first.user()
        vehicle = await first.vehicle(user, "plugged")
        created = (await gql_charge(first, vehicle.id, key))["data"]["setCharging"]
        assert created["state"] == "PENDING"
    # The app is gone mid-command; a new one starts over the same database and car.
    async with run_server(settings, clock=clock, simulator=simulator) as second:
        assert second.services.watcher is not None
        assert {str(c) for c in second.services.watcher.following} == {created["id"]}
        command = await advance_until_final(second, created["id"])

    assert command.state == CommandState.CONFIRMED
    assert command.attempts == 1
    sends = [c for c in simulator.calls if c.startswith("set_charging")]
    assert len(sends) == 1


async def test_the_database_refuses_a_second_pending_command_for_a_vehicle(
    server: Server,
) -> None:
    from datetime import UTC, datetime

    from tortoise.exceptions import IntegrityError

    from evlink.domain import ChargingAction

    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    created = (await gql_charge(server, vehicle.id, key))["data"]["setCharging"]

    # What a second instance racing this one would try: it loses at the database.
    with pytest.raises(IntegrityError):
        await ChargingCommand.create(
            vehicle=vehicle,
            user=user,
            action=ChargingAction.START,
            deadline_at=datetime.now(UTC) + timedelta(minutes=5),
        )
    again = (await gql_charge(server, vehicle.id, key))["data"]["setCharging"]
    assert again["id"] == created["id"]
