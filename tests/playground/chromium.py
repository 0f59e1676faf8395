"""Headless Chromium on 127.0.0.1, driven over the DevTools protocol (a websocket).

Debian's ``chromium`` runs with a fresh profile and a network that reaches only
127.0.0.1: every host name resolves to nothing and any proxied request goes to
a closed port. Waits are conditions evaluated in the page until they hold or a
deadline passes, never sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

__all__ = ["CHROMIUM", "Chromium", "DevToolsError", "Page", "launch"]

CHROMIUM = shutil.which("chromium")
TIMEOUT = 15.0  # seconds: any one step of a browser test

FLAGS = (
    "--headless",
    "--no-sandbox",  # root in CI; the pages are our own
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1",
    "--window-size=1280,800",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)

# Resolves once ``condition`` (a JS expression) is truthy; rejects after the
# deadline with what it waited for. It is checked on each DOM change, and every
# 50 ms for state that lives outside the DOM (an editor's parsed operation).
_WAIT_JS = """
new Promise((resolve, reject) => {
  const condition = () => { try { return (%(condition)s); } catch (e) { return null; } };
  const observer = new MutationObserver(() => check());
  const ticker = setInterval(() => check(), 50);
  const stop = () => { observer.disconnect(); clearInterval(ticker); clearTimeout(timer); };
  const timer = setTimeout(() => {
    stop();
    reject(new Error("timed out waiting for: " + %(description)s));
  }, %(timeout_ms)d);
  const check = () => {
    const value = condition();
    if (value) {
      stop();
      resolve(value instanceof Node ? true : value);  // an element cannot travel as JSON
    }
  };
  observer.observe(document, {subtree: true, childList: true, characterData: true,
                              attributes: true});
  check();
})
"""


class DevToolsError(Exception):
    """The browser answered a command with an error, or a page script failed."""


@dataclass
class Page:
    """One tab, attached with its own DevTools session."""

    browser: Chromium
    session_id: str
    requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # console errors, exceptions, CSP
    _loaded: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, method: str, timeout: float = TIMEOUT, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, params, session_id=self.session_id, timeout=timeout)

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Network.webSocketCreated":
            self.requests.append(params["url"])
        elif method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.problems.append(details.get("exception", {}).get("description") or str(details))
        elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
            self.problems.append(" ".join(str(a.get("value", a)) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.problems.append(params["entry"]["text"])

    async def goto(self, url: str) -> None:
        """Open ``url`` and return once its load event has fired."""
        self._loaded.clear()
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise DevToolsError(f"navigation to {url} failed: {result['errorText']}")
        await asyncio.wait_for(self._loaded.wait(), TIMEOUT)

    async def evaluate(self, expression: str, timeout: float = TIMEOUT) -> Any:
        """The value of a JS expression (awaited when it is a promise)."""
        result = await self.send(
            "Runtime.evaluate",
            timeout=timeout,
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            message = details.get("exception", {}).get("description") or details.get("text")
            raise DevToolsError(message)
        return result["result"].get("value")

    async def wait_for(self, condition: str, description: str, timeout: float = TIMEOUT) -> Any:
        """The truthy value of ``condition`` once the page reaches it (DevToolsError if not)."""
        script = _WAIT_JS % {
            "condition": condition,
            "description": json.dumps(description),
            "timeout_ms": int(timeout * 1000),
        }
        # The page's own deadline fires first and says what it waited for.
        return await self.evaluate(script, timeout=timeout + 5)

    async def click(self, selector: str, text: str | None = None) -> None:
        """A real mouse click in the middle of the first element that ``selector`` finds
        (with exactly ``text`` as its text, when given)."""
        box = await self.evaluate(
            f"""(() => {{
              const found = [...document.querySelectorAll({json.dumps(selector)})].find(
                e => {json.dumps(text)} === null || e.innerText.trim() === {json.dumps(text)});
              if (!found) throw new Error({json.dumps(f"nothing to click: {selector} {text}")});
              const r = found.getBoundingClientRect();
              return {{x: r.x + r.width / 2, y: r.y + r.height / 2}};
            }})()"""
        )
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box["x"],
                y=box["y"],
                button="left" if kind != "mouseMoved" else "none",
                clickCount=1,
            )

    async def type_into(self, selector: str, text: str) -> None:
        """Focus the element and type ``text`` as a keyboard would insert it."""
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", text=text)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))


class Chromium:
    """The browser end of a DevTools websocket: commands by id, events by session."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, Page] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self._connection:
            message = json.loads(raw)
            if "id" in message:
                future = self._pending.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
            elif (page := self._pages.get(message.get("sessionId", ""))) is not None:
                page.on_event(message["method"], message.get("params", {}))

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        timeout: float = TIMEOUT,
    ) -> dict[str, Any]:
        command_id = next(self._ids)
        message: dict[str, Any] = {"id": command_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        future = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        await self._connection.send(json.dumps(message))
        answer = await asyncio.wait_for(future, timeout)
        if "error" in answer:
            raise DevToolsError(f"{method}: {answer['error'].get('message')}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def new_page(self) -> Page:
        """A blank tab with page, network, runtime and log events on."""
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        self._pages[page.session_id] = page
        for domain in ("Page", "Network", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        return page

    async def aclose(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._connection.close()


async def _devtools_url(stderr: asyncio.StreamReader, log: deque[str]) -> str:
    """The browser's websocket address, from its 'DevTools listening on ws://…' line."""
    while line := (await stderr.readline()).decode(errors="replace"):
        log.append(line.rstrip())
        if line.startswith("DevTools listening on "):
            return line.removeprefix("DevTools listening on ").strip()
    raise DevToolsError("chromium exited before it listened:\n" + "\n".join(log))


async def _drain(stderr: asyncio.StreamReader, log: deque[str]) -> None:
    # A full stderr pipe would stall the browser.
    while line := await stderr.readline():
        log.append(line.decode(errors="replace").rstrip())


@contextlib.asynccontextmanager
async def launch(profile_dir: Path) -> AsyncIterator[Chromium]:
    """A headless Chromium with a fresh profile in ``profile_dir``, ended with the block."""
    assert CHROMIUM is not None, "chromium is not installed"
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={profile_dir}",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    log: deque[str] = deque(maxlen=200)
    drain: asyncio.Task[None] | None = None
    try:
        url = await asyncio.wait_for(_devtools_url(process.stderr, log), TIMEOUT)
        drain = asyncio.create_task(_drain(process.stderr, log))
        async with websockets.connect(url, max_size=None) as connection:
            browser = Chromium(connection)
            try:
                yield browser
            finally:
                await browser.aclose()
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()
        if drain is not None:
            await drain
