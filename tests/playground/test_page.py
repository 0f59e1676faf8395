"""The playground page over HTTP: what ``GET /graphql`` sends a browser, and what it loads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from evlink.playground.examples import EXAMPLES
from evlink.playground.page import STATIC_PATH, playground_response
from tests.conftest import Server

HTML = {"Accept": "text/html,application/xhtml+xml"}
CONFIG = re.compile(r'<script type="application/json" id="evlink-playground-config">(.*?)</script>')


def _assets(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', page)


async def test_a_browser_gets_the_playground_with_the_examples(server: Server) -> None:
    response = await server.http.get("/graphql", headers=HTML)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self';" in policy
    host = server.base_url.removeprefix("http://")
    assert f"connect-src 'self' ws://{host} wss://{host};" in policy
    page = response.text
    assert 'id="evlink-api-key"' in page
    config = json.loads(CONFIG.search(page).group(1))  # type: ignore[union-attr]
    assert config["graphqlPath"] == "/graphql"
    assert config["tabs"] == [example.tab() for example in EXAMPLES]


async def test_everything_the_page_loads_is_served_by_evlink(server: Server) -> None:
    page = (await server.http.get("/graphql", headers=HTML)).text
    assets = _assets(page)

    assert [url for url in assets if "://" in url or url.startswith("//")] == []
    scripts = [url for url in assets if url.endswith(".js")]
    assert len(scripts) == 4  # react, react-dom, graphiql, playground.js
    for url in assets:
        if url.startswith("data:") or not url.startswith(STATIC_PATH):
            continue
        served = await server.http.get(url)
        assert served.status_code == 200, url
        assert served.headers["cache-control"] == "no-cache"
        kind = "javascript" if url.endswith(".js") else "css"
        assert kind in served.headers["content-type"], url


async def test_api_clients_still_get_graphql_over_get(server: Server) -> None:
    response = await server.http.get(
        "/graphql", params={"query": "{ __typename }"}, headers={"Accept": "application/json"}
    )

    assert response.json() == {"data": {"__typename": "Query"}}


async def test_without_the_built_assets_the_page_says_how_to_build_them(tmp_path: Path) -> None:
    async def graphql(request: Request) -> Response:
        return playground_response(request, vendor_dir=tmp_path / "vendor")

    app = Starlette(routes=[Route("/graphql", graphql)])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://evlink.test") as http:
        response = await http.get("/graphql", headers=HTML)

    assert response.status_code == 503
    assert "make playground" in response.text
    assert "python -m evlink.playground.vendor" in response.text
    assert "graphiql.min.js" in response.text
    assert "<script" not in response.text
    assert [url for url in _assets(response.text) if "://" in url] == []
