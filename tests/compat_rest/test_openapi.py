"""/api/openapi.json says what the REST API does: its paths exist, and live answers match it.

Answers are validated strictly: an object the document describes may carry no
key it does not list (unless the document says that extra keys are the
provider's), so a new key in a body fails here until it is documented.
"""

from __future__ import annotations

import copy
import re
import uuid
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from starlette.routing import Mount, Route

from evlink import errors
from evlink.compat_rest.openapi import ERROR_CODES, openapi_document
from evlink.models import Tier
from tests.conftest import EnodeWorld, Server

DOCUMENT = openapi_document()
NOT_REST = {"/graphql"}  # GraphQL and its playground (a Mount) are described elsewhere
METHODS = {"get", "post", "put", "patch", "delete"}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that leaves it open
    by silence (a refinement without ``type``, inside ``allOf``, stays as it is)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    kinds = schema.get("type")
    is_object = kinds == "object" or (isinstance(kinds, list) and "object" in kinds)
    if is_object and "additionalProperties" not in schema:
        strict["additionalProperties"] = False
    return strict


STRICT_COMPONENTS = _strict(copy.deepcopy(DOCUMENT["components"]["schemas"]))


def _template(path: str) -> str:
    """The documented path a concrete path matches."""
    for template in DOCUMENT["paths"]:
        pattern = re.sub(r"\{[^}]+\}", "[^/]+", template)
        if re.fullmatch(pattern, path):
            return str(template)
    raise AssertionError(f"{path} is not documented")


def assert_documented(response: httpx.Response) -> None:
    """The answer's status, headers and body are those the document gives its operation."""
    request = response.request
    operation = DOCUMENT["paths"][_template(request.url.path)][request.method.lower()]
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, f"{request.method} {request.url.path}: {response.status_code}"
    for name in documented.get("headers", {}):
        if name in ("X-Request-ID", "WWW-Authenticate"):  # always sent where documented
            assert name in response.headers, f"{name} missing from {response.status_code}"
    media = response.headers["content-type"].split(";")[0]
    schema = documented["content"][media]["schema"]
    if media != "application/json":
        return
    validator = Draft202012Validator(
        {**_strict(schema), "components": {"schemas": STRICT_COMPONENTS}}
    )
    problems = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(response.json())
    ]
    assert problems == [], f"{request.method} {request.url.path}: {problems}"


