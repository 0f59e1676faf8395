"""The fake Enode answers over real HTTP like the contract says Enode does."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from evlink.domain import ChargeAction, VehicleData
from tests.fakes.enode import API_VERSION, PROBLEM_MEDIA_TYPE, FakeEnode

TIMEOUT = 10.0  # seconds any awaited answer may take before a test fails
PROBLEM_TYPE = "https://developers.enode.io/problems/"
WEBHOOK_SECRET = "s3cret"


async def fetch_token(
    client: httpx.AsyncClient,
    auth: tuple[str, str] = ("client-id", "client-secret"),
    grant_type: str = "client_credentials",
) -> httpx.Response:
    return await client.post("/oauth2/token", auth=auth, data={"grant_type": grant_type})


def api_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Enode-Version": API_VERSION}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    body: dict[str, Any] = response.json()
    assert set(body) == {"type", "title", "detail"}
    assert body["type"].startswith(PROBLEM_TYPE)
    return body


@pytest.fixture
def fake() -> FakeEnode:
    return FakeEnode()


@pytest.fixture
async def base_url(fake: FakeEnode) -> AsyncIterator[str]:
    async with fake.serve() as url:
        yield url


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no credentials."""
    async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT, trust_env=False) as client:
        yield client


@pytest.fixture
async def api(http: httpx.AsyncClient) -> httpx.AsyncClient:
    """The same client, authenticated with a fresh token and the API version."""
    token = (await fetch_token(http)).json()["access_token"]
    http.headers.update(api_headers(token))
    return http


@contextlib.asynccontextmanager
async def serve_app(app: Starlette) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free port of 127.0.0.1 (socket bound first)."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only
    # when the listening socket says TCP; with proto 0, Nagle adds ~40 ms per answer.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, TIMEOUT)
        sock.close()


class Receiver:
    """A webhook endpoint that keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[httpx.Headers, bytes]] = []
        self.app = Starlette(routes=[Route("/hooks/enode", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        self.received.append((httpx.Headers(request.headers.raw), await request.body()))
        return Response(status_code=204)


@pytest.fixture
async def receiver(api: httpx.AsyncClient, fake: FakeEnode) -> AsyncIterator[Receiver]:
    """A receiver registered as the fake's webhook with secret ``WEBHOOK_SECRET``."""
    hooks = Receiver()
    async with serve_app(hooks.app) as url:
        response = await api.post(
            "/webhooks",
            json={
                "url": f"{url}/hooks/enode",
                "secret": WEBHOOK_SECRET,
                "events": ["*"],
                "apiVersion": API_VERSION,
            },
        )
        assert response.status_code == 200, response.text
        yield hooks
        await fake.wait_deliveries()


def verified_events(headers: httpx.Headers, body: bytes) -> Any:
    expected = "sha1=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha1).hexdigest()
    assert hmac.compare_digest(headers["x-enode-signature"], expected)
    return json.loads(body)


# ----------------------------------------------------------------- tokens


async def test_token_needs_basic_auth_and_client_credentials(
    fake: FakeEnode, http: httpx.AsyncClient
) -> None:
    wrong = await fetch_token(http, auth=("client-id", "nope"))
    assert wrong.status_code == 401
    grant = await fetch_token(http, grant_type="authorization_code")
    assert grant.status_code == 400
    assert fake.token_requests == 0

    response = await fetch_token(http)

    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3599
    assert fake.token_requests == 1
    assert ("POST", "/oauth2/token") in fake.requests


async def test_api_needs_a_live_token_and_the_version_header(
    fake: FakeEnode, http: httpx.AsyncClient
) -> None:
    vehicle = fake.add_vehicle()
    path = f"/vehicles/{vehicle['id']}"
    token = (await fetch_token(http)).json()["access_token"]

    assert_problem(await http.get(path), 401)
    assert_problem(await http.get(path, headers={"Authorization": f"Bearer {token}"}), 400)
    assert (await http.get(path, headers=api_headers(token))).status_code == 200

    fake.expire_tokens()

    assert_problem(await http.get(path, headers=api_headers(token)), 401)
    fresh = (await fetch_token(http)).json()["access_token"]
    assert (await http.get(path, headers=api_headers(fresh))).status_code == 200
    assert fake.token_requests == 2


async def test_a_token_expires_after_its_lifetime() -> None:
    short = FakeEnode(token_lifetime=0)
    async with (
        short.serve() as url,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT, trust_env=False) as http,
    ):
        token = (await fetch_token(http)).json()
        response = await http.get("/vehicles", headers=api_headers(token["access_token"]))
    assert token["expires_in"] == 0
    assert_problem(response, 401)


# --------------------------------------------------------------- vehicles


