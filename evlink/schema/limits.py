"""Limits on what one GraphQL document may ask: cost, batched commands, and the stock ones.

Depth, tokens and aliases use Strawberry's own extensions; this module adds a
cost bound (every field costs 1, a list multiplies what is under it by its
bound) and refuses documents that send more than one ``setCharging``: a car is
controlled one request at a time, so that idempotency and rate limits mean
something.
"""

from __future__ import annotations

from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
    VariableNode,
)

__all__ = ["cost_rule", "one_command_rule"]

# How many items a list field may hold at the most, for the cost estimate.
LIST_BOUNDS = {"vehicles": 10, "chargingCommands": 100}
COMMAND_FIELDS = {"setCharging"}


def _bound(field: FieldNode, variables: dict[str, Any]) -> int:
    name = field.name.value
    if name == "chargingCommands":
        for argument in field.arguments or ():
            if argument.name.value == "last":
                value = argument.value
                if isinstance(value, IntValueNode):
                    return max(1, min(int(value.value), LIST_BOUNDS[name]))
                if isinstance(value, VariableNode):
                    given = variables.get(value.name.value)
                    if isinstance(given, int):
                        return max(1, min(given, LIST_BOUNDS[name]))
                return LIST_BOUNDS[name]
        return 10
    return LIST_BOUNDS.get(name, 1)


def _cost(
    selection_set: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
    variables: dict[str, Any],
    seen: frozenset[str] = frozenset(),
) -> int:
    if selection_set is None:
        return 0
    total = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            inner = _cost(selection.selection_set, fragments, variables, seen)
            total += _bound(selection, variables) * (1 + inner)
        elif isinstance(selection, InlineFragmentNode):
            total += _cost(selection.selection_set, fragments, variables, seen)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is not None and name not in seen:  # cycles are GraphQL's to refuse
                total += _cost(fragment.selection_set, fragments, variables, seen | {name})
    return total


def cost_rule(max_cost: int) -> type[ValidationRule]:
    class CostRule(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            context: ValidationContext = self.context
            fragments = {
                d.name.value: d
                for d in context.document.definitions
                if isinstance(d, FragmentDefinitionNode)
            }
            cost = _cost(node.selection_set, fragments, {})
            if cost > max_cost:
                self.report_error(
                    GraphQLError(
                        f"The query costs {cost}, more than the limit of {max_cost}",
                        node,
                        extensions={"code": "QUERY_TOO_COSTLY"},
                    )
                )

    return CostRule


def one_command_rule() -> type[ValidationRule]:
    class OneCommandRule(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            if node.operation.value != "mutation":
                return
            commands = [
                s
                for s in node.selection_set.selections
                if isinstance(s, FieldNode) and s.name.value in COMMAND_FIELDS
            ]
            spreads = [s for s in node.selection_set.selections if not isinstance(s, FieldNode)]
            if len(commands) > 1 or (commands and spreads):
                self.report_error(
                    GraphQLError(
                        "One setCharging per request: send the others separately",
                        node,
                        extensions={"code": "BATCHED_COMMANDS"},
                    )
                )

    return OneCommandRule
