"""Limits on what one GraphQL document may ask, checked in time linear in the document.

A document is measured once, before GraphQL's own validation rules run
(:class:`DocumentLimits`, in place of Strawberry's ``ValidationCache``):

- **fragment spreads**: at most ``max_spreads`` in the document, counted as
  written, before anything expands them; **operations**: at most
  :data:`MAX_OPERATIONS`; one response name at most :data:`MAX_REPEATS` times in one
  selection set (what GraphQL's overlapping-fields rule compares pair by pair);
- **depth** (nested fields; fragments and inline fragments add none),
  **aliases** and **cost** (every field costs 1, a list multiplies what is
  under it by its bound), each computed once per fragment and reused at every
  spread, so a fragment spread twice by a fragment spread twice costs what it
  would cost expanded, but is *measured* in one pass.

Only a document within these limits reaches GraphQL's rules, some of which
(overlapping fields) cost more than linear time in what the fragments expand
to; the cost limit bounds that expansion. Stock limiters that walk a fragment
again at every spread (Strawberry's ``QueryDepthLimiter`` and
``MaxAliasesLimiter``) are not used: a 1 KB document of fragments that each
spread the next one twice made them run for hours.

:func:`one_command_rule` refuses documents that send more than one
``setCharging``: a car is controlled one request at a time, so that idempotency
and rate limits mean something.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
    VariableNode,
)
from graphql.validation.rules import overlapping_fields_can_be_merged
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document

__all__ = ["CODES", "DocumentLimits", "Limits", "document_limits", "measure", "one_command_rule"]

# How many items a list field may hold at the most, for the cost estimate.
LIST_BOUNDS = {"vehicles": 10, "chargingCommands": 100}
COMMAND_FIELDS = {"setCharging"}
TOO_COMPLEX = "QUERY_TOO_COMPLEX"
TOO_COSTLY = "QUERY_TOO_COSTLY"
BATCHED_COMMANDS = "BATCHED_COMMANDS"
# The codes of the refusals of this module (GraphQL validation errors, HTTP 200).
CODES = (TOO_COMPLEX, TOO_COSTLY, BATCHED_COMMANDS)

# graphql-core meters the work of its overlapping-fields rule (pairs of fields with one
# response name are compared) and aborts validation past a budget, by default 500,000
# units: about 70 ms of one core here for a document of 1,900 fields named alike. The
# introspection query and the playground's examples spend under 10 units; a client's
# document that needs more than 10,000 is refused ("Validation aborted."), in ~2 ms.
OVERLAP_BUDGET = 10_000
# Operations in one document: a request runs one of them, and GraphQL's variable rules
# walk the document once per operation (300 operations took 50 ms to validate).
MAX_OPERATIONS = 20
# Times one response name may be selected in one selection set, fragments included:
# GraphQL compares each pair of them. Clients whose fragments each select ``id`` repeat it
# a few times; a document of 1,900 ``__typename`` took 30 ms to validate.
MAX_REPEATS = 50
overlapping_fields_can_be_merged.MAX_COMPLEXITY_BUDGET = OVERLAP_BUDGET


@dataclass(frozen=True)
class Limits:
    """What one document may ask (``EVLINK_GRAPHQL_MAX_*``)."""

    max_depth: int
    max_aliases: int
    max_cost: int
    max_spreads: int


@dataclass(frozen=True, eq=False)
class _Measure:
    """Depth, aliases and cost of a selection set with its fragments expanded, and how
    often each response name is selected in it (what GraphQL merges and compares)."""

    depth: int = 0
    aliases: int = 0
    cost: int = 0
    names: Counter[str] = field(default_factory=Counter)


_NOTHING = _Measure()


class _Repeated(Exception):
    def __init__(self, name: str, times: int) -> None:
        super().__init__(name)
        self.name, self.times = name, times


class _Measurer:
    """Measures selection sets; each fragment is measured once (``_fragments``)."""

    def __init__(self, document: DocumentNode, max_repeats: int) -> None:
        self._definitions = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        self._fragments: dict[str, _Measure] = {}
        self._entered: set[str] = set()
        self._max_repeats = max_repeats

    def selection_set(self, node: SelectionSetNode) -> _Measure:
        depth = aliases = cost = 0
        names: Counter[str] = Counter()
        for selection in node.selections:
            if isinstance(selection, FieldNode):
                inner = _NOTHING
                if selection.selection_set is not None:
                    inner = self.selection_set(selection.selection_set)
                    depth = max(depth, inner.depth + 1)
                aliases += inner.aliases + (selection.alias is not None)
                cost += _bound(selection) * (1 + inner.cost)
                names[(selection.alias or selection.name).value] += 1
                continue
            if isinstance(selection, InlineFragmentNode):
                inner = self.selection_set(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                inner = self.fragment(selection.name.value)
            else:  # pragma: no cover - GraphQL has three kinds of selection
                continue
            depth = max(depth, inner.depth)
            aliases += inner.aliases
            cost += inner.cost
            names.update(inner.names)
        if names:
            name, times = names.most_common(1)[0]
            if times > self._max_repeats:
                raise _Repeated(name, times)
        return _Measure(depth, aliases, cost, names)

    def fragment(self, name: str) -> _Measure:
        known = self._fragments.get(name)
        if known is not None:
            return known
        definition = self._definitions.get(name)
        if definition is None or name in self._entered:
            return _NOTHING  # unknown fragments and cycles are GraphQL's own rules to refuse
        self._entered.add(name)
        measured = self.selection_set(definition.selection_set)
        self._entered.discard(name)
        self._fragments[name] = measured
        return measured


def _bound(field: FieldNode) -> int:
    """How many items ``field`` may hold: 1, or a list's bound (``last:`` when literal)."""
    name = field.name.value
    if name != "chargingCommands":
        return LIST_BOUNDS.get(name, 1)
    for argument in field.arguments or ():
        if argument.name.value == "last":
            value = argument.value
            if isinstance(value, IntValueNode):
                return max(1, min(int(value.value), LIST_BOUNDS[name]))
            if isinstance(value, VariableNode):
                return LIST_BOUNDS[name]
    return 10


