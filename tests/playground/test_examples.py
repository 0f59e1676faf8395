"""The playground's example tabs are valid operations of the schema as served."""

from __future__ import annotations

import json

import pytest
from graphql import OperationDefinitionNode, build_schema, parse, validate

from evlink.playground.examples import EXAMPLES, Example
from evlink.schema.printed import printed_schema

SCHEMA = build_schema(printed_schema())


@pytest.mark.parametrize("example", EXAMPLES)
def test_each_example_is_valid_and_names_its_variables(example: Example) -> None:
    document = parse(example.query)

    assert validate(SCHEMA, document) == []
    (operation,) = document.definitions
    assert isinstance(operation, OperationDefinitionNode)
    assert operation.name is not None  # GraphiQL names the tab after it
    declared = {d.variable.name.value for d in operation.variable_definitions or ()}
    given = json.loads(example.tab().get("variables", "{}"))
    assert set(given) == declared


def test_the_examples_cover_a_query_the_mutation_and_both_subscriptions() -> None:
    fields = {
        (operation.operation.value, operation.selection_set.selections[-1].name.value)  # type: ignore[attr-defined]
        for example in EXAMPLES
        for operation in parse(example.query).definitions
        if isinstance(operation, OperationDefinitionNode)
    }

    assert fields == {
        ("query", "vehicles"),
        ("mutation", "setCharging"),
        ("subscription", "chargeState"),
        ("subscription", "chargingCommand"),
    }