async def test_vehicle_lists_paginate_to_the_end(fake: FakeEnode, api: httpx.AsyncClient) -> None:
    added = [fake.add_vehicle(f"user-{i % 2}")["id"] for i in range(120)]
    seen: list[str] = []
    sizes: list[int] = []
    params: dict[str, Any] = {"pageSize": 50}
    while True:
        response = await api.get("/vehicles", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        sizes.append(len(page["data"]))
        seen += [VehicleData.from_enode(raw).id for raw in page["data"]]
        if page["pagination"]["after"] is None:
            break
        params = {"pageSize": 50, "after": page["pagination"]["after"]}

    assert sizes == [50, 50, 20]
    assert seen == added
    back = await api.get(
        "/vehicles", params={"pageSize": 50, "before": page["pagination"]["before"]}
    )
    assert [v["id"] for v in back.json()["data"]] == added[50:100]

    user = (await api.get("/users/user-1/vehicles")).json()
    assert [v["id"] for v in user["data"]] == added[1::2][:50]
    assert user["pagination"]["after"] is not None
    for bad in ({"pageSize": 0}, {"pageSize": 101}, {"pageSize": "x"}, {"after": "garbage!"}):
        assert_problem(await api.get("/vehicles", params=bad), 400)


async def test_a_vehicle_reads_as_the_contract_shapes_it(
    fake: FakeEnode, api: httpx.AsyncClient
) -> None:
    added = fake.add_vehicle("user-42", isPluggedIn=True, batteryLevel=50)

    response = await api.get(f"/vehicles/{added['id']}")

    vehicle = VehicleData.from_enode(response.json())
    assert vehicle.user_id == "user-42"
    assert vehicle.charge_state.battery_level == 50
    assert vehicle.charge_state.power_delivery_state == "PLUGGED_IN:STOPPED"
    assert vehicle.is_capable("startCharging")
    assert not vehicle.is_capable("setMaxCurrent")
    assert response.json()["chargeState"]["lastUpdated"].endswith("Z")
    assert_problem(await api.get("/vehicles/nope"), 404)


# ----------------------------------------------------------------- charging


async def charge(api: httpx.AsyncClient, vehicle_id: str, action: str) -> httpx.Response:
    return await api.post(f"/vehicles/{vehicle_id}/charging", json={"action": action})


async def test_charging_preconditions_answer_400_and_422(
    fake: FakeEnode, api: httpx.AsyncClient
) -> None:
    unplugged = fake.add_vehicle()["id"]
    charging = fake.add_vehicle(isCharging=True)["id"]
    plugged = fake.add_vehicle(isPluggedIn=True)
    incapable = fake.add_vehicle(isPluggedIn=True)
    incapable["capabilities"]["startCharging"]["isCapable"] = False

    assert_problem(await charge(api, unplugged, "START"), 400)
    assert_problem(await charge(api, charging, "START"), 400)
    assert_problem(await charge(api, plugged["id"], "STOP"), 400)
    assert_problem(await charge(api, incapable["id"], "START"), 400)
    assert_problem(await charge(api, plugged["id"], "PAUSE"), 400)
    assert_problem(await charge(api, "nope", "START"), 404)
    fake.set_smart_charging(plugged["id"], True)
    assert_problem(await charge(api, plugged["id"], "START"), 422)
    assert fake.actions == {}


async def test_with_its_rules_off_every_start_and_stop_is_taken(
    fake: FakeEnode, api: httpx.AsyncClient
) -> None:
    fake.checks_rules = False
    unplugged = fake.add_vehicle()["id"]
    charging = fake.add_vehicle(isCharging=True)["id"]
    smart = fake.add_vehicle(isPluggedIn=True)["id"]
    fake.set_smart_charging(smart, True)
    incapable = fake.add_vehicle(isPluggedIn=True)
    incapable["capabilities"]["stopCharging"]["isCapable"] = False

    for vehicle, kind in [
        (unplugged, "START"),
        (charging, "START"),
        (smart, "START"),
        (incapable["id"], "STOP"),
    ]:
        taken = await charge(api, vehicle, kind)
        assert taken.status_code == 200, taken.text
        assert (taken.json()["state"], taken.json()["kind"]) == ("PENDING", kind)
    assert len(fake.pending_actions()) == 4
    assert_problem(await charge(api, unplugged, "PAUSE"), 400)  # the kind is still checked


async def test_a_pending_action_of_the_same_kind_is_returned_again(
    fake: FakeEnode, api: httpx.AsyncClient
) -> None:
    vehicle = fake.add_vehicle("user-42", isPluggedIn=True)["id"]

    first = await charge(api, vehicle, "START")
    again = await charge(api, vehicle, "START")

    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    action = ChargeAction.from_enode(first.json())
    assert (action.state, action.kind, action.target_id) == ("PENDING", "START", vehicle)
    assert action.user_id == "user-42"
    assert action.completed_at is None
    assert first.json()["targetType"] == "vehicle"
    assert first.json()["failureReason"] is None
    assert [a["id"] for a in fake.pending_actions(vehicle)] == [action.id]


async def test_an_action_of_the_other_kind_cancels_the_pending_one(
    fake: FakeEnode, api: httpx.AsyncClient
) -> None:
    vehicle = fake.add_vehicle(isPluggedIn=True)["id"]
    start = (await charge(api, vehicle, "START")).json()

    # Not charging yet, but a START is in motion: STOP is judged on plug only.
    stop = await charge(api, vehicle, "STOP")

    assert stop.status_code == 200
    assert stop.json()["kind"] == "STOP"
    cancelled = (await api.get(f"/vehicles/actions/{start['id']}")).json()
    assert cancelled["state"] == "CANCELLED"
    assert cancelled["failureReason"]["type"] == "CONFLICT"
    assert cancelled["completedAt"] is not None
    assert [a["id"] for a in fake.pending_actions()] == [stop.json()["id"]]


async def test_resolving_an_action_moves_the_vehicle(
    fake: FakeEnode, api: httpx.AsyncClient
) -> None:
    added = fake.add_vehicle(isPluggedIn=True)
    before = added["chargeState"]["lastUpdated"]
    start = (await charge(api, added["id"], "START")).json()

    fake.resolve_action(start["id"])

    action = ChargeAction.from_enode((await api.get(f"/vehicles/actions/{start['id']}")).json())
    assert action.state == "CONFIRMED"
    assert action.completed_at is not None
    vehicle = VehicleData.from_enode((await api.get(f"/vehicles/{added['id']}")).json())
    assert vehicle.charge_state.is_charging is True
    assert vehicle.charge_state.power_delivery_state == "PLUGGED_IN:CHARGING"
    assert vehicle.charge_state.last_updated is not None
    assert vehicle.charge_state.last_updated.isoformat() > before.replace("Z", "")

    stop = (await charge(api, added["id"], "STOP")).json()
    failed = fake.resolve_action(stop["id"], "FAILED")
    assert failed["failureReason"]["type"] == "NO_RESPONSE"
    assert fake.vehicles[added["id"]]["chargeState"]["isCharging"] is True


async def test_cancel_a_pending_action_then_409(fake: FakeEnode, api: httpx.AsyncClient) -> None:
    vehicle = fake.add_vehicle(isPluggedIn=True)["id"]
    start = (await charge(api, vehicle, "START")).json()

    cancelled = await api.post(f"/vehicles/actions/{start['id']}/cancel")

    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "CANCELLED"
    assert cancelled.json()["failureReason"]["type"] == "REQUESTED_CANCELLATION"
    assert_problem(await api.post(f"/vehicles/actions/{start['id']}/cancel"), 409)
    assert_problem(await api.post("/vehicles/actions/nope/cancel"), 404)
    assert_problem(await api.get("/vehicles/actions/nope"), 404)


# ------------------------------------------------------------------- faults


async def test_fail_next_answers_429_with_retry_after(
    fake: FakeEnode, api: httpx.AsyncClient
) -> None:
    fake.fail_next(2, 429, retry_after=3)
    fake.fail_next(1)

    for _ in range(2):
        limited = await api.get("/vehicles")
        assert_problem(limited, 429)
        assert limited.headers["retry-after"] == "3"
    unavailable = await api.get("/vehicles")
    assert_problem(unavailable, 503)
    assert "retry-after" not in unavailable.headers
    assert (await fetch_token(api)).status_code == 200  # the token endpoint is not an API route
    assert (await api.get("/vehicles")).status_code == 200


async def test_hang_next_holds_the_answer_until_released(
    fake: FakeEnode, api: httpx.AsyncClient
) -> None:
    vehicle = fake.add_vehicle()["id"]
    fake.hang_next(1)

    hanging = asyncio.create_task(api.get(f"/vehicles/{vehicle}"))
    await asyncio.wait_for(fake.wait_hanging(1), TIMEOUT)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(hanging), 0.1)
    assert (await api.get(f"/vehicles/{vehicle}")).status_code == 200  # others still answer

    fake.release_hanging()

    response = await asyncio.wait_for(hanging, TIMEOUT)
    assert response.status_code == 200
    assert fake.hanging == 0


