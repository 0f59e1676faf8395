"""The Enode webhook receiver: ``POST /api/webhooks/enode``.

The signature (``x-enode-signature: sha1=<hex>``, an HMAC-SHA1 of the raw body
with ``EVLINK_ENODE_WEBHOOK_SECRET``) is checked in constant time before the
body is parsed; an oversized body is refused while it is read. An accepted
delivery is written to the database first, answered at once, and worked off
after the answer. A delivery id already seen (Enode retrying), or a body already
seen under another id (a replay: the signature covers the body, not the id), is
acknowledged and ignored. Deliveries that were accepted but not worked off (a
crash) are resumed when the app starts. Out-of-order events cannot move state
backwards: the recording functions keep the newer ``lastUpdated`` /
``updatedAt``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import UTC, datetime
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse
from tortoise.exceptions import IntegrityError
from tortoise.queryset import QuerySet

from evlink import jsonbody
from evlink.cache import user_tag, vehicle_tag
from evlink.domain import ChargeAction, VehicleData
from evlink.errors import BadRequest, NotFound, PayloadTooLarge, Unauthenticated
from evlink.events import delivery_topic
from evlink.models import User, Vehicle, WebhookDelivery
from evlink.resolvers.accounts import upsert_provider_vehicle
from evlink.resolvers.charging import ingest_provider_update
from evlink.resolvers.vehicles import record_vehicle_data
from evlink.services import Services

__all__ = ["enode_webhook", "resume_deliveries", "signature_for"]

logger = logging.getLogger(__name__)

PROVIDER = "enode"


def signature_for(secret: str, body: bytes) -> str:
    """The ``x-enode-signature`` value for ``body``."""
    return "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdecimal() and int(declared) > limit:
        raise PayloadTooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


async def enode_webhook(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    secret = services.settings.enode_webhook_secret
    if services.provider.name != PROVIDER or not secret:
        raise NotFound("Webhooks are not configured")
    body = await _read_body(request, services.settings.webhook_max_body)
    given = request.headers.get("x-enode-signature", "")
    if not hmac.compare_digest(signature_for(secret, body).encode(), given.encode()):
        logger.info("webhook: refused a delivery with a bad signature")
        raise Unauthenticated("Invalid webhook signature")
    try:
        events = jsonbody.loads(body)
    except jsonbody.Refused as refused:
        raise BadRequest(refused.msg) from None
    except json.JSONDecodeError:
        raise BadRequest("The body is not JSON") from None
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise BadRequest("The body must be a JSON array of events")
    body_hash = hashlib.sha256(body).hexdigest()
    delivery_id = request.headers.get("x-enode-delivery") or body_hash
    try:
        await WebhookDelivery.create(
            id=delivery_id[:128], provider=PROVIDER, body=events, body_sha256=body_hash
        )
    except IntegrityError:
        # The same delivery id (Enode retrying), or the same signed body under another id
        # (a replay): acknowledged, and nothing happens again.
        logger.info("webhook: delivery %s seen before; ignored", delivery_id)
        return JSONResponse({"status": "duplicate"})
    return JSONResponse(
        {"status": "accepted", "events": len(events)},
        background=BackgroundTask(process_delivery, services, delivery_id[:128]),
    )


async def process_delivery(services: Services, delivery_id: str) -> None:
    delivery = await WebhookDelivery.get_or_none(id=delivery_id, processed_at=None)
    if delivery is None:
        return
    for event in delivery.body:
        try:
            await handle_event(services, event)
        except Exception:
            logger.exception(
                "webhook: event %s of delivery %s failed", event.get("event"), delivery_id
            )
    await WebhookDelivery.filter(id=delivery_id).update(processed_at=datetime.now(UTC))
    await services.events.publish(delivery_topic(delivery_id), {"id": delivery_id})


async def resume_deliveries(services: Services) -> None:
    """Work off deliveries accepted before a crash."""
    for delivery_id in await WebhookDelivery.filter(
        provider=PROVIDER, processed_at=None
    ).values_list("id", flat=True):
        await process_delivery(services, str(delivery_id))


async def handle_event(services: Services, event: dict[str, Any]) -> None:
    name = event.get("event")
    user_id = str((event.get("user") or {}).get("id") or "")
    if name in ("user:vehicle:discovered", "user:vehicle:updated"):
        await _vehicle_seen(services, user_id, VehicleData.from_enode(event["vehicle"]))
    elif name == "user:vehicle:deleted":
        vehicle_id = str((event.get("vehicle") or {}).get("id") or "")
        deleted = Vehicle.filter(provider=PROVIDER, provider_vehicle_id=vehicle_id, deleted_at=None)
        await _updating(services, deleted, deleted_at=datetime.now(UTC))
    elif name == "user:vendor-action:updated":
        await ingest_provider_update(services, ChargeAction.from_enode(event["vendorAction"]))
    elif name == "user:credentials:invalidated":
        unreachable = Vehicle.filter(provider=PROVIDER, provider_user_id=user_id)
        await _updating(services, unreachable, is_reachable=False)
    elif name in ("system:heartbeat", "enode:webhook:test"):
        return
    else:
        logger.info("webhook: event %r ignored", name)


async def _updating(services: Services, vehicles: QuerySet[Vehicle], **values: Any) -> None:
    """Update ``vehicles`` and invalidate them (and their owners' lists) in the read cache."""
    touched = await vehicles.values_list("id", "user_id")
    await vehicles.update(**values)
    tags = {vehicle_tag(vehicle_id) for vehicle_id, _ in touched}
    tags |= {user_tag(owner_id) for _, owner_id in touched}
    await services.cache.invalidate(*sorted(tags))


async def _vehicle_seen(services: Services, enode_user_id: str, data: VehicleData) -> None:
    """Record a vehicle Enode reports, adding it to the linked evlink user on first sight."""
    vehicle = await Vehicle.get_or_none(provider=PROVIDER, provider_vehicle_id=data.id)
    if vehicle is not None and vehicle.deleted_at is None:
        await record_vehicle_data(services, vehicle, data)
        return
    owner = await User.get_or_none(enode_user_id=enode_user_id or data.user_id)
    if owner is None:
        logger.warning("webhook: vehicle %s belongs to no linked evlink user", data.id)
        return
    await upsert_provider_vehicle(services, owner, data)
