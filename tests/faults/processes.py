"""The processes a fault test runs: `evlink serve` instances and a redis-server of its own.

Both start on a free port of 127.0.0.1 and are waited on by what they print (no
sleeps); both are stopped when the test's block ends, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from tests.conftest import TIMEOUT, ServerLog, serve_process

__all__ = ["EvlinkProcess"]


class _JsonLog(ServerLog):
    """A server's log that also reads each line as a JSON record."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []

    def add(self, line: bytes) -> None:
        text = line.decode(errors="replace").rstrip()
        try:
            record = json.loads(text)
        except ValueError:
            record = {"level": "RAW", "message": text}
        self.records.append(record)
        super().add(line)


class EvlinkProcess:
    """`evlink serve` in a process of its own (tests.conftest.serve_process), logging
    JSON lines that the test reads, and told to stop (SIGTERM) when the block ends.

    ``records`` holds every log line as a dict (``level``, ``logger``, ``message``,
    ``exception``); a line that is not JSON (a raw traceback) is kept as
    ``{"level": "RAW", "message": line}``. ``environment`` holds the ``EVLINK_*``
    variables, ``EVLINK_DATABASE_URL`` among them.
    """

    def __init__(self, **environment: str) -> None:
        self.environment = environment
        self.base_url = ""
        self.ws_url = ""
        self._log = _JsonLog()

    @property
    def records(self) -> list[dict[str, Any]]:
        return self._log.records

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[EvlinkProcess]:
        env = {"EVLINK_LOG_FORMAT": "json", **self.environment}
        database_url = env.pop("EVLINK_DATABASE_URL")
        async with serve_process(database_url, log=self._log, graceful=True, **env) as url:
            self.base_url = url
            self.ws_url = url.replace("http://", "ws://", 1) + "/graphql"
            yield self

    async def wait_for(self, text: str, since: int = 0) -> dict[str, Any]:
        """The first log record from index ``since`` whose message holds ``text``."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                record = next((r for r in self.records[since:] if text in r["message"]), None)
                if record is not None:
                    return record
                assert not self._log.ended, f"the server ended before logging {text!r}"
                await self._log.changed()

    def count(self, text: str, *, level: str, since: int = 0) -> int:
        return sum(1 for r in self.records[since:] if r["level"] == level and text in r["message"])

    def failures(self, since: int = 0) -> list[dict[str, Any]]:
        """Records at ERROR or above, tracebacks and raw lines, from index ``since``."""
        return [
            r
            for r in self.records[since:]
            if r["level"] in ("ERROR", "CRITICAL", "RAW") or r.get("exception")
        ]
