"""Limits on what one GraphQL document may ask, checked in time linear in the document.

A document is measured once, before GraphQL's own validation rules run
(:class:`DocumentLimits`, in place of Strawberry's ``ValidationCache``):

- **fragment spreads**: at most ``max_spreads`` in the document, counted as
  written, before anything expands them; **operations**: at most
  :data:`MAX_OPERATIONS`; one response name at most :data:`MAX_REPEATS` times in one
  selection set (what GraphQL's overlapping-fields rule compares pair by pair);
- **depth** (nested fields; fragments and inline fragments add none, nor do
  introspection fields),
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
from collections.abc import Callable, Iterator
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
    Token,
    TokenKind,
    ValidationContext,
    ValidationRule,
    VariableNode,
)
from graphql.validation import (
    ASTValidationRule,
    NoUndefinedVariablesRule,
    NoUnusedVariablesRule,
    VariablesInAllowedPositionRule,
)
from graphql.validation.rules import overlapping_fields_can_be_merged
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document

__all__ = [
    "CODES",
    "DocumentLimits",
    "Limits",
    "ValidDocuments",
    "document_limits",
    "measure",
    "one_command_rule",
]

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
                    if not selection.name.value.startswith("__"):
                        # Introspection is not counted, as by GraphQL's depth limiters: the
                        # standard query nests `ofType` deeper than any limit of data.
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


# Digits of an Int literal read as a number (GraphQL's Int has 32 bits: 10 digits and a
# sign); a longer one is left to GraphQL's rules, which refuse it.
MAX_INT_DIGITS = 11


def _bound(field: FieldNode) -> int:
    """How many items ``field`` may hold: 1, or a list's bound (``last:`` when literal)."""
    name = field.name.value
    if name != "chargingCommands":
        return LIST_BOUNDS.get(name, 1)
    for argument in field.arguments or ():
        if argument.name.value == "last":
            value = argument.value
            if isinstance(value, IntValueNode) and len(value.value) <= MAX_INT_DIGITS:
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


def _long_integer(document: DocumentNode) -> Token | None:
    """An Int literal of more than :data:`MAX_INT_DIGITS` digits in ``document`` (GraphQL's
    Int rule hands it to ``int()``, which refuses 4,300 digits with a message of Python's
    own), found in the parsed document's tokens."""
    token = document.loc.start_token if document.loc is not None else None
    while token is not None:
        if token.kind == TokenKind.INT and len(token.value or "") > MAX_INT_DIGITS:
            return token
        token = token.next
    return None


def measure(document: DocumentNode, limits: Limits) -> list[GraphQLError]:
    """The limits ``document`` breaks (at most one error), in one pass over the document."""
    long_integer = _long_integer(document)
    if long_integer is not None:
        digits = len(long_integer.value or "")
        return _refusal(f"An Int of {digits} digits: GraphQL's Int has 32 bits", "BAD_REQUEST")
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
    """Parsing and validation, with the valid documents of recent texts kept.

    Parsing: a text whose document was valid before gets that document back (in place of
    Strawberry's ``ParserCache``, which kept any text's document, so that unique invalid
    documents of 2,000 tokens, about 1 MiB each, filled it). Validation: :func:`measure`
    first, GraphQL's rules only for a document within the limits; a valid document is
    then kept, under :class:`ValidDocuments`' bounds. An invalid one is never kept: it
    costs its sender the work again, and nobody else memory."""

    def __init__(self, limits: Limits, documents: ValidDocuments) -> None:
        super().__init__()
        self.limits = limits
        self.documents = documents
        self._known = False

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if context.query and context.graphql_document is None:
            known = self.documents.get(context.query)
            if known is not None:
                context.graphql_document = known
                self._known = True
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        assert document is not None  # parsed before validation
        if self._known:
            context.pre_execution_errors = []
            yield
            return
        rules: tuple[type[ASTValidationRule], ...] = (
            NodeCachesByIdentity,
            *context.validation_rules,
        )
        if context.query and "$" not in context.query:
            # No variable can be defined or used: these rules can find nothing, and each
            # hashes the whole operation, node by node (a third of the time of a large one).
            rules = tuple(rule for rule in rules if rule not in _VARIABLE_RULES)
        errors = measure(document, self.limits) or validate_document(
            context.schema._schema, document, rules
        )
        if not errors and context.query:
            self.documents.put(context.query, document)
        context.pre_execution_errors = errors
        yield


class _ByIdentity:
    """A mapping keyed by the identity of its keys (the few methods graphql-core uses)."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[object, Any]] = {}

    def get(self, key: object, default: Any = None) -> Any:
        found = self._items.get(id(key))
        return default if found is None else found[1]

    def __getitem__(self, key: object) -> Any:
        return self._items[id(key)][1]

    def __setitem__(self, key: object, value: Any) -> None:
        self._items[id(key)] = (key, value)  # the key is kept, so its id stays its own

    def __contains__(self, key: object) -> bool:
        return id(key) in self._items


class NodeCachesByIdentity(ASTValidationRule):
    """Not a rule: put first in the rules, it keys the validation context's caches by
    node identity. graphql-core keys them by AST node, whose hash walks the node's whole
    subtree on every lookup; its variable rules look the operation up three times, which
    took a third of the validation of a 2,000-token document."""

    CACHES = ("_fragment_spreads", "_variable_usages", "_recursive_variable_usages")

    def __init__(self, context: ValidationContext) -> None:
        super().__init__(context)
        for name in self.CACHES:
            if isinstance(getattr(context, name, None), dict):
                setattr(context, name, _ByIdentity())


_VARIABLE_RULES = frozenset(
    {NoUndefinedVariablesRule, NoUnusedVariablesRule, VariablesInAllowedPositionRule}
)


class ValidDocuments:
    """Valid documents by their text, least recently used out: at most ``count`` of them,
    and at most ``text_bytes`` of text in all (a parsed document takes some 200 times its
    text's size in memory; a common client's document is a few hundred bytes)."""

    def __init__(self, count: int = 256, text_bytes: int = 262_144) -> None:
        self.count = count
        self.text_bytes = text_bytes
        self._documents: OrderedDict[str, DocumentNode] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._documents)

    def get(self, text: str) -> DocumentNode | None:
        document = self._documents.get(text)
        if document is not None:
            self._documents.move_to_end(text)
        return document

    def put(self, text: str, document: DocumentNode) -> None:
        if len(text) > self.text_bytes // 16 or text in self._documents:
            return  # a document larger than a sixteenth of the budget is not kept
        self._documents[text] = document
        self._bytes += len(text)
        while len(self._documents) > self.count or self._bytes > self.text_bytes:
            old, _ = self._documents.popitem(last=False)
            self._bytes -= len(old)


def document_limits(
    limits: Limits, documents: ValidDocuments | None = None
) -> Callable[[], DocumentLimits]:
    """A factory of :class:`DocumentLimits` (Strawberry makes extensions per request),
    sharing one store of valid documents per schema."""
    kept = documents if documents is not None else ValidDocuments()
    return lambda: DocumentLimits(limits, kept)


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
