"""A slow or busy provider does not make reads slow (the read budget).

evlink runs on the Enode provider against the fake Enode (tests/fakes/enode.py),
whose requests hang until the test releases them. Every read is timed from the
client; the background refresh's result is awaited on the charge-state event.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from evlink.domain import format_timestamp
from evlink.events import charge_state_topic
from evlink.models import ChargeState, User, Vehicle
from evlink.settings import Settings
from tests.conftest import TIMEOUT, EnodeWorld, run_enode_world

STALE = datetime.now(UTC) - timedelta(hours=1)  # refreshed_at of a state past every max age

CHARGE_STATE = """
query($id: ID!) { vehicle(id: $id) { id chargeState { isCharging lastUpdated } } }
"""


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def timed(request: Any) -> tuple[httpx.Response, float]:
    """The answer and the seconds the client waited for it."""
    started = time.perf_counter()
    response = await request
    return response, time.perf_counter() - started


def rest_status(enode: EnodeWorld, key: str, vehicle: Vehicle) -> Any:
    return enode.server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))


def graphql_status(enode: EnodeWorld, key: str, vehicle: Vehicle) -> Any:
    return enode.server.http.post(
        "/graphql",
        json={"query": CHARGE_STATE, "variables": {"id": str(vehicle.id)}},
        headers=auth(key),
    )


def provider_reads(enode: EnodeWorld, vehicle: Vehicle) -> int:
    path = f"/vehicles/{vehicle.provider_vehicle_id}"
    return sum(1 for method, seen in enode.fake.requests if method == "GET" and seen == path)


async def charging_car(enode: EnodeWorld) -> tuple[User, str, Vehicle, str]:
    """A car stored as plugged in and not charging, long ago; Enode now says it charges.

    Returns its owner, the owner's key, the vehicle and the stored ``lastUpdated``.
    """
    user, key = await enode.linked_user()
    vehicle = await enode.vehicle(user, isPluggedIn=True)
    stored = format_timestamp((await ChargeState.get(vehicle_id=vehicle.id)).last_updated)
    assert stored is not None
    await Vehicle.filter(id=vehicle.id).update(refreshed_at=STALE)
    enode.fake.update_vehicle(
        vehicle.provider_vehicle_id or "", isCharging=True, powerDeliveryState="PLUGGED_IN:CHARGING"
    )
    return user, key, vehicle, stored


async def test_reads_answer_the_stored_state_within_the_budget_and_later_reads_the_refresh(
    settings: Settings,
) -> None:
    budget = 0.5
    # Enode's own timeout is far longer: only the release ends the hanging request.
    async with run_enode_world(
        settings, provider_read_budget=budget, enode_timeout=TIMEOUT, enode_retries=1
    ) as enode:
        _, key, vehicle, stored_at = await charging_car(enode)
        enode.fake.hang_next(1)
        topic = charge_state_topic(vehicle.id)
        async with enode.server.services.events.subscribe(topic) as changes:
            answers = await asyncio.gather(
                *(timed(rest_status(enode, key, vehicle)) for _ in range(3)),
                *(timed(graphql_status(enode, key, vehicle)) for _ in range(2)),
            )
            assert enode.fake.hanging == 1  # one refresh for the car, however many reads
            enode.fake.release_hanging()
            refreshed = await changes.get(timeout=TIMEOUT)
        rest_after = (await rest_status(enode, key, vehicle)).json()
        graphql_after = (await graphql_status(enode, key, vehicle)).json()
        reads_after = provider_reads(enode, vehicle)

    for response, waited in answers:
        assert response.status_code == 200, response.text
        assert waited < budget + 0.75, f"the read took {waited:.2f} s"
    for response, _ in answers[:3]:
        assert response.json()["isCharging"] is False  # stale but true
        assert response.json()["chargeState"]["lastUpdated"] == stored_at
    for response, _ in answers[3:]:
        state = response.json()["data"]["vehicle"]["chargeState"]
        assert state == {"isCharging": False, "lastUpdated": stored_at}
    assert refreshed is not None
    assert refreshed["isCharging"] is True
    assert rest_after["isCharging"] is True
    assert rest_after["chargeState"]["lastUpdated"] > stored_at
    assert graphql_after["data"]["vehicle"]["chargeState"]["isCharging"] is True
    assert reads_after == 1  # the hanging one: later reads were answered from what it stored


async def test_a_provider_slower_than_usual_but_within_the_budget_gives_the_fresh_state(
    settings: Settings,
) -> None:
    async with run_enode_world(settings, provider_read_budget=TIMEOUT / 2) as enode:
        _, key, vehicle, stored_at = await charging_car(enode)
        enode.fake.latency = 0.3

        rest = await rest_status(enode, key, vehicle)

    assert rest.json()["isCharging"] is True
    assert rest.json()["chargeState"]["lastUpdated"] > stored_at


async def test_without_a_stored_state_a_hanging_provider_is_a_504_within_the_budget(
    settings: Settings,
) -> None:
    budget = 1.0
    async with run_enode_world(
        settings, provider_read_budget=budget, enode_timeout=TIMEOUT, enode_retries=1
    ) as enode:
        user, key = await enode.linked_user()
        never_read = []
        for _ in range(2):  # one for REST, one for GraphQL: each starts its own refresh
            raw = enode.fake.add_vehicle(user.enode_user_id or "", isPluggedIn=True)
            never_read.append(
                await Vehicle.create(user=user, provider="enode", provider_vehicle_id=raw["id"])
            )
        rest_car, graphql_car = never_read
        enode.fake.hang_next(2)

        rest, rest_waited = await timed(rest_status(enode, key, rest_car))
        # The query's first listing and its chargeState wait on one refresh: one budget.
        graphql, graphql_waited = await timed(graphql_status(enode, key, graphql_car))

        async with enode.server.services.events.subscribe(
            charge_state_topic(rest_car.id)
        ) as changes:
            enode.fake.release_hanging()
            stored = await changes.get(timeout=TIMEOUT)
        later = await rest_status(enode, key, rest_car)

    assert rest.status_code == 504
    assert rest.json()["code"] == "PROVIDER_UNAVAILABLE"
    assert rest_waited < budget + 0.5, f"the read took {rest_waited:.2f} s"
    body = graphql.json()
    assert body["data"]["vehicle"]["chargeState"] is None
    assert [e["extensions"]["code"] for e in body["errors"]] == ["PROVIDER_UNAVAILABLE"]
    assert graphql_waited < budget + 0.5, f"the query took {graphql_waited:.2f} s"
    assert stored is not None
    assert later.status_code == 200
    assert later.json()["isPluggedIn"] is True


async def test_a_retry_after_is_passed_on_never_waited_out(settings: Settings) -> None:
    async with run_enode_world(settings, provider_read_budget=3.0) as enode:
        user, key, stored_car, stored_at = await charging_car(enode)
        raw = enode.fake.add_vehicle(user.enode_user_id or "", isPluggedIn=True)
        never_read = await Vehicle.create(
            user=user, provider="enode", provider_vehicle_id=raw["id"]
        )
        enode.fake.fail_next(1, status=429, retry_after=5)

        busy, busy_waited = await timed(rest_status(enode, key, never_read))
        calls = len(enode.fake.requests)
        stale, stale_waited = await timed(rest_status(enode, key, stored_car))

    assert busy.status_code == 503
    assert busy.json()["code"] == "PROVIDER_UNAVAILABLE"
    assert 4 <= int(busy.headers["retry-after"]) <= 5
    assert busy_waited < 1.0, f"the read took {busy_waited:.2f} s"
    # Enode is left alone until its Retry-After has passed; the stored state is served.
    assert len(enode.fake.requests) == calls
    assert stale.status_code == 200
    assert stale.json()["isCharging"] is False
    assert stale.json()["chargeState"]["lastUpdated"] == stored_at
    assert stale_waited < 1.0, f"the read took {stale_waited:.2f} s"


async def test_a_charging_request_waits_for_the_provider_beyond_the_read_budget(
    settings: Settings,
) -> None:
    async with run_enode_world(settings, provider_read_budget=0.2) as enode:
        user, key = await enode.linked_user()
        vehicle = await enode.vehicle(user, isPluggedIn=False)
        await Vehicle.filter(id=vehicle.id).update(refreshed_at=STALE)
        # Plugged in since evlink last looked; Enode answers slower than the read budget.
        enode.fake.update_vehicle(
            vehicle.provider_vehicle_id or "",
            isPluggedIn=True,
            powerDeliveryState="PLUGGED_IN:STOPPED",
        )
        enode.fake.latency = 0.5

        started = await enode.server.http.post(
            f"/api/charging/{vehicle.id}", json={"action": "START"}, headers=auth(key)
        )

    # Judged on Enode's answer, not on the stored "unplugged".
    assert started.status_code == 200, started.text
    assert started.json()["enode_response"]["state"] == "PENDING"


async def test_a_refresh_still_in_flight_is_cancelled_when_the_server_stops(
    settings: Settings,
) -> None:
    async with run_enode_world(
        settings, provider_read_budget=0.2, enode_timeout=TIMEOUT, enode_retries=1
    ) as enode:
        _, key, vehicle, _ = await charging_car(enode)
        enode.fake.hang_next(1)
        served = await rest_status(enode, key, vehicle)
        refresh = enode.server.services.refreshes[vehicle.id]
    # The server stopped first; the fake Enode, holding the request, after it.
    assert served.status_code == 200
    assert refresh.task.cancelled()
