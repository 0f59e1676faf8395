"""``GET /api/docs``: the OpenAPI document rendered as one plain HTML page.

Rendered here, on the server, from :func:`openapi_document`: no script, no
stylesheet from elsewhere, so the page reads the same offline.
"""

from __future__ import annotations

import html
import json
import re
from functools import cache
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse

from evlink.compat_rest.openapi import ERROR_CODES, openapi_document

__all__ = ["api_docs", "render_docs"]

Schema = dict[str, Any]

_STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232b;
       max-width: 62rem; margin: 0 auto; padding: 1rem 1.5rem 4rem; }
h1 { margin-bottom: 0.2rem; } h1 small { font-size: 0.55em; color: #5b6472; font-weight: 400; }
h2 { margin-top: 2.5rem; border-bottom: 1px solid #d9dde3; padding-bottom: 0.3rem; }
section.op { margin: 1.2rem 0 2rem; }
h3 code { font-size: 1em; }
.method { display: inline-block; min-width: 3.6rem; padding: 0.05rem 0.4rem; border-radius: 4px;
          color: #fff; font: 600 13px ui-monospace, monospace; text-align: center; }
.get { background: #1a7f37; } .post { background: #1a5fb4; }
table { border-collapse: collapse; width: 100%; margin: 0.4rem 0 0.8rem; font-size: 14px; }
th, td { text-align: left; vertical-align: top; border-bottom: 1px solid #e6e9ee;
         padding: 0.3rem 0.5rem; }
th { background: #f7f8fa; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, monospace; background: #f3f4f6;
       padding: 0.05rem 0.25rem; border-radius: 3px; }
pre { background: #f3f4f6; padding: 0.7rem; border-radius: 4px; overflow-x: auto; }
nav ul { columns: 2; } .muted { color: #5b6472; }
"""


def _text(value: str) -> str:
    """Escaped text with `code` spans, the only markup the document's descriptions use."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(value))


def _ref_name(schema: Schema) -> str:
    return str(schema["$ref"]).rsplit("/", 1)[-1]


def _values(values: list[Any]) -> str:
    return ", ".join(f"<code>{html.escape(str(value))}</code>" for value in values)


def _type(schema: Schema) -> str:
    """A short HTML description of a schema's type, with links to named schemas."""
    if "$ref" in schema:
        name = _ref_name(schema)
        return f'<a href="#schema-{name}">{name}</a>'
    if "allOf" in schema:
        return " with ".join(_type(part) for part in schema["allOf"])
    if "oneOf" in schema:
        return " or ".join(_type(part) for part in schema["oneOf"])
    if "const" in schema:
        return f"<code>{html.escape(json.dumps(schema['const']))}</code>"
    if "type" not in schema:  # a refinement inside allOf: {"properties": {"code": {"enum"}}}
        if "properties" in schema:
            return ", ".join(
                f"<code>{html.escape(name)}</code> {_type(value)}"
                for name, value in schema["properties"].items()
            )
        return f"one of {_values(schema['enum'])}" if "enum" in schema else "any"
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    parts = []
    for kind in kinds:
        if kind == "array":
            parts.append(f"array of {_type(schema.get('items', {}))}")
        elif kind == "object" and isinstance(schema.get("additionalProperties"), dict):
            parts.append(f"object of {_type(schema['additionalProperties'])}")
        elif kind == "object" and "properties" in schema:
            keys = ", ".join(f"<code>{html.escape(key)}</code>" for key in schema["properties"])
            parts.append(f"object ({keys}, …)")
        elif kind == "string" and "format" in schema:
            parts.append(f"string ({html.escape(schema['format'])})")
        else:
            parts.append(html.escape(str(kind)))
    text = " or ".join(parts)
    return f"{text}: {_values(schema['enum'])}" if "enum" in schema else text


def _properties_table(schema: Schema) -> str:
    required = set(schema.get("required", []))
    rows = "".join(
        f"<tr><td><code>{html.escape(name)}</code></td><td>{_type(value)}</td>"
        f"<td>{'yes' if name in required else 'no'}</td>"
        f"<td>{_text(value.get('description', ''))}</td></tr>"
        for name, value in schema.get("properties", {}).items()
    )
    if not rows:
        return ""
    return f"<table><tr><th>key</th><th>type</th><th>always there</th><th></th></tr>{rows}</table>"


def _parameters(operation: Schema) -> str:
    parameters = operation.get("parameters", [])
    if not parameters:
        return ""
    rows = "".join(
        f"<tr><td><code>{html.escape(p['name'])}</code></td><td>{p['in']}</td>"
        f"<td>{'yes' if p.get('required') else 'no'}</td><td>{_type(p['schema'])}</td>"
        f"<td>{_text(p.get('description', ''))}</td></tr>"
        for p in parameters
    )
    return (
        "<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>required</th>"
        f"<th>type</th><th></th></tr>{rows}</table>"
    )


def _body(operation: Schema, schemas: dict[str, Schema]) -> str:
    body = operation.get("requestBody")
    if body is None:
        return ""
    (media, content), *_ = body["content"].items()
    schema = content["schema"]
    out = f"<h4>Request body</h4><p><code>{media}</code>: {_type(schema)}</p>"
    examples = schemas.get(_ref_name(schema), {}).get("examples") if "$ref" in schema else None
    if examples:
        out += f"<pre>{html.escape(json.dumps(examples[0], indent=2))}</pre>"
    return out


def _responses(operation: Schema) -> str:
    rows = []
    for status, response in operation["responses"].items():
        content = response.get("content", {})
        body = ", ".join(
            f"<code>{media}</code> {_type(value['schema'])}" for media, value in content.items()
        )
        headers = ", ".join(
            f"<code>{html.escape(name)}</code>"
            for name in response.get("headers", {})
            if name != "X-Request-ID"
        )
        rows.append(
            f"<tr><td><b>{status}</b></td><td>{_text(response['description'])}</td>"
            f"<td>{body}</td><td>{headers}</td></tr>"
        )
    return (
        "<h4>Responses</h4><table><tr><th>status</th><th></th><th>body</th><th>headers</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _operation(path: str, method: str, operation: Schema, schemas: dict[str, Schema]) -> str:
    auth = (
        "No key."
        if operation.get("security") == []
        else "<code>Authorization: Bearer &lt;API key&gt;</code>"
    )
    return (
        f'<section class="op" id="op-{operation["operationId"]}">'
        f'<h3><span class="method {method}">{method.upper()}</span> '
        f"<code>{html.escape(path)}</code></h3>"
        f"<p><b>{_text(operation['summary'])}</b>. {_text(operation.get('description', ''))}</p>"
        f"<p class=muted>Authentication: {auth}</p>"
        f"{_parameters(operation)}{_body(operation, schemas)}{_responses(operation)}</section>"
    )


def render_docs(document: dict[str, Any]) -> str:
    """The whole page for an OpenAPI document."""
    info = document["info"]
    schemas: dict[str, Schema] = document["components"]["schemas"]
    operations = [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]
    nav: list[str] = []
    sections: list[str] = []
    for tag in document["tags"]:
        tagged = [op for op in operations if tag["name"] in op[2]["tags"]]
        nav.extend(
            f'<li><a href="#op-{op["operationId"]}">{method.upper()} {html.escape(path)}</a></li>'
            for path, method, op in tagged
        )
        sections.append(f"<h2>{html.escape(tag['name'])}</h2><p>{_text(tag['description'])}</p>")
        sections.extend(_operation(path, method, op, schemas) for path, method, op in tagged)
    sections.append("<h2>Schemas</h2>")
    for name, schema in schemas.items():
        described = _text(schema.get("description", ""))
        kind = "" if "properties" in schema else f"<p>{_type(schema)}</p>"
        sections.append(
            f'<section id="schema-{name}"><h3>{name}</h3><p>{described}</p>{kind}'
            f"{_properties_table(schema)}</section>"
        )
    codes = "".join(
        f"<tr><td><code>{code}</code></td><td>{_text(meaning)}</td></tr>"
        for code, meaning in ERROR_CODES.items()
    )
    sections.append(
        '<h2 id="errors">Error codes</h2><p>Every error answers '
        '<code>{"detail": "…", "code": "…"}</code>.</p>'
        f"<table><tr><th>code</th><th>when</th></tr>{codes}</table>"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(info['title'])}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(info['title'])} <small>{html.escape(info['version'])}</small></h1>"
        f"<p>{_text(info['summary'])}</p><p>{_text(info['description'])}</p>"
        '<p>The same document as OpenAPI 3.1: <a href="openapi.json">openapi.json</a>. '
        'The GraphQL playground: <a href="../graphql">/graphql</a>.</p>'
        f"<nav><ul>{''.join(nav)}</ul></nav>{''.join(sections)}</body></html>"
    )


@cache
def _page() -> str:
    return render_docs(openapi_document())


async def api_docs(request: Request) -> HTMLResponse:
    """GET /api/docs."""
    return HTMLResponse(
        _page(),
        # Nothing to load but the page itself (evlink.guards adds the other headers).
        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"},
    )
