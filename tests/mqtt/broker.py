"""A Mosquitto of a test's own, and an MQTT client that keeps what it hears.

Never the machine's shared broker on 1883: each :class:`Mosquitto` listens on a
free port of 127.0.0.1 with its own configuration (anonymous, or with a password
file), keeps nothing on disk, and is stopped when its block ends; ``stop`` and
``start`` again on the same port make a broker restart. :class:`Heard` subscribes
to every topic and lets a test wait (bounded) for what it expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt

from tests.conftest import TIMEOUT, Program, free_port

__all__ = ["Heard", "Mosquitto", "heard", "mosquitto"]

T = TypeVar("T")
MOSQUITTO = "/usr/sbin/mosquitto"


class Mosquitto(Program):
    """One mosquitto process on 127.0.0.1:``port``."""

    def __init__(self, directory: Path, port: int, users: dict[str, str] | None = None) -> None:
        super().__init__()
        self.port = port
        self.directory = directory
        self.users = users
        self.config = self._write_config()
        self.log: list[str] = []  # what it said since it started, line by line
        self._logged = asyncio.Condition()

    def url(self, credentials: str = "") -> str:
        return f"mqtt://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "log_dest stderr"]
        lines.append("log_type error")
        lines.append("log_type warning")
        lines.append("log_type notice")
        lines.append("log_type information")  # "running" is one of these
        if self.users is None:
            lines.append("allow_anonymous true")
        else:
            passwords = self.directory / "passwords"
            passwords.write_text("")
            for name, password in self.users.items():
                subprocess.run(  # noqa: S603 (a fixed tool, the test's own arguments)
                    ["/usr/bin/mosquitto_passwd", "-b", str(passwords), name, password],
                    check=True,
                    capture_output=True,
                )
            # Started as root, mosquitto drops to its own user, which cannot read pytest's
            # private folders: it stays the user that started it.
            lines += ["allow_anonymous false", f"password_file {passwords}", "user root"]
        config = self.directory / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    async def start(self) -> None:
        """Start it and return once it accepts connections."""
        assert self.process is None, "already running"
        self.process = await asyncio.create_subprocess_exec(
            MOSQUITTO,
            "-c",
            str(self.config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            async for line in self.process.stdout:
                if b" running" in line:
                    break
            else:
                raise AssertionError(f"mosquitto on port {self.port} did not start")
        # Keep reading its output: a full pipe would stall the broker.
        self._drain = asyncio.create_task(self._read_log(self.process.stdout))

    async def _read_log(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            async with self._logged:
                self.log.append(line.decode(errors="replace"))
                self._logged.notify_all()

    async def wait_log(self, text: str, count: int = 1) -> None:
        """Until ``count`` lines of its log contain ``text`` (bounded by TIMEOUT)."""
        async with asyncio.timeout(TIMEOUT), self._logged:
            while sum(text in line for line in self.log) < count:
                await self._logged.wait()


@contextlib.asynccontextmanager
async def mosquitto(
    directory: Path, users: dict[str, str] | None = None
) -> AsyncIterator[Mosquitto]:
    broker = Mosquitto(directory, free_port(), users)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float  # the loop's time when it arrived

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Heard:
    """Everything a test client heard, and the client itself (to publish)."""

    client: aiomqtt.Client
    messages: list[Received] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def latest(self, topic: str) -> Received | None:
        for message in reversed(self.messages):
            if message.topic == topic:
                return message
        return None

    def on(self, topic: str) -> list[Received]:
        return [message for message in self.messages if message.topic == topic]

    async def wait(self, check: Callable[[Heard], T | None], timeout: float = TIMEOUT) -> T:
        """The first truthy ``check(self)``, re-checked on each message; fails after
        ``timeout`` seconds."""
        async with asyncio.timeout(timeout), self._changed:
            while True:
                result = check(self)
                if result:
                    return result
                await self._changed.wait()

    async def wait_json(
        self, topic: str, check: Callable[[Any], bool], timeout: float = TIMEOUT
    ) -> Any:
        """The latest JSON on ``topic`` once ``check`` holds for it."""

        def holds(heard: Heard) -> Any:
            message = heard.latest(topic)
            if message is None or not message.payload:
                return None
            value = message.json()
            return value if check(value) else None

        return await self.wait(holds, timeout)

    async def listen(self) -> None:
        async for message in self.client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            received = Received(
                message.topic.value, payload, message.retain, asyncio.get_running_loop().time()
            )
            async with self._changed:
                self.messages.append(received)
                self._changed.notify_all()


@contextlib.asynccontextmanager
async def heard(broker: Mosquitto, *topics: str, **credentials: str) -> AsyncIterator[Heard]:
    """A client subscribed to ``topics`` (default: all) that records what it hears."""
    async with aiomqtt.Client("127.0.0.1", broker.port, **credentials) as client:
        for topic in topics or ("#",):
            await client.subscribe(topic, qos=1)
        recorder = Heard(client)
        listening = asyncio.create_task(recorder.listen())
        try:
            yield recorder
        finally:
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await listening
