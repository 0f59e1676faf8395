"""The playground in a real browser: headless Chromium against the test server.

The browser reaches nothing but 127.0.0.1, so a page that needed a CDN would
fail here. The test uses the demo account's key the way a person would: typed
into the key field, then the example tabs run as they come.

``EVLINK_UPDATE_SCREENSHOTS=1`` also writes the screenshot to docs/playground.png.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from evlink.resolvers import accounts
from tests.conftest import Server
from tests.playground.chromium import CHROMIUM, Page, launch

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (`apt-get install chromium`; .ci/run installs it)",
)

DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "playground.png"

# What the result pane shows: CodeMirror keeps its text on the element it draws in.
RESPONSE_TEXT = (
    "(() => { const e = document.querySelector('.graphiql-response .CodeMirror');"
    " return e ? e.CodeMirror.getValue() : ''; })()"
)
VARIABLES_EDITOR = ".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror"


async def shown_result(page: Page, *fragments: str) -> dict[str, Any]:
    """The result pane's JSON, once it shows every one of ``fragments``."""
    condition = " && ".join(f"text.includes({json.dumps(f)})" for f in fragments)
    text = await page.wait_for(
        f"(() => {{ const text = {RESPONSE_TEXT}; return {condition} && text; }})()",
        f"the result to show {', '.join(fragments)}",
    )
    result: dict[str, Any] = json.loads(text)
    return result


async def run_tab(page: Page, tab: str, variables: dict[str, str]) -> None:
    """Open an example tab, fill its variables and press the run button."""
    await page.click(".graphiql-tab-button", text=tab)
    # GraphiQL parses the tab's query a moment after it shows: run only once the
    # editor knows the operation (as a person's slower hand would).
    await page.wait_for(
        f"document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror"
        f".operationName === {json.dumps(tab)}",
        f"the {tab} tab",
    )
    # Filling CodeMirror through its own API: key by key would only be slower.
    await page.evaluate(
        f"document.querySelector({json.dumps(VARIABLES_EDITOR)})"
        f".CodeMirror.setValue({json.dumps(json.dumps(variables))})"
    )
    await page.click(".graphiql-execute-button")


async def test_playground_runs_the_examples_with_the_demo_key(
    server: Server, tmp_path: Path
) -> None:
    demo = await accounts.ensure_demo()
    plugged = next(v for v in demo.vehicles if "plugged in" in (v.name or ""))

    async with launch(tmp_path / "profile") as browser:
        page = await browser.new_page()
        await page.goto(f"{server.base_url}/graphql")
        await page.wait_for("document.querySelector('.graphiql-execute-button')", "GraphiQL")

        # The first tab is the vehicles query: the key, then the run button.
        await page.type_into("#evlink-api-key", demo.key.secret)
        await page.click(".graphiql-execute-button")
        shown = await shown_result(page, '"vehicles"', '"batteryLevel"')
        assert shown["data"]["viewer"] == {"email": accounts.DEMO_EMAIL, "tier": "PRO"}
        cars = {car["id"]: car for car in shown["data"]["vehicles"]}
        assert set(cars) == {str(vehicle.id) for vehicle in demo.vehicles}
        for vehicle in demo.vehicles:
            status = await server.http.get(
                f"/api/status/{vehicle.id}",
                headers={"Authorization": f"Bearer {demo.key.secret}"},
            )
            state = cars[str(vehicle.id)]["chargeState"]
            assert state["batteryLevel"] == status.json()["chargeState"]["batteryLevel"]
            assert state["powerDeliveryState"] == status.json()["chargingState"]
        screenshot = tmp_path / "playground.png"
        await page.screenshot(screenshot)
        if os.environ.get("EVLINK_UPDATE_SCREENSHOTS") == "1":
            DOCS_SCREENSHOT.write_bytes(screenshot.read_bytes())

        # The mutation tab starts charging the plugged-in car...
        await run_tab(page, "StartCharging", {"vehicleId": str(plugged.id), "action": "START"})
        started = (await shown_result(page, '"setCharging"'))["data"]["setCharging"]
        assert started["state"] == "PENDING"

        # ...and the subscription tab follows the command over the websocket, whose
        # connection_init carries the key: PENDING now, CONFIRMED once the car charges.
        await run_tab(page, "FollowChargingCommand", {"id": started["id"]})
        following = await shown_result(page, '"chargingCommand"', '"PENDING"')
        assert following["data"]["chargingCommand"]["id"] == started["id"]
        await server.clock.advance(2)  # the simulated car takes the action after 1 s
        confirmed = await shown_result(page, '"chargingCommand"', '"CONFIRMED"')
        assert confirmed["data"]["chargingCommand"]["state"] == "CONFIRMED"

    assert page.problems == []
    local = (server.base_url, server.ws_url, "data:")
    assert [url for url in page.requests if not url.startswith(local)] == []
    assert server.ws_url in page.requests  # the subscription really went over a websocket
