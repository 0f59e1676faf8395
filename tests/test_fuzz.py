"""Fuzzing with schemathesis against the live server on 127.0.0.1.

The REST API is generated from its OpenAPI document (``/api/openapi.json``) and
the GraphQL API from its introspected schema, both as served by a real uvicorn,
authenticated with a real key. Every answer must be documented: no 500s, and for
REST every status code, header and body must match the document (schemathesis's
own checks, including that a request without the key is refused); for GraphQL
every error must carry one of evlink's codes and none may be INTERNAL_ERROR.

Schemathesis is synchronous (requests): it runs in a worker thread while the
server keeps serving on the test's event loop. ``EVLINK_FUZZ_EXAMPLES`` sets the
examples per operation and mode (20 here; ``make fuzz`` runs 500).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from evlink import errors
from evlink.schema import limits
from tests.conftest import Server

EXAMPLES = int(os.environ.get("EVLINK_FUZZ_EXAMPLES", "20"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # each run starts afresh: a server's ids do not outlive it
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)

# The codes a GraphQL error may carry: evlink's table (less INTERNAL_ERROR) and the limits.
GRAPHQL_CODES = {
    cls.code
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.EvlinkError)
} - {errors.InternalError.code} | set(limits.CODES)

Seen = Counter[tuple[str, str]]


def _fuzzer(
    strategy: st.SearchStrategy[Any], call: Callable[[Any, str], None], label: str
) -> Callable[[], None]:
    """A Hypothesis test that sends each case drawn from ``strategy`` through ``call``."""

    @FUZZ_SETTINGS
    @given(case=strategy)
    def fuzz(case: Any) -> None:
        call(case, label)

    return fuzz


def _run(check: Callable[[], None], label: str, failures: list[str]) -> None:
    try:
        check()
    except (Exception, ExceptionGroup) as failure:  # schemathesis groups what it found
        failures.append(f"{label}:\n{failure}")


# Why a schema-valid request may still be refused: the car's state, not the input's shape.
STATE_CODES = {"INVALID_VEHICLE_STATE", "SMART_CHARGING_ACTIVE", "IDEMPOTENCY_KEY_REUSED"}


def schema_valid_input_is_not_called_malformed(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schemathesis's positive_data_acceptance, with evlink's rule: a charging request
    the document allows may be refused for the car's state (400/422 with a state code,
    e.g. STOP when not charging), never as malformed (BAD_REQUEST, 415)."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return None
    if response.status_code in (400, 415, 422):
        code = response.json().get("code")
        assert code in STATE_CODES, f"schema-valid input refused: {response.text}"
    return None


def fuzz_rest(base_url: str, key: str, vehicle_id: str) -> tuple[Seen, list[str]]:
    """Every documented operation, in positive and negative mode; ``vehicle_id`` (the
    caller's own car) is mixed in so that the success paths are reached too."""
    schema = schemathesis.openapi.from_url(f"{base_url}/api/openapi.json")
    headers = {"Authorization": f"Bearer {key}"}
    seen: Seen = Counter()
    failures: list[str] = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            label = operation.label
            strategies = [operation.as_strategy(generation_mode=GenerationMode.POSITIVE)]
            if operation.path_parameters or operation.body or operation.query:
                strategies.append(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
            if "{vehicle_id}" in operation.path:
                # The caller's own car: ?wait=0, since nothing moves the simulated car and a
                # longer wait would only hold the request (any wait is fuzzed with other ids).
                own: dict[str, Any] = {"path_parameters": {"vehicle_id": vehicle_id}}
                if operation.method.upper() == "POST":
                    own["query"] = {"wait": "0"}
                strategies.append(operation.as_strategy(**own))

            def call(case: Any, label: str) -> None:
                response = case.call_and_validate(
                    base_url=base_url,
                    session=session,
                    headers=headers,
                    excluded_checks=[positive_data_acceptance],
                    additional_checks=[schema_valid_input_is_not_called_malformed],
                )
                seen[(label, str(response.status_code))] += 1

            _run(_fuzzer(st.one_of(strategies), call, label), label, failures)
    return seen, failures


def check_graphql_answer(response: requests.Response) -> str:
    """A documented GraphQL answer; returns what it was (``data`` or the first code)."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict), body
    assert set(body) <= {"data", "errors", "extensions"}, body
    errors_ = body.get("errors") or []
    for error in errors_:
        message = error["message"]
        assert "Cannot return null for non-nullable field" not in message, body
        assert message != "Unexpected error", body
        code = (error.get("extensions") or {}).get("code")
        if "path" in error:  # raised while executing: evlink's own error, with its code
            assert code in GRAPHQL_CODES, body
        else:  # refused before executing (syntax, validation, limits): GraphQL's or a limit's
            assert code is None or code in GRAPHQL_CODES, body
    if not errors_:
        return "data"
    return str((errors_[0].get("extensions") or {}).get("code") or "invalid")


def fuzz_graphql(base_url: str, key: str) -> tuple[Seen, list[str]]:
    headers = {"Authorization": f"Bearer {key}"}
    schema = schemathesis.graphql.from_url(f"{base_url}/graphql", headers=headers)
    seen: Seen = Counter()
    failures: list[str] = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                label = f"{operation.label} ({mode.value})"

                def call(case: Any, label: str) -> None:
                    response = case.call(base_url=base_url, session=session, headers=headers)
                    seen[(label, check_graphql_answer(response))] += 1

                strategy = operation.as_strategy(generation_mode=mode)
                _run(_fuzzer(strategy, call, label), label, failures)
    return seen, failures


async def test_rest_answers_match_the_openapi_document(server: Server) -> None:
    user, key = await server.user()
    car = await server.vehicle(user, "plugged")

    seen, failures = await asyncio.to_thread(fuzz_rest, server.base_url, key, str(car.id))

    assert failures == [], "\n\n".join(failures)
    # The fuzzing reached the success paths, not only the refusals.
    assert seen[("GET /api/ha/me", "200")] > 0
    assert seen[("GET /api/status/{vehicle_id}", "200")] > 0
    assert seen[("GET /api/ha/status/{vehicle_id}", "200")] > 0
    assert {label for label, _ in seen} >= {
        "POST /api/charging/{vehicle_id}",
        "POST /api/ha/charging/{vehicle_id}",
        "POST /api/webhooks/enode",
    }


async def test_graphql_answers_carry_documented_codes_and_no_internal_errors(
    server: Server,
) -> None:
    user, key = await server.user()
    await server.vehicle(user, "plugged")

    seen, failures = await asyncio.to_thread(fuzz_graphql, server.base_url, key)

    assert failures == [], "\n\n".join(failures)
    assert seen[("Query.viewer (positive)", "data")] > 0
    assert seen[("Query.vehicles (positive)", "data")] > 0
    assert {label for label, _ in seen} >= {
        "Mutation.setCharging (positive)",
        "Mutation.linkVehicleAccount (positive)",
        "Query.chargingCommand (positive)",
    }
