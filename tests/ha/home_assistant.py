"""A real Home Assistant of a test's own: its process, onboarding, and a websocket
client that follows its states.

Home Assistant runs from its own virtualenv (``make ha-test`` builds ``.venv-ha``
with the pinned release; ``EVLINK_TEST_HASS`` names its ``hass``), on a free port
of 127.0.0.1 with a fresh configuration folder. It is never given a broker in
configuration.yaml (2024.x refuses that): the test adds the MQTT integration
through the config flow API, as a user does in the UI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import websockets

from tests.conftest import free_port

__all__ = ["HomeAssistant", "home_assistant"]

STARTUP_TIMEOUT = 300.0  # seconds: the first start may install requirements
TIMEOUT = 30.0  # seconds any awaited state may take
USERNAME, PASSWORD = "test", "test-password-1"  # the owner made at onboarding

CONFIGURATION = """\
homeassistant:
  name: evlink test
  unit_system: metric
  time_zone: UTC
  latitude: 0
  longitude: 0
  elevation: 0
  currency: EUR
  country: DE
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
config:
onboarding:
frontend:
logger:
  default: warning
  logs:
    homeassistant.core: info
    homeassistant.bootstrap: info
"""


class HomeAssistant:
    def __init__(self, base_url: str, tokens: dict[str, Any], http: httpx.AsyncClient) -> None:
        self.base_url = base_url
        self.tokens = tokens
        self.token: str = tokens["access_token"]
        self.http = http
        self.states: dict[str, dict[str, Any]] = {}
        self._changed = asyncio.Condition()

    async def add_mqtt(self, host: str, port: int) -> dict[str, Any]:
        """The MQTT integration through its config flow, as the UI adds it."""
        flow = await self._post("/api/config/config_entries/flow", {"handler": "mqtt"})
        assert flow.get("step_id") == "broker", flow
        done = await self._post(
            f"/api/config/config_entries/flow/{flow['flow_id']}", {"broker": host, "port": port}
        )
        assert done.get("type") == "create_entry", done
        return done

    def ui_tokens_script(self) -> str:
        """JS that stores this session's tokens where HA's frontend looks for them
        (localStorage ``hassTokens``, as "keep me logged in" does)."""
        stored = {**self.tokens, "hassUrl": self.base_url, "clientId": self.base_url + "/"}
        return (
            "localStorage.setItem('hassTokens', JSON.stringify(Object.assign("
            f"{json.dumps(stored)}, {{expires: Date.now() + 1800000}})))"
        )

    async def template(self, template: str) -> str:
        response = await self.http.post("/api/template", json={"template": template})
        assert response.status_code == 200, response.text
        return response.text

    async def call(self, domain: str, service: str, **data: Any) -> None:
        await self._post(f"/api/services/{domain}/{service}", data)

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        # A first flow installs the integration's requirements (paho-mqtt) meanwhile.
        response = await self.http.post(path, json=body, timeout=STARTUP_TIMEOUT)
        assert response.status_code < 300, (path, response.status_code, response.text)
        return response.json()

    async def follow(self) -> None:
        """Keep :attr:`states` current through the websocket API (state_changed events)."""
        url = self.base_url.replace("http://", "ws://") + "/api/websocket"
        async with websockets.connect(url, max_size=None) as socket:
            await socket.recv()  # auth_required
            await socket.send(json.dumps({"type": "auth", "access_token": self.token}))
            assert json.loads(await socket.recv())["type"] == "auth_ok"
            await socket.send(
                json.dumps({"id": 1, "type": "subscribe_events", "event_type": "state_changed"})
            )
            await socket.send(json.dumps({"id": 2, "type": "get_states"}))
            async for raw in socket:
                message = json.loads(raw)
                async with self._changed:
                    if message.get("id") == 2 and message.get("type") == "result":
                        for state in message["result"]:
                            self.states.setdefault(state["entity_id"], state)
                    elif message.get("type") == "event":
                        data = message["event"]["data"]
                        if data.get("new_state") is not None:
                            self.states[data["entity_id"]] = data["new_state"]
                    self._changed.notify_all()

    async def wait(
        self, check: Callable[[dict[str, dict[str, Any]]], Any], timeout: float = TIMEOUT
    ) -> Any:
        """The first truthy ``check(states)``, re-checked on each change (bounded)."""
        async with asyncio.timeout(timeout), self._changed:
            while True:
                result = check(self.states)
                if result:
                    return result
                await self._changed.wait()

    async def wait_state(
        self, entity_id: str, check: Callable[[str], bool], timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        def holds(states: dict[str, dict[str, Any]]) -> Any:
            state = states.get(entity_id)
            return state if state is not None and check(state["state"]) else None

        result: dict[str, Any] = await self.wait(holds, timeout)
        return result


async def _started(process: asyncio.subprocess.Process) -> None:
    assert process.stdout is not None
    async with asyncio.timeout(STARTUP_TIMEOUT):
        async for line in process.stdout:
            if b"Home Assistant initialized" in line:
                return
        raise AssertionError("Home Assistant exited before it started")


async def _drain(stream: asyncio.StreamReader, log: Path) -> None:
    with log.open("ab") as out:
        while line := await stream.readline():
            out.write(line)


async def _onboard(http: httpx.AsyncClient, base_url: str) -> dict[str, Any]:
    """The owner account made through onboarding; returns its tokens."""
    client_id = base_url + "/"
    made = await http.post(
        "/api/onboarding/users",
        json={
            "client_id": client_id,
            "name": "Test",
            "username": USERNAME,
            "password": PASSWORD,
            "language": "en",
        },
    )
    assert made.status_code == 200, made.text
    token = await http.post(
        "/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": made.json()["auth_code"],
            "client_id": client_id,
        },
    )
    assert token.status_code == 200, token.text
    tokens: dict[str, Any] = token.json()
    # The other steps, as the UI's "Next" buttons do: the UI shows onboarding until then.
    # core_config marks itself done, then sets up Google Translate, Met and others, whose
    # packages this Home Assistant does not have: that part fails (500) and is not needed.
    owner = {"Authorization": f"Bearer {tokens['access_token']}"}
    for step, body in (
        ("core_config", {}),
        ("analytics", {}),
        ("integration", {"client_id": client_id, "redirect_uri": client_id}),
    ):
        await http.post(f"/api/onboarding/{step}", json=body, headers=owner)
    steps = (await http.get("/api/onboarding")).json()
    assert all(step["done"] for step in steps), steps
    return tokens


def _write_configuration(config_dir: Path, port: int) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "configuration.yaml").write_text(CONFIGURATION.format(port=port))


@contextlib.asynccontextmanager
async def home_assistant(hass: str, config_dir: Path) -> AsyncIterator[HomeAssistant]:
    """Home Assistant on a free port with a fresh configuration, until the block ends."""
    port = free_port()
    _write_configuration(config_dir, port)
    process = await asyncio.create_subprocess_exec(
        hass,
        "-c",
        str(config_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    drain: asyncio.Task[None] | None = None
    try:
        await _started(process)
        assert process.stdout is not None
        drain = asyncio.create_task(_drain(process.stdout, config_dir / "hass-output.log"))
        base_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as http:
            tokens = await _onboard(http, base_url)
            http.headers["Authorization"] = f"Bearer {tokens['access_token']}"
            ha = HomeAssistant(base_url, tokens, http)
            following = asyncio.create_task(ha.follow())
            try:
                yield ha
            finally:
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await following
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()
        if drain is not None:
            drain.cancel()
