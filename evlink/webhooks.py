"""The Enode webhook receiver: ``POST /api/webhooks/enode``.

The signature (``x-enode-signature: sha1=<hex>``, an HMAC-SHA1 of the raw body
with ``EVLINK_ENODE_WEBHOOK_SECRET``) is checked in constant time before the
body is parsed; a body over ``EVLINK_WEBHOOK_MAX_BODY`` is refused while it is
read (:func:`body_limits`, applied by :class:`evlink.guards.BodyLimits`). An accepted
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

from evlink import jsonbody
from evlink.domain import ChargeAction, VehicleData
from evlink.errors import BadRequest, NotFound, Unauthenticated
from evlink.events import delivery_topic
from evlink.models import WebhookDelivery
from evlink.resolvers import accounts, vehicles
from evlink.resolvers.charging import ingest_provider_update
from evlink.services import Services
from evlink.settings import Settings

__all__ = ["PATH", "body_limits", "enode_webhook", "resume_deliveries", "signature_for"]

logger = logging.getLogger(__name__)

PROVIDER = "enode"
PATH = "/api/webhooks/enode"


def body_limits(settings: Settings) -> dict[str, int]:
    """The webhook's own body limit by path, for :class:`evlink.guards.BodyLimits`."""
    return {PATH: settings.webhook_max_body}


def signature_for(secret: str, body: bytes) -> str:
    """The ``x-enode-signature`` value for ``body``."""
    return "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


async def enode_webhook(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    secret = services.settings.enode_webhook_secret
    if services.provider.name != PROVIDER or not secret:
        raise NotFound("Webhooks are not configured")
    body = await request.body()  # at most EVLINK_WEBHOOK_MAX_BODY: body_limits
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
        data = VehicleData.from_enode(event["vehicle"])
        await accounts.ingest_reported_vehicle(services, user_id, data)
    elif name == "user:vehicle:deleted":
        vehicle_id = str((event.get("vehicle") or {}).get("id") or "")
        await vehicles.provider_vehicle_deleted(services, vehicle_id)
    elif name == "user:vendor-action:updated":
        await ingest_provider_update(services, ChargeAction.from_enode(event["vendorAction"]))
    elif name == "user:credentials:invalidated":
        await vehicles.provider_account_unreachable(services, user_id)
    elif name in ("system:heartbeat", "enode:webhook:test"):
        return
    else:
        logger.info("webhook: event %r ignored", name)