def _spreads(document: DocumentNode) -> int:
    """The fragment spreads written in ``document``, counted without recursion (and so
    without expanding any), so a deeply nested document cannot exhaust the stack."""
    stack = [
        d.selection_set
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode | FragmentDefinitionNode)
    ]
    spreads = 0
    while stack:
        for selection in stack.pop().selections:
            if isinstance(selection, FragmentSpreadNode):
                spreads += 1
            elif isinstance(selection, FieldNode | InlineFragmentNode) and selection.selection_set:
                stack.append(selection.selection_set)
    return spreads


def _refusal(message: str, code: str, node: Any = None) -> list[GraphQLError]:
    return [GraphQLError(message, node, extensions={"code": code})]


def measure(document: DocumentNode, limits: Limits) -> list[GraphQLError]:
    """The limits ``document`` breaks (at most one error), in one pass over the document."""
    spreads = _spreads(document)
    if spreads > limits.max_spreads:
        return _refusal(
            f"The document has {spreads} fragment spreads, more than the limit of "
            f"{limits.max_spreads}",
            TOO_COMPLEX,
        )
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if len(operations) > MAX_OPERATIONS:
        return _refusal(
            f"The document has {len(operations)} operations, more than the limit of "
            f"{MAX_OPERATIONS}: send only the operation to run",
            TOO_COMPLEX,
        )
    measurer = _Measurer(document, MAX_REPEATS)
    aliases = 0
    for operation in operations:
        try:
            measured = measurer.selection_set(operation.selection_set)
        except _Repeated as repeated:
            return _refusal(
                f"'{repeated.name}' is selected {repeated.times} times in one selection set, "
                f"more than the limit of {MAX_REPEATS}",
                TOO_COMPLEX,
                operation,
            )
        except RecursionError:  # unreachable within the parser's nesting limit; still bounded
            return _refusal("The document is nested too deeply", TOO_COMPLEX, operation)
        name = operation.name.value if operation.name else "anonymous"
        if measured.depth > limits.max_depth:
            return _refusal(
                f"'{name}' exceeds maximum operation depth of {limits.max_depth}",
                TOO_COMPLEX,
                operation,
            )
        if measured.cost > limits.max_cost:
            return _refusal(
                f"The query costs {measured.cost}, more than the limit of {limits.max_cost}",
                TOO_COSTLY,
                operation,
            )
        aliases += measured.aliases
    if aliases > limits.max_aliases:
        return _refusal(f"{aliases} aliases found. Allowed: {limits.max_aliases}", TOO_COMPLEX)
    return []


class DocumentLimits(SchemaExtension):
    """Validation: :func:`measure` first, GraphQL's rules only for a document within the
    limits. The outcome is cached by the document's text (the parser cache hands out one
    document per text): hashing a document node by node cost as much as validating it."""

    def __init__(self, limits: Limits, cache: _Outcomes) -> None:
        super().__init__()
        self.limits = limits
        self.cache = cache

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        assert document is not None  # parsed before validation
        rules = tuple(context.validation_rules)
        key = (context.query, rules) if context.query else None
        errors = self.cache.get(key) if key else None
        if errors is None:
            errors = measure(document, self.limits) or validate_document(
                context.schema._schema, document, rules
            )
            if key:
                self.cache.put(key, errors)
        context.pre_execution_errors = errors
        yield


class _Outcomes:
    """The validation errors of the last ``size`` document texts (least recently used out)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._errors: OrderedDict[Hashable, list[GraphQLError]] = OrderedDict()

    def get(self, key: Hashable) -> list[GraphQLError] | None:
        errors = self._errors.get(key)
        if errors is not None:
            self._errors.move_to_end(key)
        return errors

    def put(self, key: Hashable, errors: list[GraphQLError]) -> None:
        self._errors[key] = errors
        if len(self._errors) > self.size:
            self._errors.popitem(last=False)


def document_limits(limits: Limits, cache_size: int = 256) -> Callable[[], DocumentLimits]:
    """A factory of :class:`DocumentLimits` (Strawberry makes extensions per request),
    sharing one cache of outcomes per schema."""
    outcomes = _Outcomes(cache_size)
    return lambda: DocumentLimits(limits, outcomes)


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
                        extensions={"code": BATCHED_COMMANDS},
                    )
                )

    return OneCommandRule
