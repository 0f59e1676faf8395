"""The HTTP edge's shortcuts answer as Starlette's own way does: the REST routes served
as plain ASGI endpoints (:func:`evlink.edge.direct_routes`), compared with the same
routes wrapped by Starlette, on a real server."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.routing import Route

from evlink import compat_rest
from evlink.edge import DirectEndpoint
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
