"""One execution per subscription event, shared by the subscribers that asked the same.

When a car's charge state changes, every ``chargeState`` subscriber of that car
gets the same event, and graphql-core executes the subscriber's selection set on
it: with 1,000 subscribers that is 1,000 identical executions, most of the time
from the change to the last subscriber (bench/README.md).

:func:`evlink.resolvers.follow.follow_charge_state` hands every subscriber of one
message the same state, and the subscription makes its payload once per state with
:func:`evlink.events.shared`; :class:`SharedEventExecutor` then executes a document
with its variables once per such payload and hands the same result to the others that
sent the same document with the same variables. Only payloads of :data:`SHAREABLE` types are
shared: plain data whose fields read neither the context nor the caller, so the
answer cannot depend on who asks. Results with errors are never shared.
"""

from __future__ import annotations

import json
from typing import Any

from graphql import ExecutionResult
from graphql.language import OperationDefinitionNode
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from evlink.schema.types import ChargeState

__all__ = ["SHAREABLE", "SharedEventExecutor"]

# Payload types whose fields are plain data: executing them cannot depend on the caller.
SHAREABLE: tuple[type, ...] = (ChargeState,)
_REMEMBERED = 1024  # (document, variables) pairs with their latest shared result

_Key = tuple[int, str]
# (document, variables) -> (the operation node, the payload, the result), the latest.
_results: dict[_Key, tuple[OperationDefinitionNode, object, ExecutionResult]] = {}


class SharedEventExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor, sharing the result of a subscription event (above)."""

    def execute_operation(self, serially: bool | None = None) -> Any:
        payload = self.root_value
        if not isinstance(payload, SHAREABLE):
            return super().execute_operation(serially)
        key = (id(self.operation), _variables_key(self.variable_values.coerced))
        known = _results.get(key)
        if known is not None and known[0] is self.operation and known[1] is payload:
            return known[2]
        result = super().execute_operation(serially)
        if isinstance(result, ExecutionResult) and not result.errors:
            _results.pop(key, None)
            if len(_results) >= _REMEMBERED:
                del _results[next(iter(_results))]
            # The node and the payload are kept alive with it: their ids stay theirs.
            _results[key] = (self.operation, payload, result)
        return result


def _variables_key(variables: dict[str, Any]) -> str:
    return json.dumps(variables, sort_keys=True, default=str)
