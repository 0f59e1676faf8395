"""HTTP load: wrk (installed from Debian's packages when missing), or a Python fallback.

A :class:`Target` is a list of requests that the load generator sends in turn
over keep-alive connections, for a fixed time. wrk runs in one thread (one of
this machine's two cores; the server under test gets the other) with a Lua
script that pre-formats the requests. When wrk cannot be had, a small asyncio
client of our own does the same job more slowly; the report then says so.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from bench.common import percentile

__all__ = ["LoadResult", "Request", "Target", "ensure_wrk", "run_load"]

CONNECTIONS = 16  # concurrent keep-alive connections, for every target alike


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a target: method, path, headers and body."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""


@dataclass(frozen=True, slots=True)
class Target:
    """What to load: a server's base URL and the requests to send in turn."""

    base_url: str
    requests: list[Request]


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What a load run saw: throughput and latency percentiles (milliseconds)."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx answers and socket errors
    generator: str


def ensure_wrk() -> str | None:
    """The path of wrk, installing Debian's package first when it is missing (as root)."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        return None
    print("bench: wrk is missing; installing it with apt-get", file=sys.stderr, flush=True)
    for command in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "wrk"]):
        done = subprocess.run(command, capture_output=True, check=False, timeout=300)  # noqa: S603
        if done.returncode != 0:
            print(
                f"bench: {' '.join(command)} failed; using the Python client",
                file=sys.stderr,
                flush=True,
            )
            return None
    return shutil.which("wrk")


def _lua_string(text: str) -> str:
    level = "=" * 4
    assert f"]{level}]" not in text
    return f"[{level}[{text}]{level}]"


def _wrk_script(requests: list[Request]) -> str:
    entries = []
    for request in requests:
        headers = ", ".join(
            f"[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in request.headers.items()
        )
        body = _lua_string(request.body) if request.body else "nil"
        entries.append(
            f"{{{_lua_string(request.method)}, {_lua_string(request.path)}, {{{headers}}}, {body}}}"
        )
    return (
        "local specs = {\n  " + ",\n  ".join(entries) + "\n}\n"
        "local formatted = {}\n"
        "local n = 0\n"
        "init = function(args)\n"
        "  for i, s in ipairs(specs) do formatted[i] = wrk.format(s[1], s[2], s[3], s[4]) end\n"
        "end\n"
        "request = function()\n"
        "  n = n % #formatted + 1\n"
        "  return formatted[n]\n"
        "end\n"
    )


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _parse_wrk(output: str) -> LoadResult:
    def latency(q: str) -> float:
        match = re.search(rf"^\s*{q}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"wrk printed no {q}% latency:\n{output}")
        return float(match[1]) * _UNITS[match[2]]

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    if rps is None or total is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = int(non_2xx[1]) if non_2xx else 0
    if sockets:
        errors += sum(int(sockets[i]) for i in range(1, 5))
    return LoadResult(
        rps=float(rps[1]),
        p50_ms=latency("50"),
        p99_ms=latency("99"),
        requests=int(total[1]),
        errors=errors,
        generator="wrk",
    )


async def _run_wrk(wrk: str, target: Target, seconds: float) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="evlink-wrk-") as folder:
        script = os.path.join(folder, "requests.lua")
        with open(script, "w") as file:  # noqa: ASYNC230 (a few hundred bytes, local disk)
            file.write(_wrk_script(target.requests))
        process = await asyncio.create_subprocess_exec(
            wrk,
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            script,
            target.base_url + "/",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), seconds + 30)
    return _parse_wrk(output.decode(errors="replace"))


def _raw_request(request: Request, host: str) -> bytes:
    body = request.body.encode()
    lines = [f"{request.method} {request.path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in request.headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _run_python(target: Target, seconds: float) -> LoadResult:
    """keep-alive HTTP/1.1 over asyncio streams: slower than wrk, same shape of result."""
    host_port = target.base_url.removeprefix("http://")
    host, _, port = host_port.partition(":")
    raw = [_raw_request(r, host_port) for r in target.requests]
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def connection(offset: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        n = offset
        try:
            while time.monotonic() < deadline:
                started = time.monotonic()
                writer.write(raw[n % len(raw)])
                n += 1
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                await reader.readexactly(int(length[1]) if length else 0)
                latencies.append((time.monotonic() - started) * 1000)
                if not head.startswith((b"HTTP/1.1 2", b"HTTP/1.1 3")):
                    errors += 1
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(connection(i) for i in range(CONNECTIONS)))
    elapsed = time.monotonic() - started
    return LoadResult(
        rps=len(latencies) / elapsed,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        requests=len(latencies),
        errors=errors,
        generator="python",
    )


async def run_load(
    target: Target, seconds: float, wrk: str | None, warmup: float = 1.0
) -> LoadResult:
    """Warm up for ``warmup`` seconds, then load ``target`` for ``seconds`` and measure."""
    if wrk is not None:
        await _run_wrk(wrk, target, warmup)
        return await _run_wrk(wrk, target, seconds)
    await _run_python(target, warmup)
    return await _run_python(target, seconds)
