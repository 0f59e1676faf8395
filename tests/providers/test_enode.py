"""The Enode provider against a fake Enode over real HTTP: the charging flow and every fault."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from evlink.domain import ChargingAction
from evlink.errors import ProviderUnavailable
from evlink.models import ChargingCommand, CommandState, Vehicle
from evlink.providers.enode import EnodeProvider
from evlink.resolvers.follow import wait_for_command
from evlink.settings import Settings
from tests.conftest import TIMEOUT, EnodeWorld, free_port, run_enode_world
from tests.fakes.enode import FakeEnode


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def start_charging(enode: EnodeWorld, key: str, vehicle: Vehicle) -> dict[str, Any]:
    response = await enode.server.http.post(
        f"/api/charging/{vehicle.id}", json={"action": "START"}, headers=auth(key)
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def settle(enode: EnodeWorld, command_id: str) -> ChargingCommand:
    command = await ChargingCommand.get(id=command_id)
    return await wait_for_command(enode.server.services, command, TIMEOUT)


# -- the charging flow, unchanged from the simulator's -------------------------------


async def test_start_confirmed_by_webhook(enode: EnodeWorld) -> None:
    user, key = await enode.linked_user()
    vehicle = await enode.vehicle(user, isPluggedIn=True, powerDeliveryState="PLUGGED_IN:STOPPED")

    answer = await start_charging(enode, key, vehicle)
    assert answer["enode_vehicle_id"] == vehicle.provider_vehicle_id
    assert answer["enode_response"]["state"] == "PENDING"
    assert answer["enode_response"]["targetType"] == "vehicle"
    await enode.fake.resolve_action_and_notify(answer["enode_response"]["id"])

    command = await settle(enode, answer["command_id"])
    assert command.state == CommandState.CONFIRMED
    status = (await enode.server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))).json()
    assert status["isCharging"] is True
    assert status["chargingState"] == "PLUGGED_IN:CHARGING"


async def test_start_confirmed_by_polling_when_webhooks_are_off(enode: EnodeWorld) -> None:
    enode.fake.webhooks_enabled = False
    user, key = await enode.linked_user()
    vehicle = await enode.vehicle(user, isPluggedIn=True, powerDeliveryState="PLUGGED_IN:STOPPED")

    answer = await start_charging(enode, key, vehicle)
    enode.fake.resolve_action(answer["enode_response"]["id"])

    command = await settle(enode, answer["command_id"])
    assert command.state == CommandState.CONFIRMED
    # Confirmed by asking Enode after the command: the vehicle's state, or the action's.
    sent = enode.fake.requests.index(("POST", f"/vehicles/{vehicle.provider_vehicle_id}/charging"))
    asked = {
        ("GET", f"/vehicles/{vehicle.provider_vehicle_id}"),
        ("GET", f"/vehicles/actions/{answer['enode_response']['id']}"),
    }
    assert asked & set(enode.fake.requests[sent + 1 :])


async def test_provider_refusals_map_to_the_documented_codes(enode: EnodeWorld) -> None:
    user, key = await enode.linked_user()
    smart = await enode.vehicle(user, isPluggedIn=True, powerDeliveryState="PLUGGED_IN:STOPPED")
    enode.fake.set_smart_charging(smart.provider_vehicle_id or "", True)
    await Vehicle.filter(id=smart.id).update(refreshed_at=None)  # evlink has not seen it yet

    refused = await start_charging_raw(enode, key, smart)

    assert refused.status_code == 422
    assert refused.json()["code"] == "SMART_CHARGING_ACTIVE"


async def start_charging_raw(enode: EnodeWorld, key: str, vehicle: Vehicle) -> Any:
    return await enode.server.http.post(
        f"/api/charging/{vehicle.id}", json={"action": "START"}, headers=auth(key)
    )


async def test_action_that_never_confirms_times_out(settings: Settings) -> None:
    async with run_enode_world(settings, charging_deadline=0.5) as enode:
        enode.fake.never_confirm = True
        user, key = await enode.linked_user()
        vehicle = await enode.vehicle(
            user, isPluggedIn=True, powerDeliveryState="PLUGGED_IN:STOPPED"
        )
        answer = await start_charging(enode, key, vehicle)

        command = await settle(enode, answer["command_id"])

        assert command.state == CommandState.TIMED_OUT
        # The pending action was cancelled at Enode when evlink gave up.
        assert enode.fake.actions[answer["enode_response"]["id"]]["state"] == "CANCELLED"


# -- faults: the client's answer, and recovery ---------------------------------------


async def test_5xx_burst_on_a_read_is_retried(enode: EnodeWorld) -> None:
    user, key = await enode.linked_user()
    vehicle = await enode.vehicle(user, isPluggedIn=True)
    await Vehicle.filter(id=vehicle.id).update(refreshed_at=None)
    enode.fake.fail_next(2, status=500)

    response = await enode.server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))

    assert response.status_code == 200
    assert response.json()["isPluggedIn"] is True


async def test_long_429_is_passed_on_with_retry_after(enode: EnodeWorld) -> None:
    user, key = await enode.linked_user()
    raw = enode.fake.add_vehicle(user.enode_user_id or "", isPluggedIn=True)
    # Never read before: there is no stored state to fall back on.
    vehicle = await Vehicle.create(user=user, provider="enode", provider_vehicle_id=raw["id"])
    enode.fake.fail_next(1, status=429, retry_after=120)

    limited = await enode.server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))
    calls = len(enode.fake.requests)
    again = await enode.server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))

    for response in (limited, again):
        assert response.status_code == 503
        assert response.json()["code"] == "PROVIDER_UNAVAILABLE"
        assert 100 <= int(response.headers["retry-after"]) <= 120
    assert len(enode.fake.requests) == calls  # honoured: Enode was left alone


async def test_hanging_provider_is_a_504_and_stale_state_is_served(settings: Settings) -> None:
    async with run_enode_world(settings, enode_timeout=0.3, enode_retries=1) as enode:
        user, key = await enode.linked_user()
        vehicle = await enode.vehicle(user, isPluggedIn=True)
        raw = enode.fake.add_vehicle(user.enode_user_id or "", isPluggedIn=False)
        fresh = await Vehicle.create(user=user, provider="enode", provider_vehicle_id=raw["id"])
        await Vehicle.filter(id=vehicle.id).update(refreshed_at=None)

        enode.fake.hang_next(2)
        stale = await enode.server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))
        timed_out = await enode.server.http.get(f"/api/status/{fresh.id}", headers=auth(key))
        enode.fake.release_hanging()
        recovered = await enode.server.http.get(f"/api/status/{fresh.id}", headers=auth(key))

    assert stale.status_code == 200  # stale but true
    assert stale.json()["isPluggedIn"] is True
    assert timed_out.status_code == 504
    assert timed_out.json()["code"] == "PROVIDER_UNAVAILABLE"
    assert recovered.status_code == 200


async def test_expired_token_is_renewed_once_for_many_concurrent_reads(enode: EnodeWorld) -> None:
    user, key = await enode.linked_user()
    vehicles = [await enode.vehicle(user, isPluggedIn=True) for _ in range(20)]
    await Vehicle.filter(user=user).update(refreshed_at=None)
    enode.fake.expire_tokens()
    tokens_before = enode.fake.token_requests

    responses = await asyncio.gather(
        *(
            enode.server.http.get(f"/api/status/{vehicles[i % 20].id}", headers=auth(key))
            for i in range(100)
        )
    )

    assert [r.status_code for r in responses] == [200] * 100
    assert enode.fake.token_requests == tokens_before + 1


# -- the client on its own: pagination, breaker, unknown values ------------------------


class ManualMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake_url() -> Any:
    fake = FakeEnode()
    async with fake.serve() as url:
        yield fake, url


def client(url: str, **kwargs: Any) -> EnodeProvider:
    return EnodeProvider(
        client_id="client-id",
        client_secret="client-secret",
        api_url=url,
        oauth_url=url,
        retry_backoff=0.01,
        **kwargs,
    )


async def test_list_vehicles_follows_every_page(fake_url: Any) -> None:
    fake, url = fake_url
    ids = {fake.add_vehicle("user-7")["id"] for _ in range(120)}
    fake.add_vehicle("someone-else")
    provider = client(url)
    try:
        listed = await provider.list_vehicles("user-7")
    finally:
        await provider.aclose()
    assert {v.id for v in listed} == ids
    assert sum(1 for m, p in fake.requests if p == "/users/user-7/vehicles") == 3


async def test_circuit_opens_after_repeated_failures_then_recovers(fake_url: Any) -> None:
    fake, url = fake_url
    vehicle_id = fake.add_vehicle("user-1")["id"]
    clock = ManualMonotonic()
    provider = client(url, retries=1, breaker_threshold=3, breaker_cooldown=30, clock=clock)
    try:
        fake.fail_next(3, status=502)
        for _ in range(3):
            with pytest.raises(ProviderUnavailable) as failed:
                await provider.get_vehicle(vehicle_id)
            assert failed.value.status == 502
        calls = len(fake.requests)
        with pytest.raises(ProviderUnavailable) as open_circuit:
            await provider.get_vehicle(vehicle_id)
        assert open_circuit.value.status == 503
        assert open_circuit.value.retry_after == pytest.approx(30)
        assert len(fake.requests) == calls  # Enode was not called while open

        clock.now += 31
        recovered = await provider.get_vehicle(vehicle_id)
        assert recovered.id == vehicle_id
    finally:
        await provider.aclose()


async def test_retry_after_holds_every_call_until_it_has_passed(fake_url: Any) -> None:
    fake, url = fake_url
    vehicle_id = fake.add_vehicle("user-1")["id"]
    clock = ManualMonotonic()
    provider = client(url, retries=1, clock=clock)
    try:
        fake.fail_next(1, status=503, retry_after=60)
        with pytest.raises(ProviderUnavailable) as busy:
            await provider.get_vehicle(vehicle_id)
        assert busy.value.status == 503
        assert busy.value.retry_after == 60
        calls = len(fake.requests)
        clock.now += 59
        with pytest.raises(ProviderUnavailable) as held:
            await provider.get_vehicle(vehicle_id)
        assert held.value.retry_after == pytest.approx(1)
        assert len(fake.requests) == calls
        clock.now += 2
        assert (await provider.get_vehicle(vehicle_id)).id == vehicle_id
    finally:
        await provider.aclose()


async def test_posts_are_not_retried_blindly(fake_url: Any) -> None:
    fake, url = fake_url
    vehicle_id = fake.add_vehicle("user-1", isPluggedIn=True)["id"]
    provider = client(url, retries=3)
    try:
        fake.fail_next(1, status=502)
        with pytest.raises(ProviderUnavailable):
            await provider.set_charging(vehicle_id, ChargingAction.START)
    finally:
        await provider.aclose()
    posts = [p for m, p in fake.requests if m == "POST" and p.endswith("/charging")]
    assert len(posts) == 1


async def test_unknown_enum_values_pass_through(fake_url: Any) -> None:
    fake, url = fake_url
    raw = fake.add_vehicle("user-1", powerDeliveryState="PLUGGED_IN:V2G_EXPORT")
    raw["vendor"] = "NEWCARCO"
    provider = client(url)
    try:
        vehicle = await provider.get_vehicle(raw["id"])
    finally:
        await provider.aclose()
    assert vehicle.vendor == "NEWCARCO"
    assert vehicle.charge_state.power_delivery_state == "PLUGGED_IN:V2G_EXPORT"


async def test_an_enode_that_refuses_connections_is_502_provider_unavailable() -> None:
    """A refused connection (nothing listens) is the table's 502, for the token request
    and the API call alike; no httpx error escapes the provider."""
    provider = client(f"http://127.0.0.1:{free_port()}", retries=1)  # nobody listens
    try:
        with pytest.raises(ProviderUnavailable) as refused:
            await provider.get_vehicle("any")
    finally:
        await provider.aclose()
    assert refused.value.status == 502
    assert refused.value.code == "PROVIDER_UNAVAILABLE"
