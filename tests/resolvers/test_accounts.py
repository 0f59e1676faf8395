"""Adding and removing cars within the tier's vehicle limit, and the one Enode user id of
a user (evlink/resolvers/accounts.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from typing import Any

import pytest
from gql.transport.exceptions import TransportQueryError

from evlink.errors import BadRequest, ForbiddenTier, NotFound
from evlink.models import ChargingCommand, CommandState, Tier, User, Vehicle
from evlink.resolvers import accounts
from evlink.resolvers.accounts import upsert_provider_vehicle
from evlink.settings import Settings
from tests.conftest import (
    PROTOCOLS,
    TIMEOUT,
    WEBHOOK_SECRET,
    EnodeWorld,
    Server,
    _truncate,
    next_result,
    run_server,
    subscription,
)
from tests.test_ratelimit import _run_cli, limited

LINK = "mutation($uri: String!) { linkVehicleAccount(redirectUri: $uri) }"
CHARGE_STATE = "subscription($id: ID!) { chargeState(vehicleId: $id) { isPluggedIn } }"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _stored(user: User) -> list[tuple[str, str | None]]:
    return [
        (v.provider, v.provider_vehicle_id)
        for v in await Vehicle.filter(user=user).order_by("created_at")
    ]


# -- adding a car -------------------------------------------------------------------


async def test_the_simulator_is_asked_before_a_car_is_stored(server: Server) -> None:
    user, key = await server.user()
    services = server.services

    made = await accounts.register_vehicle(services, user, provider_vehicle_id=None)
    assert made.provider == "simulator"
    assert (made.provider_vehicle_id or "").startswith("sim-plugged-")
    named = await accounts.register_vehicle(
        services, user, provider_vehicle_id="sim-charging-mycar", provider="simulator"
    )
    for vehicle in (made, named):  # both answer, with the provider's state stored already
        status = await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))
        assert status.status_code == 200, status.text
    assert status.json()["chargingState"] == "PLUGGED_IN:CHARGING"

    with pytest.raises(BadRequest, match="provider must be simulator"):
        await accounts.register_vehicle(services, user, provider="foo", provider_vehicle_id=None)
    for refused in ("tesla-123", "sim-mycar", "sim-plugged-", "sim-fast-car"):
        with pytest.raises(NotFound, match=f"simulator has no vehicle {refused}"):
            await accounts.register_vehicle(services, user, provider_vehicle_id=refused)
    with pytest.raises(BadRequest, match=r"is vehicle .* already"):
        await accounts.register_vehicle(services, user, provider_vehicle_id="sim-charging-mycar")

    assert await _stored(user) == [
        ("simulator", made.provider_vehicle_id),
        ("simulator", "sim-charging-mycar"),
    ]


async def test_an_enode_car_must_exist_in_the_users_own_link(enode: EnodeWorld) -> None:
    services = enode.server.services
    unlinked, _ = await enode.server.user()
    user, key = await enode.linked_user("user-1")
    mine = enode.fake.add_vehicle("user-1", isPluggedIn=True, batteryLevel=57)
    theirs = enode.fake.add_vehicle("user-2", isPluggedIn=True)

    with pytest.raises(BadRequest, match="no Enode link yet: `evlink enode link"):
        await accounts.register_vehicle(services, unlinked, provider_vehicle_id=mine["id"])
    with pytest.raises(BadRequest, match="enode vehicle id is required"):
        await accounts.register_vehicle(services, user, provider_vehicle_id=None)
    with pytest.raises(BadRequest, match="provider must be enode"):
        await accounts.register_vehicle(
            services, user, provider="simulator", provider_vehicle_id="sim-plugged-x"
        )
    with pytest.raises(NotFound, match="enode has no vehicle tesla-123"):
        await accounts.register_vehicle(services, user, provider_vehicle_id="tesla-123")
    with pytest.raises(NotFound, match=rf"in {user.email}'s link"):
        await accounts.register_vehicle(services, user, provider_vehicle_id=theirs["id"])
    assert await _stored(user) == []
    assert await _stored(unlinked) == []

    added = await accounts.register_vehicle(services, user, provider_vehicle_id=mine["id"])

    assert await _stored(user) == [("enode", mine["id"])]
    status = await enode.server.http.get(f"/api/status/{added.id}", headers=auth(key))
    assert status.status_code == 200
    assert status.json()["chargeState"]["batteryLevel"] == 57


async def test_a_removed_car_frees_its_place_and_can_come_back(make_settings: Any) -> None:
    settings = make_settings(vehicle_limits="free=1")
    await _truncate(settings.database_url)
    async with run_server(settings) as server:
        await _removed_car_frees_its_place(server)


async def _removed_car_frees_its_place(server: Server) -> None:
    user, key = await server.user(tier=Tier.FREE)
    services = server.services
    first = await accounts.register_vehicle(services, user, provider_vehicle_id="sim-plugged-a")
    with pytest.raises(ForbiddenTier, match="remove one"):
        await accounts.register_vehicle(services, user, provider_vehicle_id="sim-plugged-b")

    await accounts.remove_vehicle(services, first)
    second = await accounts.register_vehicle(services, user, provider_vehicle_id="sim-plugged-b")
    await accounts.remove_vehicle(services, second)
    back = await accounts.register_vehicle(services, user, provider_vehicle_id="sim-plugged-a")

    assert back.id == first.id  # the same evlink id: a Home Assistant sensor keeps working
    me = (await server.http.get("/api/ha/me", headers=auth(key))).json()
    assert me["vehicleCount"] == 1
    with pytest.raises(NotFound):
        await accounts.remove_vehicle(services, second)  # removed already


async def test_another_users_removed_car_comes_back_without_its_history(server: Server) -> None:
    owner, _ = await server.user()
    vehicle = await server.vehicle(owner, "plugged")
    command = await server.http.post(
        f"/api/charging/{vehicle.id}", json={"action": "START"}, headers=auth(server.keys[owner.id])
    )
    assert command.status_code == 200
    await accounts.remove_vehicle(server.services, vehicle)
    buyer, _ = await server.user()

    bought = await accounts.register_vehicle(
        server.services, buyer, provider_vehicle_id=vehicle.provider_vehicle_id
    )

    assert bought.id != vehicle.id
    assert not await ChargingCommand.filter(vehicle_id=bought.id).exists()
    assert not await ChargingCommand.filter(id=command.json()["command_id"]).exists()


# -- removing a car -----------------------------------------------------------------


async def test_a_removed_enode_car_stays_removed_until_added_again(enode: EnodeWorld) -> None:
    """The car is still in the user's Enode account: its webhooks and a sync do not bring
    it back (the user removed it to free a place); `vehicle add` does."""
    services = enode.server.services
    user, key = await enode.linked_user("user-1")
    raw = enode.fake.add_vehicle("user-1", isPluggedIn=True)
    vehicle = await accounts.register_vehicle(services, user, provider_vehicle_id=raw["id"])
    await accounts.remove_vehicle(services, vehicle)

    enode.fake.update_vehicle(raw["id"], batteryLevel=70)
    await enode.deliver([enode.fake.vehicle_event(raw["id"])])
    await enode.deliver([enode.fake.vehicle_event(raw["id"], "user:vehicle:discovered")])
    assert await accounts.sync_vehicles(services, user) == []

    status = await enode.server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))
    assert status.status_code == 404
    assert not await Vehicle.filter(user=user, deleted_at=None).exists()
    back = await accounts.register_vehicle(services, user, provider_vehicle_id=raw["id"])
    assert back.id == vehicle.id
    assert await accounts.sync_vehicles(services, user) == [back]
    status = await enode.server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))
    assert status.json()["chargeState"]["batteryLevel"] == 70


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_removing_a_car_ends_its_commands_reads_and_subscriptions(
    make_settings: Any, protocol: str
) -> None:
    """Past the test's TIMEOUT lies the periodic re-check (the cache's ttl): what ends the
    subscription and the cached read is the removal's own invalidation."""
    settings = make_settings(cache_ttl=60.0)
    await _truncate(settings.database_url)
    async with run_server(settings) as server:
        await _removing_a_car(server, protocol)


