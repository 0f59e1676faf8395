"""The Enode provider: vehicles read and controlled through Enode's API over httpx.

Every upstream failure is translated here, once, into evlink's errors:

- a timeout is 504, a connection error or 5xx is 502, 429/503 are 503 with the
  provider's ``Retry-After``, raised at once (never waited out: the breaker holds
  every call until then, and a read serves the stored state meanwhile);
- repeated failures open a circuit breaker: for a cool-down every call answers
  503 with ``Retry-After`` at once instead of hammering Enode;
- 400 on a charging action is INVALID_VEHICLE_STATE, 422 is
  SMART_CHARGING_ACTIVE, 404 is NOT_FOUND.

Idempotent reads are retried with backoff (bounded); writes never are, except
once after a 401, which Enode answers before doing anything. The problem+json
``detail`` of an error goes to the log, never to a client.

OAuth2 client credentials: the token is cached, refreshed shortly before it
expires and once on a 401; concurrent requests share one token fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from evlink.domain import ChargeAction, ChargingAction, VehicleData
from evlink.errors import (
    BadRequest,
    EvlinkError,
    InvalidVehicleState,
    NotFound,
    ProviderUnavailable,
    SmartChargingActive,
)
from evlink.providers.base import UpdateSink
from evlink.settings import Settings

__all__ = ["ENODE_VERSION", "EnodeProvider"]

logger = logging.getLogger(__name__)

ENODE_VERSION = "2024-10-01"
TOKEN_MARGIN = 60.0  # seconds before expiry at which the token is renewed
PAGE_SIZE = 50


class _CircuitBreaker:
    """Opens after ``threshold`` failures in a row, or for as long as a ``Retry-After``
    says; once that time has passed calls go through again, and while failures go on
    each one opens it anew."""

    def __init__(self, threshold: int, cooldown: float, clock: Callable[[], float]) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0

    def check(self) -> None:
        remaining = self._open_until - self._clock()
        if remaining > 0:
            raise ProviderUnavailable(
                "The vehicle provider is unavailable; try again later",
                status=503,
                retry_after=remaining,
            )

    def success(self) -> None:
        self._failures = 0
        self._open_until = 0.0

    def failure(self, retry_after: float | None = None) -> None:
        self._failures += 1
        if retry_after:
            # Enode said when to come back (429/503): nobody calls before then.
            self._open_until = max(self._open_until, self._clock() + retry_after)
        if self._failures >= self.threshold:
            self._open_until = self._clock() + max(self.cooldown, retry_after or 0.0)
            logger.warning(
                "enode: circuit open for %.0f s after %d failures",
                self._open_until - self._clock(),
                self._failures,
            )


class EnodeProvider:
    """A :class:`~evlink.providers.base.Provider` backed by Enode."""

    name = "enode"

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        api_url: str,
        oauth_url: str,
        timeout: float = 10.0,
        max_connections: int = 20,
        retries: int = 3,
        retry_backoff: float = 0.2,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client_id = client_id
        self._client_secret = client_secret
        self._api_url = api_url.rstrip("/")
        self._token_url = oauth_url.rstrip("/") + "/oauth2/token"
        self._retries = max(1, retries)
        self._retry_backoff = retry_backoff
        self._clock = clock
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections),
            transport=transport,
            headers={"Enode-Version": ENODE_VERSION},
        )
        self.breaker = _CircuitBreaker(breaker_threshold, breaker_cooldown, clock)
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()

    @classmethod
    def from_settings(
        cls, settings: Settings, transport: httpx.AsyncBaseTransport | None = None
    ) -> EnodeProvider:
        api_url, oauth_url = settings.enode_urls
        return cls(
            client_id=settings.enode_client_id,
            client_secret=settings.enode_client_secret,
            api_url=api_url,
            oauth_url=oauth_url,
            timeout=settings.enode_timeout,
            max_connections=settings.enode_max_connections,
            retries=settings.enode_retries,
            breaker_threshold=settings.enode_breaker_threshold,
            breaker_cooldown=settings.enode_breaker_cooldown,
            transport=transport,
        )

    # -- Provider protocol -------------------------------------------------

    async def start(self, sink: UpdateSink) -> None:
        """Nothing to start: Enode pushes through webhooks (evlink.webhooks), which feed
        the app's update sink themselves."""

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get_vehicle(self, vehicle_id: str) -> VehicleData:
        body = await self._request("GET", f"/vehicles/{vehicle_id}")
        return VehicleData.from_enode(body)

    async def list_vehicles(self, user_id: str) -> list[VehicleData]:
        """All of a user's vehicles, every page followed to the end."""
        found: list[VehicleData] = []
        after: str | None = None
        for _ in range(10_000):  # bounded: a provider that never ends its pages is a bug
            params: dict[str, str | int] = {"pageSize": PAGE_SIZE}
            if after:
                params["after"] = after
            page = await self._request("GET", f"/users/{user_id}/vehicles", params=params)
            found.extend(VehicleData.from_enode(raw) for raw in page.get("data") or [])
            after = (page.get("pagination") or {}).get("after")
            if not after or not page.get("data"):
                return found
        raise ProviderUnavailable("The provider's vehicle list did not end")

    async def set_charging(self, vehicle_id: str, action: ChargingAction) -> ChargeAction:
        body = await self._request(
            "POST", f"/vehicles/{vehicle_id}/charging", json={"action": action.value}
        )
        return ChargeAction.from_enode(body)

    async def get_action(self, action_id: str) -> ChargeAction:
        return ChargeAction.from_enode(await self._request("GET", f"/vehicles/actions/{action_id}"))

    async def cancel_action(self, action_id: str) -> ChargeAction:
        try:
            body = await self._request("POST", f"/vehicles/actions/{action_id}/cancel")
        except _Conflict:  # already resolved: its final state is the answer
            return await self.get_action(action_id)
        return ChargeAction.from_enode(body)

    # -- Enode-only operations -----------------------------------------------

    async def link_user(self, user_id: str, redirect_uri: str) -> str:
        """The URL where the user connects their vehicle account."""
        body = await self._request(
            "POST",
            f"/users/{user_id}/link",
            json={
                "vendorType": "vehicle",
                "scopes": [
                    "vehicle:read:data",
                    "vehicle:read:location",
                    "vehicle:control:charging",
                ],
                "language": "en-US",
                "redirectUri": redirect_uri,
            },
        )
        return str(body["linkUrl"])

    async def register_webhook(self, url: str, secret: str) -> dict[str, Any]:
        return await self._request(
            "POST",
            "/webhooks",
            json={
                "url": url,
                "secret": secret,
                "apiVersion": ENODE_VERSION,
                "events": [
                    "user:vehicle:discovered",
                    "user:vehicle:updated",
                    "user:vehicle:deleted",
                    "user:vendor-action:updated",
                    "user:credentials:invalidated",
                ],
            },
        )

    # -- HTTP -----------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str | int] | None = None,
    ) -> dict[str, Any]:
        idempotent = method == "GET"
        tries = self._retries if idempotent else 1
        token_renewed = False
        attempt = 0
        while True:
            attempt += 1
            self.breaker.check()
            try:
                token = await self._access_token()
                response = await self._send(method, path, token, json=json, params=params)
            except EvlinkError as failure:
                self.breaker.failure(failure.retry_after)
                if attempt >= tries:
                    raise
                await asyncio.sleep(self._backoff(attempt))
                continue
            if response.status_code == 401 and not token_renewed:
                # Enode refused the token before doing anything: renew once and resend.
                token_renewed = True
                if self._token == token:  # others that failed with it find the new one
                    self._token = None
                attempt -= 1
                continue
            if response.is_success:
                self.breaker.success()
                body = response.json()
                return body if isinstance(body, dict) else {"data": body}
            error = self._translate(method, path, response)
            if isinstance(error, ProviderUnavailable):
                self.breaker.failure(error.retry_after)
                # A Retry-After is never waited out here: the breaker holds the calls.
                if attempt < tries and error.retry_after is None:
                    await asyncio.sleep(self._backoff(attempt))
                    continue
            else:
                self.breaker.success()  # Enode answered sensibly: it is up
            raise error

    async def _send(
        self,
        method: str,
        path: str,
        token: str,
        *,
        json: dict[str, Any] | None,
        params: dict[str, str | int] | None,
    ) -> httpx.Response:
        with _transport_failures(f"{method} {path}"):
            return await self._client.request(
                method,
                self._api_url + path,
                json=json,
                params=params,
                headers={"Authorization": f"Bearer {token}"},
            )

    async def _access_token(self) -> str:
        if self._token is not None and self._clock() < self._token_expires:
            return self._token
        async with self._token_lock:
            # Whoever waited for the lock finds the token the first one fetched.
            if self._token is not None and self._clock() < self._token_expires:
                return self._token
            # Failures here count once against the breaker, where _request catches them.
            with _transport_failures("token request"):
                response = await self._client.post(
                    self._token_url,
                    data={"grant_type": "client_credentials"},
                    auth=(self._client_id, self._client_secret),
                )
            if not response.is_success:
                logger.error(
                    "enode: token request answered %s: %s",
                    response.status_code,
                    _problem_detail(response),
                )
                raise ProviderUnavailable(status=502)
            body = response.json()
            lifetime = float(body.get("expires_in") or 3600)
            self._token = str(body["access_token"])
            self._token_expires = self._clock() + max(0.0, lifetime - TOKEN_MARGIN)
            return self._token

    def _translate(self, method: str, path: str, response: httpx.Response) -> EvlinkError:
        status = response.status_code
        detail = _problem_detail(response)
        logger.warning("enode: %s %s answered %s: %s", method, path, status, detail)
        if status in (429, 503):
            return ProviderUnavailable(
                "The vehicle provider is busy; try again later",
                status=503,
                retry_after=_retry_after(response),
            )
        if status >= 500:
            return ProviderUnavailable(status=502)
        if status == 400 and path.endswith("/charging"):
            return InvalidVehicleState("The provider refused: the vehicle cannot do this now")
        if status == 422:
            return SmartChargingActive()
        if status == 404:
            return NotFound("Not found at the vehicle provider")
        if status == 409 and path.endswith("/cancel"):
            return _Conflict()
        if status == 400:
            return BadRequest("The vehicle provider refused the request")
        return ProviderUnavailable(status=502)

    def _backoff(self, attempt: int) -> float:
        return float(self._retry_backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))


@contextlib.contextmanager
def _transport_failures(what: str) -> Iterator[None]:
    """httpx's transport failures within the block as the table's error, logged once with
    ``what``: a timeout (connect, read, write, pool) is 504, any other (refused, reset,
    protocol) 502. Answers, whatever their status, pass through (``_translate``)."""
    try:
        yield
    except httpx.TimeoutException:
        logger.warning("enode: %s timed out", what)
        raise ProviderUnavailable("The vehicle provider timed out", status=504) from None
    except httpx.TransportError as exc:
        logger.warning("enode: %s failed: %s", what, type(exc).__name__)
        raise ProviderUnavailable(status=502) from None


class _Conflict(EvlinkError):
    """Enode's 409: the action was already resolved."""

    code = "CONFLICT"
    status = 409


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or "")[:500]
    return ""


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None
