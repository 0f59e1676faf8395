"""The baseline: a bare Starlette app that answers the status JSON from memory.

``python -m bench.serve_baseline --bodies FILE`` serves ``GET
/api/status/{vehicle_id}`` with the bodies in ``FILE`` (``{vehicle_id: body}``,
taken from evlink's own answers in the same run), under the same uvicorn
configuration as :mod:`bench.serve_evlink`: no database, no authentication, no
middleware. Each answer is serialised per request by ``JSONResponse``, as
evlink's is. Prints ``BENCH-READY {"port", "pid"}`` once it serves.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.common import announce_ready, listening_socket, raise_nofile_limit

__all__ = ["build_app", "main", "uvicorn_config"]


def uvicorn_config(app: Any, **websockets: Any) -> uvicorn.Config:
    """The uvicorn settings every bench server uses (as ``evlink serve``, quieter);
    ``websockets``: evlink's websocket options (``evlink.server.server_options``)."""
    return uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        **websockets,
    )


def build_app(bodies: dict[str, dict[str, Any]]) -> Starlette:
    """Starlette with the one route, answering from ``bodies``."""

    async def status(request: Request) -> JSONResponse:
        body = bodies.get(request.path_params["vehicle_id"])
        if body is None:
            return JSONResponse({"detail": "Not found", "code": "NOT_FOUND"}, status_code=404)
        return JSONResponse(body)

    return Starlette(routes=[Route("/api/status/{vehicle_id}", status, methods=["GET"])])


class _AnnouncingServer(uvicorn.Server):
    """uvicorn that prints the ready line once it accepts connections."""

    def __init__(self, config: uvicorn.Config, port: int) -> None:
        super().__init__(config)
        self.port = port

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        announce_ready({"port": self.port, "pid": os.getpid()})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bodies", type=Path, required=True, help="JSON {vehicle_id: body}")
    args = parser.parse_args(argv)
    raise_nofile_limit()
    bodies = json.loads(args.bodies.read_text())
    sock = listening_socket()
    server = _AnnouncingServer(uvicorn_config(build_app(bodies)), sock.getsockname()[1])
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