def test_the_document_is_openapi_3_1_with_valid_schemas() -> None:
    assert DOCUMENT["openapi"] == "3.1.0"
    for name, schema in DOCUMENT["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema), name
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            assert method in METHODS, path
            assert operation["responses"], path
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    assert f"{{{parameter['name']}}}" in path


def test_every_error_code_of_the_table_is_documented() -> None:
    def subclasses(cls: type[errors.EvlinkError]) -> list[type[errors.EvlinkError]]:
        return [cls, *(sub for child in cls.__subclasses__() for sub in subclasses(child))]

    # Private errors (a provider's _Conflict) are handled inside evlink, never answered.
    codes = {e.code for e in subclasses(errors.EvlinkError) if not e.__name__.startswith("_")}

    assert codes <= set(ERROR_CODES)
    assert set(DOCUMENT["components"]["schemas"]["Error"]["properties"]["code"]["enum"]) == set(
        ERROR_CODES
    )


async def test_every_documented_path_is_served_and_every_route_documented(
    server: Server,
) -> None:
    served = {
        (route.path, method.lower())
        for route in server.app.routes
        if isinstance(route, Route) and route.path not in NOT_REST
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {(path, method) for path, item in DOCUMENT["paths"].items() for method in item}

    assert documented == served
    assert all(isinstance(r, Route | Mount) or r.path in NOT_REST for r in server.app.routes)


async def test_the_document_and_its_page_are_served(server: Server) -> None:
    document = await server.http.get("/api/openapi.json")
    page = await server.http.get("/api/docs")

    assert document.json() == DOCUMENT
    assert_documented(document)
    assert page.status_code == 200
    assert "<script" not in page.text
    assert [url for url in re.findall(r'(?:src|href)="([^"]+)"', page.text) if ":" in url] == []
    for path, item in DOCUMENT["paths"].items():
        for operation in item.values():
            assert f'id="op-{operation["operationId"]}"' in page.text, path
    for name in DOCUMENT["components"]["schemas"]:
        assert f'id="schema-{name}"' in page.text


async def test_read_answers_match_the_document(server: Server) -> None:
    user, key = await server.user()
    charging = await server.vehicle(user, "charging")
    await server.vehicle(user, "unplugged")

    for path in (
        f"/api/status/{charging.id}",
        f"/api/ha/status/{charging.id}",
        "/api/ha/vehicles",
        "/api/ha/me",
    ):
        response = await server.http.get(path, headers=auth(key))
        assert response.status_code == 200, path
        assert_documented(response)
    for path in ("/healthz", "/readyz"):
        assert_documented(await server.http.get(path))


@pytest.mark.parametrize("path", ["/api/charging/{id}", "/api/ha/charging/{id}"])
async def test_charging_answers_match_the_document(server: Server, path: str) -> None:
    user, key = await server.user()
    plugged = await server.vehicle(user, "plugged")
    url = path.format(id=plugged.id)

    started = await server.http.post(
        url, json={"action": "START"}, headers={**auth(key), "Idempotency-Key": "evening"}
    )
    waited = await server.http.post(f"{url}?wait=0", json={"action": "START"}, headers=auth(key))

    assert started.status_code == waited.status_code == 200
    assert "state" in waited.json()
    assert_documented(started)
    assert_documented(waited)


async def test_error_answers_match_the_document(server: Server) -> None:
    user, key = await server.user()
    unplugged = await server.vehicle(user, "unplugged")
    _, other_key = await server.user()
    free_user, free_key = await server.user(tier=Tier.FREE)
    free_car = await server.vehicle(free_user, "plugged")
    orphan = await server.vehicle(user, "plugged")
    orphan.provider_vehicle_id = None
    await orphan.save(update_fields=["provider_vehicle_id"])
    missing = uuid.uuid4()

    answers = {
        "UNAUTHENTICATED": await server.http.get(f"/api/status/{unplugged.id}"),
        "NOT_FOUND": await server.http.get(f"/api/status/{missing}", headers=auth(key)),
        "FORBIDDEN_OWNER": await server.http.get(
            f"/api/ha/status/{unplugged.id}", headers=auth(other_key)
        ),
        "FORBIDDEN_TIER": await server.http.post(
            f"/api/charging/{free_car.id}", json={"action": "START"}, headers=auth(free_key)
        ),
        "INVALID_VEHICLE_STATE": await server.http.post(
            f"/api/charging/{unplugged.id}", json={"action": "START"}, headers=auth(key)
        ),
        "BAD_REQUEST": await server.http.post(
            f"/api/ha/charging/{unplugged.id}", json={"action": "HONK"}, headers=auth(key)
        ),
        "UNSUPPORTED_MEDIA_TYPE": await server.http.post(
            f"/api/charging/{unplugged.id}",
            content="action=START",
            headers={**auth(key), "Content-Type": "application/x-www-form-urlencoded"},
        ),
        "PROVIDER_LINK_MISSING": await server.http.get(
            f"/api/status/{orphan.id}", headers=auth(key)
        ),
        # The simulator has no webhooks to receive.
        "NOT_FOUND (webhook)": await server.http.post("/api/webhooks/enode", json=[]),
    }

    for code, response in answers.items():
        assert response.json()["code"] == code.split()[0], response.text
        assert_documented(response)


async def test_webhook_answers_match_the_document(enode: EnodeWorld) -> None:
    accepted = await enode.deliver([{"event": "system:heartbeat"}], delivery_id="openapi-1")
    (duplicate,) = await enode.fake.deliver(
        [{"event": "system:heartbeat"}], delivery_id="openapi-1"
    )
    (unsigned,) = await enode.fake.deliver([], signature="sha1=" + "0" * 40)

    assert [accepted.json()["status"], duplicate.json()["status"]] == ["accepted", "duplicate"]
    assert unsigned.status_code == 401
    for response in (accepted, duplicate, unsigned):
        assert_documented(response)