async def _removing_a_car(server: Server, protocol: str) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    kept = await server.vehicle(user, "unplugged")
    before = await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))
    assert before.status_code == 200  # now in the read cache
    started = await server.http.post(
        f"/api/charging/{vehicle.id}", json={"action": "START"}, headers=auth(key)
    )
    command_id = started.json()["command_id"]

    async with (
        server.gql_client(key, protocol) as session,
        subscription(session, CHARGE_STATE, id=str(vehicle.id)) as stream,
    ):
        assert (await next_result(stream))["chargeState"]["isPluggedIn"] is True
        cancelled = await accounts.remove_vehicle(server.services, vehicle)
        after = await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))
        assert after.status_code == 404  # at once, though it was cached
        with pytest.raises(TransportQueryError) as ended:
            await next_result(stream)
    assert ended.value.errors is not None
    assert ended.value.errors[0]["extensions"]["code"] == "NOT_FOUND"

    assert cancelled == 1
    command = await ChargingCommand.get(id=command_id)
    assert command.state == CommandState.CANCELLED
    assert command.failure_reason == "the vehicle was removed"
    polled = await server.graphql(
        "query($id: ID!) { chargingCommand(id: $id) { state } }", {"id": command_id}, key=key
    )
    assert polled["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    listed = (await server.http.get("/api/ha/vehicles", headers=auth(key))).json()
    assert [v["id"] for v in listed] == [str(kept.id)]


# -- one Enode user id --------------------------------------------------------------


async def test_the_cli_link_and_a_graphql_link_give_one_enode_user_id(enode: EnodeWorld) -> None:
    """`evlink enode link`, then `linkVehicleAccount` from a key whose user sits in the auth
    cache without an id: the second keeps the first's id, so the cars linked through the
    first session reach the user (their webhooks, `evlink enode sync`)."""
    server = enode.server
    user, key = await server.user()
    warm = await server.graphql("{ viewer { email } }", key=key)  # the user, cached without an id
    assert warm["data"]["viewer"]["email"] == user.email

    cli = await _evlink(enode, "enode", "link", "--user", user.email)
    given = (await User.get(id=user.id)).enode_user_id
    assert given is not None
    assert [link["userId"] for link in enode.fake.links.values()] == [given]
    assert cli.splitlines()[-1].startswith(f"{enode.fake.base_url}/link/")

    body = await server.graphql(LINK, {"uri": "https://example.com/back"}, key=key)
    assert body["data"]["linkVehicleAccount"].startswith(f"{enode.fake.base_url}/link/")

    assert (await User.get(id=user.id)).enode_user_id == given
    assert [link["userId"] for link in enode.fake.links.values()] == [given, given]
    raw = enode.fake.add_vehicle(given, isPluggedIn=True)
    await enode.deliver([enode.fake.vehicle_event(raw["id"], "user:vehicle:discovered")])
    assert await _stored(user) == [("enode", raw["id"])]


async def test_concurrent_links_of_a_user_without_an_id_give_one_id(enode: EnodeWorld) -> None:
    server = enode.server
    user, key = await server.user()
    await server.graphql("{ viewer { email } }", key=key)

    bodies = await asyncio.gather(
        *(server.graphql(LINK, {"uri": "https://example.com/"}, key=key) for _ in range(6))
    )

    assert all("errors" not in body for body in bodies), bodies
    given = (await User.get(id=user.id)).enode_user_id
    assert given is not None
    assert [link["userId"] for link in enode.fake.links.values()] == [given] * 6


async def _evlink(enode: EnodeWorld, *args: str) -> str:
    """The real `evlink` in a subprocess, on this world's database and fake Enode; the
    event loop keeps serving the fake Enode meanwhile."""
    settings = enode.server.settings
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EVLINK_")},
        "EVLINK_DATABASE_URL": settings.database_url,
        "EVLINK_PROVIDER": "enode",
        "EVLINK_ENODE_CLIENT_ID": settings.enode_client_id,
        "EVLINK_ENODE_CLIENT_SECRET": settings.enode_client_secret,
        "EVLINK_ENODE_API_URL": settings.enode_api_url,
        "EVLINK_ENODE_OAUTH_URL": settings.enode_oauth_url,
        "EVLINK_ENODE_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "evlink.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), TIMEOUT * 3)
    assert process.returncode == 0, (args, out, err)
    return out.decode()


