"""The HTTP edge's shortcuts answer as Starlette's own way does: the REST routes served
as plain ASGI endpoints (:func:`evlink.edge.direct_routes`), compared with the same
routes wrapped by Starlette, on a real server."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, Router

from evlink import compat_rest
from evlink.edge import DirectEndpoint, EdgeApp, Handlers, HttpEdge
from evlink.errors import NotFound
from tests.conftest import Server

# Headers that differ between any two answers: the request id, uvicorn's date, and the
# counts left of the rate limits (each request spends one).
VARYING = {"x-request-id", "date", "ratelimit"}
_REST_PATHS = {r.path for r in compat_rest.routes if isinstance(r, Route)}


def _answer(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in VARYING]
    return response.status_code, headers, response.content


async def _answers(server: Server, key: str, vehicle_id: str) -> list[Any]:
    auth = {"Authorization": f"Bearer {key}"}
    http = server.http
    return [
        _answer(response)
        for response in [
            await http.get(f"/api/status/{vehicle_id}", headers=auth),
            await http.head(f"/api/status/{vehicle_id}", headers=auth),
            await http.get(f"/api/ha/status/{vehicle_id}", headers=auth),
            await http.get("/api/ha/me", headers=auth),
            await http.get(f"/api/status/{vehicle_id}"),  # no key: 401 from the handler
            await http.get("/api/status/00000000-0000-0000-0000-000000000000", headers=auth),
            await http.post(f"/api/status/{vehicle_id}", headers=auth),  # 405
            await http.post(  # 415, raised by the endpoint
                f"/api/charging/{vehicle_id}",
                content="action=START",
                headers={**auth, "content-type": "application/x-www-form-urlencoded"},
            ),
            await http.post(  # 400, raised by the endpoint
                f"/api/charging/{vehicle_id}",
                content="{",
                headers={**auth, "content-type": "application/json"},
            ),
        ]
    ]


async def test_rest_routes_served_directly_answer_as_starlettes_own_wrapping(
    server: Server,
) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    routes = server.app.router.routes
    rest = [r for r in routes if isinstance(r, Route) and r.path in _REST_PATHS]
    assert len(rest) == len(compat_rest.routes)
    assert all(isinstance(r.endpoint, DirectEndpoint) for r in rest)

    direct = await _answers(server, key, str(vehicle.id))
    # The same app with the REST routes as Starlette wraps them itself.
    start = routes.index(rest[0])
    routes[start : start + len(rest)] = compat_rest.routes
    wrapped = await _answers(server, key, str(vehicle.id))

    assert [status for status, _, _ in direct] == [200, 200, 200, 200, 401, 404, 405, 415, 400]
    assert direct == wrapped


async def _boom(request: Request) -> Response:
    raise RuntimeError("a bug")


async def _half_then_refused(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield b"half"
        raise NotFound()  # a handled error, after the answer began

    return StreamingResponse(body(), media_type="text/plain")


async def test_the_edge_app_s_stack_answers_as_starlettes_own(server: Server) -> None:
    # EdgeApp leaves out Starlette's ServerErrorMiddleware (the edge answers what escapes)
    # and does ExceptionMiddleware's work in Handlers, without its send wrapper: the
    # stack is the edge, Handlers and the router, and answers as Starlette's does.
    app = server.app
    assert isinstance(app, EdgeApp)
    app.router.routes.append(Route("/test/boom", _boom))
    stack = app.build_middleware_stack()
    assert [type(stack), type(stack.app), type(stack.app.app)] == [HttpEdge, Handlers, Router]  # type: ignore[attr-defined]

    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")

    async def answers() -> list[Any]:
        found = await _answers(server, key, str(vehicle.id))
        for path in ("/api/nope", "/test/boom", "/healthz"):
            found.append(_answer(await server.http.get(path)))
        found.append(_answer(await server.http.post("/healthz")))  # 405, a Route's own
        return found

    lean = await answers()
    app.middleware_stack = Starlette.build_middleware_stack(app)
    stock = await answers()
    assert [status for status, _, _ in lean][-4:] == [404, 500, 200, 405]
    assert lean[-3][2] == stock[-3][2]  # the masked 500, not the bug's text
    assert b"a bug" not in lean[-3][2]
    assert lean == stock


async def test_a_handled_error_after_the_answer_began_is_not_answered_again(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    # Once an answer has begun, a handled error (here a 404) cannot become an answer:
    # the request fails as an unexpected error (logged with its cause), and the
    # client gets the begun answer cut short, never a second head.
    server.app.router.routes.append(Route("/test/half", _half_then_refused))
    with caplog.at_level(logging.ERROR, logger="evlink.edge"), pytest.raises(httpx.HTTPError):
        await server.http.get("/test/half")
    (logged,) = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert logged.exc_info is not None
    assert "response already started" in str(logged.exc_info[1])


@pytest.mark.parametrize(
    "options",
    [
        {"exception_handlers": {500: _boom}},
        {"exception_handlers": {Exception: _boom}},
        {"exception_handlers": {404: _boom}},
        {"max_body_size": 1024},
    ],
)
def test_an_edge_app_refuses_what_its_stack_would_not_do(options: dict[str, Any]) -> None:
    # Without ServerErrorMiddleware nobody would call a 500 or Exception handler, and
    # Handlers looks handlers up by class only; the edge limits bodies.
    if (
        "max_body_size" in options
        and "max_body_size" not in inspect.signature(Starlette).parameters
    ):
        pytest.skip("this Starlette has no max_body_size")
    with pytest.raises(TypeError, match="EdgeApp"):
        EdgeApp(**options).build_middleware_stack()
    Starlette(**options).build_middleware_stack()  # Starlette's own takes it
