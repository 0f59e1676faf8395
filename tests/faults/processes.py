"""The processes a fault test runs: `evlink serve` instances and a redis-server of its own.

Both start on a free port of 127.0.0.1 and are waited on by what they print (no
sleeps); both are stopped when the test's block ends, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

from tests.conftest import TIMEOUT, free_port

__all__ = ["EvlinkProcess"]


class EvlinkProcess:
    """`evlink serve` in a process of its own, logging JSON lines that the test reads.

    ``records`` holds every log line as a dict (``level``, ``logger``, ``message``,
    ``exception``); a line that is not JSON (a raw traceback) is kept as
    ``{"level": "RAW", "message": line}``.
    """

    def __init__(self, **environment: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/graphql"
        self.environment = environment
        self.records: list[dict[str, Any]] = []
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._new_record = asyncio.Condition()
        self._log_ended = False  # the process closed its stderr (it ended)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[EvlinkProcess]:
        env = {
            **os.environ,
            "EVLINK_HOST": "127.0.0.1",
            "EVLINK_PORT": str(self.port),
            "EVLINK_LOG_FORMAT": "json",
            "EVLINK_LOG_LEVEL": "INFO",
            **self.environment,
        }
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "evlink.cli",
            "serve",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read_log())
        try:
            await self.wait_for("Application startup complete")
            yield self
        finally:
            await self._stop()

    async def wait_for(self, text: str, since: int = 0) -> dict[str, Any]:
        """The first log record from index ``since`` whose message holds ``text``."""

        def found() -> dict[str, Any] | None:
            return next((r for r in self.records[since:] if text in r["message"]), None)

        async with asyncio.timeout(TIMEOUT), self._new_record:
            await self._new_record.wait_for(lambda: found() is not None or self._log_ended)
        record = found()
        assert record is not None, f"the server ended before logging {text!r}: {self.records}"
        return record

    def count(self, text: str, *, level: str, since: int = 0) -> int:
        return sum(1 for r in self.records[since:] if r["level"] == level and text in r["message"])

    def failures(self, since: int = 0) -> list[dict[str, Any]]:
        """Records at ERROR or above, tracebacks and raw lines, from index ``since``."""
        return [
            r
            for r in self.records[since:]
            if r["level"] in ("ERROR", "CRITICAL", "RAW") or r.get("exception")
        ]

    async def _read_log(self) -> None:
        assert self._process is not None
        assert self._process.stderr is not None
        async for raw in self._process.stderr:
            line = raw.decode(errors="replace").rstrip()
            try:
                record = json.loads(line)
            except ValueError:
                record = {"level": "RAW", "message": line}
            async with self._new_record:
                self.records.append(record)
                self._new_record.notify_all()
        async with self._new_record:
            self._log_ended = True
            self._new_record.notify_all()

    async def _stop(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, TIMEOUT)