# -- vehicles per tier ------------------------------------------------------------


async def test_vehicle_limits_per_tier(
    make_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(vehicle_limits="free=1;basic=2")
    async with limited(settings) as (server, _):
        free, _ = await server.user(tier=Tier.FREE)
        await accounts.add_vehicle(
            free, provider="simulator", provider_vehicle_id=None, settings=settings
        )
        with pytest.raises(ForbiddenTier, match="FREE tier allows 1 vehicle;"):
            await accounts.add_vehicle(
                free, provider="simulator", provider_vehicle_id=None, settings=settings
            )

        basic, _ = await server.user(tier=Tier.BASIC)
        provider_ids = [f"sim-plugged-{uuid.uuid4().hex[:12]}" for _ in range(3)]
        with caplog.at_level(logging.WARNING, logger="evlink"):
            added = [
                await upsert_provider_vehicle(
                    server.services, basic, await server.provider.get_vehicle(pid)
                )
                for pid in provider_ids
            ]
        assert [v is not None for v in added] == [True, True, False]
        assert await Vehicle.filter(user=basic).count() == 2
        assert any(
            provider_ids[2] in r.getMessage() and "BASIC tier allows 2 vehicles" in r.getMessage()
            for r in caplog.records
        )
        # A vehicle already held is still updated at the limit.
        kept = await upsert_provider_vehicle(
            server.services, basic, await server.provider.get_vehicle(provider_ids[0])
        )
        first = added[0]
        assert first is not None
        assert kept is not None
        assert kept.id == first.id

        pro, _ = await server.user(tier=Tier.PRO)  # PRO keeps its default: 5
        for _ in range(5):
            await accounts.add_vehicle(
                pro, provider="simulator", provider_vehicle_id=None, settings=settings
            )
        with pytest.raises(ForbiddenTier, match="PRO tier allows 5 vehicles"):
            await accounts.add_vehicle(
                pro, provider="simulator", provider_vehicle_id=None, settings=settings
            )


def test_the_cli_refuses_a_vehicle_over_the_tier_limit(settings: Settings) -> None:
    asyncio.run(_truncate(settings.database_url))
    for args in (
        ("user", "create", "--email", "one-car@example.com", "--tier", "free"),
        ("vehicle", "add", "--user", "one-car@example.com"),
    ):
        assert _run_cli(settings, *args).returncode == 0

    refused = _run_cli(settings, "vehicle", "add", "--user", "one-car@example.com")

    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "evlink: The FREE tier allows 1 vehicle; remove one or upgrade"
    )
