"""Whose check answers a charging request: evlink's own, or the provider's.

The simulator and Enode refuse an unplugged car or one under smart charging too,
so against them a test cannot tell whether evlink checked. Here the fake Enode
checks nothing (``FakeEnode.checks_rules = False``): every refusal the client
gets is evlink's, and evlink must refuse before it stores a command, sends an
action or spends a command quota. Then the other way round: evlink's view of the
car passes its checks, the provider refuses, and the command ends FAILED (on the
first send and on a re-send by the watcher). Last, a PENDING command reused by a
request with an idempotency key keeps that key for the retries.
"""

from __future__ import annotations

from typing import Any

from evlink.models import ChargingCommand, CommandState, Vehicle
from evlink.resolvers.follow import wait_for_command
from evlink.settings import Settings
from tests.conftest import TIMEOUT, EnodeWorld, Server, run_enode_world
from tests.resolvers.test_charging import advance_until_final, rest_charge

PROVIDER_REFUSED = "The provider refused: the vehicle cannot do this now"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def charge(enode: EnodeWorld, key: str, vehicle: Vehicle, action: str) -> Any:
    return await enode.server.http.post(
        f"/api/charging/{vehicle.id}", json={"action": action}, headers=auth(key)
    )


async def unseen(vehicle: Vehicle) -> None:
    """evlink has not read the car since the fake changed it: the request reads it."""
    await Vehicle.filter(id=vehicle.id).update(refreshed_at=None)


def actions_sent(enode: EnodeWorld) -> list[str]:
    return [
        path for method, path in enode.fake.requests if method == "POST" and "/charging" in path
    ]


async def test_evlinks_own_checks_refuse_before_storing_sending_or_spending(
    settings: Settings,
) -> None:
    async with run_enode_world(settings, command_quotas="pro=1/day") as enode:
        enode.fake.checks_rules = False
        user, key = await enode.linked_user()
        unplugged = await enode.vehicle(user, isPluggedIn=False)
        charging = await enode.vehicle(user, isCharging=True)
        idle = await enode.vehicle(user, isPluggedIn=True)
        smart = await enode.vehicle(user, isPluggedIn=True)
        enode.fake.set_smart_charging(smart.provider_vehicle_id or "", True)
        await unseen(smart)
        incapable = await enode.vehicle(user, isPluggedIn=True)
        capabilities = enode.fake.vehicles[incapable.provider_vehicle_id or ""]["capabilities"]
        capabilities["startCharging"]["isCapable"] = False
        await unseen(incapable)
        cases = [
            (unplugged, "START", 400, "INVALID_VEHICLE_STATE", "The vehicle is not plugged in"),
            (charging, "START", 400, "INVALID_VEHICLE_STATE", "The vehicle is already charging"),
            (idle, "STOP", 400, "INVALID_VEHICLE_STATE", "The vehicle is not charging"),
            (smart, "START", 422, "SMART_CHARGING_ACTIVE", None),
            (
                incapable,
                "START",
                400,
                "INVALID_VEHICLE_STATE",
                "The vehicle is not capable of startCharging",
            ),
        ]

        for vehicle, action, status, code, detail in cases:
            refused = await charge(enode, key, vehicle, action)
            assert refused.status_code == status, (action, refused.text)
            assert refused.json()["code"] == code
            if detail is not None:
                assert refused.json()["detail"] == detail

        assert await ChargingCommand.all().count() == 0  # no FAILED command stored
        assert actions_sent(enode) == []
        # The one command of the day's quota is still there to spend.
        sent = await charge(enode, key, idle, "START")
        assert sent.status_code == 200, sent.text
        assert len(actions_sent(enode)) == 1
        assert (await charge(enode, key, charging, "STOP")).status_code == 429


async def test_a_provider_refusal_ends_the_command_failed_and_reaches_the_client(
    enode: EnodeWorld,
) -> None:
    user, key = await enode.linked_user()
    unplugged = await enode.vehicle(user, isPluggedIn=True)
    smart = await enode.vehicle(user, isPluggedIn=True)
    # The cars change at the provider; evlink's stored view (younger than the
    # charging fresh age) still passes its own checks, so the provider answers.
    enode.fake.update_vehicle(
        unplugged.provider_vehicle_id or "", isPluggedIn=False, powerDeliveryState="UNPLUGGED"
    )
    enode.fake.set_smart_charging(smart.provider_vehicle_id or "", True)

    for vehicle, status, code, reason in [
        (unplugged, 400, "INVALID_VEHICLE_STATE", PROVIDER_REFUSED),
        (smart, 422, "SMART_CHARGING_ACTIVE", None),
    ]:
        refused = await charge(enode, key, vehicle, "START")
        assert refused.status_code == status, refused.text
        assert refused.json()["code"] == code
        (command,) = await ChargingCommand.filter(vehicle_id=vehicle.id)
        assert (command.state, command.attempts) == (CommandState.FAILED, 1)
        assert command.failure_reason == (reason or refused.json()["detail"])
        assert command.completed_at is not None
    assert len(actions_sent(enode)) == 2


async def test_a_provider_refusal_of_a_resend_ends_the_command_failed(
    enode: EnodeWorld,
) -> None:
    user, key = await enode.linked_user()
    vehicle = await enode.vehicle(user, isPluggedIn=True)
    # The first send meets an outage (the command stays PENDING for the watcher);
    # meanwhile the car is unplugged, so the provider refuses the re-send.
    enode.fake.fail_next(1, status=503)
    enode.fake.update_vehicle(
        vehicle.provider_vehicle_id or "", isPluggedIn=False, powerDeliveryState="UNPLUGGED"
    )

    answer = await charge(enode, key, vehicle, "START")
    assert answer.status_code == 200, answer.text

    command = await ChargingCommand.get(id=answer.json()["command_id"])
    command = await wait_for_command(enode.server.services, command, TIMEOUT)
    assert command.state == CommandState.FAILED
    assert command.attempts == 2
    assert command.failure_reason == PROVIDER_REFUSED
    assert len(actions_sent(enode)) == 2


async def test_a_key_sent_again_for_a_pending_command_finds_it_after_it_ended(
    server: Server,
) -> None:
    """A PENDING command reused by a request with an idempotency key takes that key, so
    a retry under the key after the command ended answers with it, not a new one."""
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    first = await rest_charge(server, vehicle.id, key)  # no key
    again = await rest_charge(server, vehicle.id, key, idempotency_key="retry-1")
    command_id = first.json()["command_id"]
    assert again.json()["command_id"] == command_id

    ended = await advance_until_final(server, command_id)
    assert ended.state == CommandState.CONFIRMED
    retry = await rest_charge(server, vehicle.id, key, idempotency_key="retry-1")
    assert retry.status_code == 200, retry.text
    assert retry.json()["command_id"] == command_id
    assert await ChargingCommand.filter(vehicle_id=vehicle.id).count() == 1
