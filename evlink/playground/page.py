"""The playground page and its static files, all served by evlink itself.

``GET /graphql`` from a browser answers :func:`playground_response`: GraphiQL
with a field for the API key and the example tabs. Its scripts and styles are
served under :data:`STATIC_PATH` from this package. When the npm bundles were
never built, the page says how to build them instead (never a CDN link).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from evlink.playground.examples import EXAMPLES
from evlink.playground.vendor import COMPLETE, VENDOR_DIR, VENDOR_FILES

__all__ = ["STATIC_PATH", "missing_assets", "playground_response", "static_files"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PATH = "/playground"


def content_security_policy(host: str) -> str:
    """Only this server: a bundle that tried to reach a CDN would fail loudly.

    GraphiQL sets inline styles (React style props) and its CSS embeds fonts as
    data: URLs. The websocket is named with its scheme too, for browsers whose
    'self' does not cover ws: and wss:. (evlink.guards adds the other headers.)
    """
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self' 'unsafe-inline'",
            "font-src 'self' data:",
            "img-src 'self' data:",
            f"connect-src 'self' ws://{host} wss://{host}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


class _RevalidatedFiles(StaticFiles):
    """Static files that browsers check again on each load (a 304 while unchanged),
    so that an upgraded evlink never runs yesterday's script."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response


# check_dir=False: the app starts even where the bundles were never built.
static_files = _RevalidatedFiles(directory=STATIC_DIR, check_dir=False)


def missing_assets(vendor_dir: Path = VENDOR_DIR) -> list[str]:
    """The vendored files that are not there (empty when the build is complete)."""
    wanted = [*VENDOR_FILES, COMPLETE]
    return [name for name in wanted if not (vendor_dir / name).is_file()]


def _json_for_script(value: object) -> str:
    # Inside <script>, "</script>" or "<!--" in a string would end or bend the element.
    return json.dumps(value).replace("<", "\\u003c")


_PAGE = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>evlink GraphQL playground</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{static}/vendor/graphiql.min.css">
<link rel="stylesheet" href="{static}/playground.css">
</head>
<body>
<header class="evlink-bar">
  <span class="evlink-title"><strong>evlink</strong> GraphQL playground</span>
  <label for="evlink-api-key">API key</label>
  <input id="evlink-api-key" type="password" autocomplete="off" spellcheck="false"
         placeholder="evl_…">
  <span class="evlink-hint">Sent as <code>Authorization: Bearer …</code> with queries and in
    the websocket's <code>connection_init</code>. An Authorization header in the Headers tab
    wins.</span>
  <a class="evlink-link" href="{root}/api/docs">REST API</a>
</header>
<main id="graphiql"><p class="evlink-loading">Loading GraphiQL…</p></main>
<script type="application/json" id="evlink-playground-config">{config}</script>
<script src="{static}/vendor/react.production.min.js"></script>
<script src="{static}/vendor/react-dom.production.min.js"></script>
<script src="{static}/vendor/graphiql.min.js"></script>
<script src="{static}/playground.js"></script>
</body>
</html>
"""

_NOT_BUILT = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>evlink GraphQL playground: not built</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 46em; margin: 3em auto; padding: 0 1em; }}
code, pre {{ background: #f3f3f3; border-radius: 4px; padding: 0.1em 0.3em; }}
pre {{ padding: 0.8em; overflow-x: auto; }}
</style>
</head>
<body>
<h1>The GraphQL playground is not built</h1>
<p>evlink serves GraphiQL from its own package, with no CDN. Its JavaScript and CSS
are fetched from npm when evlink is installed, and these files are missing from
<code>evlink/playground/static/vendor/</code>: {missing}.</p>
<p>Build them from the source checkout (this needs Node.js and npm), then reload:</p>
<pre>make playground</pre>
<p>or, in an environment where evlink is already installed:</p>
<pre>python -m evlink.playground.vendor</pre>
<p>The API works without the playground: send queries with
<code>POST {root}/graphql</code> and the header
<code>Authorization: Bearer &lt;your key&gt;</code>, for example:</p>
<pre>curl -H "Authorization: Bearer $EVLINK_KEY" -H "Content-Type: application/json" \\
     -d '{{"query": "{{ vehicles {{ id name chargeState {{ batteryLevel }} }} }}"}}' \\
     {base_url}graphql</pre>
</body>
</html>
"""


def playground_response(request: Request, vendor_dir: Path = VENDOR_DIR) -> HTMLResponse:
    """The playground page, or a page that says how to build it (503)."""
    root = request.scope.get("root_path", "")
    headers = {"Content-Security-Policy": content_security_policy(request.url.netloc)}
    missing = missing_assets(vendor_dir)
    if missing:
        page = _NOT_BUILT.format(
            missing=", ".join(f"<code>{html.escape(name)}</code>" for name in missing),
            root=html.escape(root),
            base_url=html.escape(str(request.base_url)),
        )
        return HTMLResponse(page, status_code=503, headers=headers)
    config = {
        "graphqlPath": f"{root}/graphql",
        "tabs": [example.tab() for example in EXAMPLES],
    }
    page = _PAGE.format(
        static=html.escape(root + STATIC_PATH),
        root=html.escape(root),
        config=_json_for_script(config),
    )
    return HTMLResponse(page, headers=headers)