async def test_a_processed_request_can_hang_after_taking_effect(
    fake: FakeEnode, api: httpx.AsyncClient
) -> None:
    vehicle = fake.add_vehicle(isPluggedIn=True)["id"]
    fake.hang_next(1, processed=True)

    hanging = asyncio.create_task(charge(api, vehicle, "START"))
    await asyncio.wait_for(fake.wait_hanging(1), TIMEOUT)

    assert len(fake.pending_actions(vehicle)) == 1
    fake.release_hanging()
    assert (await asyncio.wait_for(hanging, TIMEOUT)).json()["state"] == "PENDING"


async def test_latency_delays_api_answers(fake: FakeEnode, api: httpx.AsyncClient) -> None:
    fake.latency = 0.2
    started = time.monotonic()

    response = await api.get("/vehicles")

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.2


# ----------------------------------------------------------------- webhooks


async def test_a_delivery_is_signed_over_the_raw_body(
    fake: FakeEnode, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    vehicle = fake.add_vehicle("user-42")["id"]
    events = [fake.vehicle_event(vehicle), fake.credentials_invalidated_event("user-42")]

    responses = await fake.deliver(events, repeat=2)

    assert [r.status_code for r in responses] == [204, 204]
    assert len(receiver.received) == 2
    ids = {headers["x-enode-delivery"] for headers, _ in receiver.received}
    assert len(ids) == 1
    headers, body = receiver.received[0]
    delivered = verified_events(headers, body)
    assert [e["event"] for e in delivered] == [
        "user:vehicle:updated",
        "user:credentials:invalidated",
    ]
    assert delivered[0]["version"] == API_VERSION
    assert delivered[0]["user"] == {"id": "user-42"}
    assert VehicleData.from_enode(delivered[0]["vehicle"]).id == vehicle

    await fake.deliver(events, signature="sha1=forged")
    assert receiver.received[-1][0]["x-enode-signature"] == "sha1=forged"


async def test_webhook_registration_does_not_echo_the_secret(
    fake: FakeEnode, api: httpx.AsyncClient
) -> None:
    response = await api.post(
        "/webhooks", json={"url": "http://127.0.0.1:9/hook", "secret": "x", "events": ["*"]}
    )

    assert response.status_code == 200
    assert "secret" not in response.json()
    assert fake.webhook is not None
    assert fake.webhook["secret"] == "x"
    assert response.json()["id"] == fake.webhook["id"]
    assert_problem(await api.post("/webhooks", json={"url": "ftp://x", "secret": "x"}), 400)


async def test_resolving_an_action_delivers_vehicle_and_action_events(
    fake: FakeEnode, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    vehicle = fake.add_vehicle(isPluggedIn=True)["id"]
    start = (await charge(api, vehicle, "START")).json()

    await fake.resolve_action_and_notify(start["id"])

    assert len(receiver.received) == 1
    vehicle_event, action_event = verified_events(*receiver.received[0])
    assert vehicle_event["event"] == "user:vehicle:updated"
    assert vehicle_event["vehicle"]["chargeState"]["isCharging"] is True
    assert "chargeState.isCharging" in vehicle_event["updatedFields"]
    assert action_event["event"] == "user:vendor-action:updated"
    assert ChargeAction.from_enode(action_event["vendorAction"]).state == "CONFIRMED"


async def test_resolve_action_delivers_in_the_background_unless_disabled(
    fake: FakeEnode, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    vehicle = fake.add_vehicle(isPluggedIn=True)["id"]
    start = (await charge(api, vehicle, "START")).json()

    fake.resolve_action(start["id"], "FAILED", "FAILED_PRECONDITION")
    await asyncio.wait_for(fake.wait_deliveries(), TIMEOUT)

    (only,) = verified_events(*receiver.received[0])
    assert only["vendorAction"]["failureReason"]["type"] == "FAILED_PRECONDITION"

    fake.webhooks_enabled = False
    again = (await charge(api, vehicle, "START")).json()
    await fake.resolve_action_and_notify(again["id"])
    assert len(receiver.received) == 1


# -------------------------------------------------------------------- links


async def test_link_returns_a_url_under_the_fake(
    base_url: str, api: httpx.AsyncClient, fake: FakeEnode
) -> None:
    body = {
        "vendorType": "vehicle",
        "scopes": ["vehicle:read:data", "vehicle:control:charging"],
        "language": "en-US",
        "redirectUri": "https://example.com/done",
    }

    response = await api.post("/users/user-1/link", json=body)

    assert response.status_code == 200
    link = response.json()
    assert link["linkUrl"] == f"{base_url}/link/{link['linkToken']}"
    assert fake.links[link["linkToken"]]["userId"] == "user-1"
    assert (await api.get(link["linkUrl"])).status_code == 200
    assert_problem(await api.post("/users/user-1/link", json={"vendorType": "vehicle"}), 400)
