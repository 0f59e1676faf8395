"""Pieces shared by the bench servers and the load generators.

The bench servers (:mod:`bench.serve_baseline`, :mod:`bench.serve_evlink`) run in
processes of their own. Each binds a free port on 127.0.0.1, starts uvicorn on it
and, once uvicorn has finished its startup, prints one line
``BENCH-READY {json}`` on stdout. :class:`ServerProcess` starts such a process
and waits for that line (never for a fixed time), then stops it with SIGTERM.

Times that cross processes are ``time.monotonic()`` values: on Linux that is
``CLOCK_MONOTONIC``, one clock for the whole machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import socket
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

__all__ = [
    "DEFAULT_POSTGRES",
    "READY_PREFIX",
    "REPO",
    "ServerError",
    "ServerProcess",
    "announce_ready",
    "listening_socket",
    "percentile",
    "postgres_base",
    "postgres_database",
    "raise_nofile_limit",
    "rss_kib",
]

READY_PREFIX = "BENCH-READY "
REPO = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 60.0  # seconds a bench server may take to migrate, seed and start
STOP_TIMEOUT = 15.0  # seconds a bench server may take to stop after SIGTERM


class ServerError(RuntimeError):
    """A bench server did not start (its stderr tail is in the message)."""


def raise_nofile_limit(wanted: int = 65536) -> int:
    """Raise this process's open-files soft limit towards ``wanted`` (each websocket is a
    file descriptor; 10,000 subscribers need 10,000)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def listening_socket(backlog: int = 2048, port: int = 0) -> socket.socket:
    """A TCP socket listening on ``port`` (0: a free one) of 127.0.0.1.

    ``IPPROTO_TCP`` makes asyncio turn Nagle off on accepted connections.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(backlog)
    return sock


def announce_ready(info: dict[str, Any]) -> None:
    """Print the ready line the orchestrator waits for (one line of JSON)."""
    sys.stdout.write(READY_PREFIX + json.dumps(info) + "\n")
    sys.stdout.flush()


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest-rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class ServerProcess:
    """A bench server in a process of its own: started, waited for, stopped."""

    def __init__(self, name: str, module: str, args: Sequence[str], log_dir: Path) -> None:
        self.name = name
        self.module = module
        self.args = list(args)
        self.log_path = log_dir / f"{name}.log"
        self.info: dict[str, Any] = {}
        self._process: asyncio.subprocess.Process | None = None
        self._log: Any = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.info['port']}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.info['port']}/graphql"

    async def start(self) -> dict[str, Any]:
        """Start the process and return its ready line's data."""
        self._log = self.log_path.open("wb")
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.module,
            *self.args,
            cwd=REPO,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            self.info = await asyncio.wait_for(self._ready_line(), STARTUP_TIMEOUT)
        except (TimeoutError, ServerError):
            await self.stop()
            raise ServerError(f"{self.name} did not start:\n{self.log_tail()}") from None
        return self.info

    async def _ready_line(self) -> dict[str, Any]:
        assert self._process is not None
        assert self._process.stdout is not None
        while True:
            line = await self._process.stdout.readline()
            if not line:
                raise ServerError("exited before it was ready")
            text = line.decode(errors="replace")
            if text.startswith(READY_PREFIX):
                info: dict[str, Any] = json.loads(text[len(READY_PREFIX) :])
                return info

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's stderr."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop in time."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    async def __aenter__(self) -> ServerProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/test"


async def postgres_base() -> str | None:
    """The PostgreSQL to create the bench database on, if one answers."""
    url = os.environ.get("EVLINK_TEST_DATABASE_URL") or DEFAULT_POSTGRES
    try:
        connection = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        print(
            f"bench: PostgreSQL at {url} does not answer ({type(exc).__name__}); skipped",
            file=sys.stderr,
            flush=True,
        )
        return None
    await connection.close()
    return url


@contextlib.asynccontextmanager
async def postgres_database(base: str) -> Any:
    """A database with a random name, dropped afterwards (as tests/conftest.py does)."""
    name = f"evlink_bench_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(base)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    try:
        yield urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
    finally:
        connection = await asyncpg.connect(base)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()
