"""Introspection without a key, answered once per document.

The schema is fixed for the life of the process, so the result of an operation that
asks only for introspection (``__schema``, ``__type``, ``__typename`` at its root) is
fixed too, for a given document, operation name and variables. A full introspection
costs about 28 ms of CPU and answers 56 KB: without a key (and so without a rate
limit), twenty clients asking for it again and again held the process at 100 % (the
attacker trial). :class:`IntrospectionAnswers` keeps the last :data:`MAX_KEPT` such
results that had no errors, and the view (:meth:`evlink.schema.view.GraphQLView.
execute_single`) serves a request without ``Authorization`` from them. A request with
a key runs as any other: it is charged to its rate limits when it runs.
"""

from __future__ import annotations

import json
from collections import OrderedDict

from graphql import FieldNode, GraphQLError, OperationDefinitionNode, OperationType, parse
from strawberry.http import GraphQLRequestData
from strawberry.types import ExecutionResult

__all__ = ["MAX_KEPT", "IntrospectionAnswers", "introspection_only"]

# Results kept (each a document's, with its operation name and variables).
MAX_KEPT = 32
# Documents judged, kept by their text (a client's other queries are judged once each).
_MAX_JUDGED = 512
_ROOT_FIELDS = frozenset({"__schema", "__type", "__typename"})

Key = tuple[str, str | None, str]


def introspection_only(query: str) -> bool:
    """Whether every operation of ``query`` is a query whose root selects only
    introspection fields (a fragment at the root counts as something else)."""
    try:
        document = parse(query)
    except GraphQLError:
        return False
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    return bool(operations) and all(
        operation.operation is OperationType.QUERY
        and all(
            isinstance(selection, FieldNode) and selection.name.value in _ROOT_FIELDS
            for selection in operation.selection_set.selections
        )
        for operation in operations
    )


class IntrospectionAnswers:
    """The results of introspection-only operations, by document, operation name and
    variables; the oldest let go past :data:`MAX_KEPT`."""

    def __init__(self) -> None:
        self._kept: OrderedDict[Key, ExecutionResult] = OrderedDict()
        self._judged: dict[str, bool] = {}
        self.served = 0  # requests answered from here (the metrics report it)

    def key(self, request: GraphQLRequestData) -> Key | None:
        """The request's key when it asks for introspection only, else None."""
        query = request.query
        if not query or "__" not in query:
            return None
        only = self._judged.get(query)
        if only is None:
            if len(self._judged) >= _MAX_JUDGED:
                self._judged.clear()
            only = self._judged[query] = introspection_only(query)
        if not only:
            return None
        variables = json.dumps(request.variables, sort_keys=True, default=str)
        return (query, request.operation_name, variables)

    def get(self, key: Key) -> ExecutionResult | None:
        answer = self._kept.get(key)
        if answer is not None:
            self._kept.move_to_end(key)
        return answer

    def put(self, key: Key, result: ExecutionResult) -> None:
        """Keep ``result`` if it is a whole answer (no errors: a refusal by the limits or
        a bad variable is judged again each time)."""
        if result.errors:
            return
        self._kept[key] = result
        self._kept.move_to_end(key)
        while len(self._kept) > MAX_KEPT:
            self._kept.popitem(last=False)
