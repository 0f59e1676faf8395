"""POST /api/webhooks/enode: signature, replay, ordering, size, malformed bodies, and effects."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

from evlink.models import ChargingCommand, CommandState, Vehicle, WebhookDelivery
from evlink.resolvers.follow import wait_for_command
from evlink.settings import Settings
from evlink.webhooks import signature_for
from tests.conftest import TIMEOUT, WEBHOOK_SECRET, EnodeWorld, run_enode_world


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def post_raw(world: EnodeWorld, body: bytes, **headers: str) -> object:
    return await world.server.http.post(
        "/api/webhooks/enode",
        content=body,
        headers={"content-type": "application/json", **headers},
    )


async def test_discovered_vehicle_is_added_to_the_linked_user(enode: EnodeWorld) -> None:
    _, key = await enode.linked_user("user-42")
    raw = enode.fake.add_vehicle("user-42", isPluggedIn=True, batteryLevel=61)

    response = await enode.deliver([enode.fake.vehicle_event(raw["id"], "user:vehicle:discovered")])

    assert response.status_code == 200
    listed = (await enode.server.http.get("/api/ha/vehicles", headers=auth(key))).json()
    assert [v["enode_vehicle_id"] for v in listed] == [raw["id"]]
    assert listed[0]["chargeState"]["batteryLevel"] == 61


async def test_bad_or_missing_signature_is_401_and_stores_nothing(enode: EnodeWorld) -> None:
    await enode.linked_user("user-1")
    raw = enode.fake.add_vehicle("user-1")
    events = [enode.fake.vehicle_event(raw["id"], "user:vehicle:discovered")]

    wrong = await enode.fake.deliver(events, signature="sha1=" + "0" * 40)
    missing = await post_raw(enode, b"[]")

    assert wrong[0].status_code == 401
    assert missing.status_code == 401  # type: ignore[attr-defined]
    assert await WebhookDelivery.all().count() == 0
    assert await Vehicle.all().count() == 0


async def test_a_repeated_delivery_is_acknowledged_and_ignored(enode: EnodeWorld) -> None:
    user, _ = await enode.linked_user("user-1")
    vehicle = await enode.vehicle(user, isPluggedIn=True)
    event = enode.fake.vehicle_event(vehicle.provider_vehicle_id or "")

    first = await enode.deliver([event], delivery_id="delivery-1")
    again = await enode.fake.deliver([event], delivery_id="delivery-1", repeat=2)

    assert first.json()["status"] == "accepted"
    assert [r.json()["status"] for r in again] == ["duplicate", "duplicate"]
    assert await WebhookDelivery.filter(id="delivery-1").count() == 1


async def test_an_older_event_never_overwrites_newer_state(enode: EnodeWorld) -> None:
    user, key = await enode.linked_user("user-1")
    vehicle = await enode.vehicle(user, isPluggedIn=True, isCharging=False)
    vehicle_id = vehicle.provider_vehicle_id or ""
    older = enode.fake.vehicle_event(vehicle_id)
    enode.fake.update_vehicle(
        vehicle_id, isCharging=True, powerDeliveryState="PLUGGED_IN:CHARGING", batteryLevel=70
    )
    newer = enode.fake.vehicle_event(vehicle_id)

    await enode.deliver([newer])
    await enode.deliver([older])  # arrives late

    status = (await enode.server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))).json()
    assert status["chargingState"] == "PLUGGED_IN:CHARGING"
    assert status["batteryLevel"] == 70


async def test_oversize_body_is_413(enode: EnodeWorld) -> None:
    limit = enode.server.settings.webhook_max_body
    body = b"[" + b" " * limit + b"]"
    response = await post_raw(
        enode, body, **{"x-enode-signature": signature_for(WEBHOOK_SECRET, body)}
    )
    assert response.status_code == 413  # type: ignore[attr-defined]
    assert await WebhookDelivery.all().count() == 0


async def test_a_body_up_to_the_webhook_limit_is_taken_though_past_the_api_limit(
    enode: EnodeWorld,
) -> None:
    """The webhook's own limit (EVLINK_WEBHOOK_MAX_BODY), not the API's, holds on its path."""
    limit = enode.server.settings.webhook_max_body
    assert limit > enode.server.settings.max_body
    body = b"[" + b" " * (limit - 2) + b"]"
    response = await post_raw(
        enode, body, **{"x-enode-signature": signature_for(WEBHOOK_SECRET, body)}
    )
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]
    assert response.json() == {"status": "accepted", "events": 0}  # type: ignore[attr-defined]


async def test_malformed_json_is_400(enode: EnodeWorld) -> None:
    for body in (b"{not json", b'{"event": "not an array"}', b"[1, 2]"):
        response = await post_raw(
            enode, body, **{"x-enode-signature": signature_for(WEBHOOK_SECRET, body)}
        )
        assert response.status_code == 400, body  # type: ignore[attr-defined]
        assert response.json()["code"] == "BAD_REQUEST"  # type: ignore[attr-defined]


async def test_deleted_vehicle_disappears_and_credentials_invalidated_marks_unreachable(
    enode: EnodeWorld,
) -> None:
    user, key = await enode.linked_user("user-1")
    kept = await enode.vehicle(user, isPluggedIn=True)
    gone = await enode.vehicle(user, isPluggedIn=False)
    deleted = enode.fake.vehicle_event(gone.provider_vehicle_id or "", "user:vehicle:deleted")
    for _ in range(3):  # the first read refreshes (not kept); later ones are in the read cache
        cached = await enode.server.http.get(f"/api/status/{gone.id}", headers=auth(key))
        assert cached.status_code == 200

    await enode.deliver([deleted, enode.fake.credentials_invalidated_event("user-1")])

    listed = (await enode.server.http.get("/api/ha/vehicles", headers=auth(key))).json()
    assert [v["id"] for v in listed] == [str(kept.id)]
    assert listed[0]["isReachable"] is False
    missing = await enode.server.http.get(f"/api/status/{gone.id}", headers=auth(key))
    assert missing.status_code == 404


async def test_heartbeat_and_test_events_are_acknowledged(enode: EnodeWorld) -> None:
    now = datetime.now(UTC).isoformat()
    response = await enode.deliver(
        [
            {"event": "system:heartbeat", "createdAt": now, "version": "2024-10-01"},
            {"event": "enode:webhook:test", "createdAt": now, "version": "2024-10-01"},
            {"event": "user:something:new", "createdAt": now, "version": "2024-10-01"},
        ]
    )
    assert response.status_code == 200
    delivery = await WebhookDelivery.get(id=response.request.headers["x-enode-delivery"])
    assert delivery.processed_at is not None


async def test_out_of_order_action_updates_keep_the_newest(settings: Settings) -> None:
    # One attempt only: the FAILED action ends the command, nothing is re-sent.
    async with run_enode_world(settings, charging_max_attempts=1) as enode:
        user, key = await enode.linked_user("user-1")
        vehicle = await enode.vehicle(
            user, isPluggedIn=True, isCharging=False, powerDeliveryState="PLUGGED_IN:STOPPED"
        )
        answer = await enode.server.http.post(
            f"/api/charging/{vehicle.id}", json={"action": "START"}, headers=auth(key)
        )
        action_id = answer.json()["enode_response"]["id"]
        pending_event = copy.deepcopy(enode.fake.action_event(action_id))
        enode.fake.webhooks_enabled = False  # the test delivers, in the wrong order
        enode.fake.resolve_action(action_id, "FAILED", apply=False)
        failed_event = enode.fake.action_event(action_id)

        await enode.deliver([failed_event])
        await enode.deliver([pending_event])  # older, arrives late

        command = await ChargingCommand.get(id=answer.json()["command_id"])
        assert command.provider_action is not None
        assert command.provider_action["state"] == "FAILED"
        final = await wait_for_command(enode.server.services, command, TIMEOUT)
        assert final.state == CommandState.FAILED
        assert final.failure_reason is not None
        assert "NO_RESPONSE" in final.failure_reason


async def test_a_signed_body_replayed_under_a_new_delivery_id_is_ignored(
    enode: EnodeWorld,
) -> None:
    user, key = await enode.linked_user("user-1")
    kept = await enode.vehicle(user, isPluggedIn=True)
    gone = await enode.vehicle(user, isPluggedIn=True)
    deleted = [enode.fake.vehicle_event(gone.provider_vehicle_id or "", "user:vehicle:deleted")]
    await enode.deliver(deleted, delivery_id="original")
    # The car comes back (re-linked); then an attacker replays the captured deletion.
    await enode.deliver(
        [enode.fake.vehicle_event(gone.provider_vehicle_id or "", "user:vehicle:discovered")]
    )

    replayed = await enode.fake.deliver(deleted, delivery_id="forged-new-id")

    assert replayed[0].json()["status"] == "duplicate"
    listed = (await enode.server.http.get("/api/ha/vehicles", headers=auth(key))).json()
    assert sorted(v["id"] for v in listed) == sorted([str(kept.id), str(gone.id)])
