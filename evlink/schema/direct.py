"""Known queries over HTTP, executed by graphql-core without Strawberry's operation around it.

A client polls with the same document again and again. Once that document has been
validated (it is in :class:`~evlink.schema.limits.ValidDocuments`), Strawberry's work
around the execution is the same each time and changes nothing in the answer: its
request adapter and body parsing, the schema's extension hooks (a context manager per
extension and phase, of which only the charge and the error codes do anything for a
known document: it is neither parsed nor validated again), its execution context. For
such a request the view (:class:`evlink.schema.view.GraphQLView`) does those two things
itself, in the same order, and hands the document to graphql-core's ``execute`` as
Strawberry would (the same schema, executor class, ``is_awaitable`` and middleware), so
the resolvers, their errors, null propagation and the answer's bytes are graphql-core's
own.

:func:`known_query` decides, without any side effect, whether a request may take this
way: a POST with a declared length and a JSON body (``application/json``, no streaming
``Accept``), an object whose ``query`` is the text of a known document, ``variables`` an
object or absent, no ``extensions``, and an ``operationName`` that picks one *query* of
the document. Anything else (a mutation, a new or invalid document, a batch, a body
Strawberry would refuse) goes through Strawberry as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLObjectType,
    GraphQLResolveInfo,
    InlineFragmentNode,
    NamedTypeNode,
    NonNullTypeNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    StringValueNode,
    Undefined,
    VariableNode,
    execute,
    get_operation_ast,
    is_leaf_type,
    is_list_type,
    is_non_null_type,
    is_object_type,
)
from graphql import (
    ExecutionResult as GraphQLExecutionResult,
)
from graphql.execution import MiddlewareManager
from graphql.execution.values import get_argument_values, get_variable_values
from starlette.datastructures import Headers
from starlette.types import Scope
from strawberry.execution.is_awaitable import optimized_is_awaitable
from strawberry.schema.schema import _coerce_error
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types import ExecutionResult
from strawberry.types.field import StrawberryField

from evlink.requestheaders import media_type, raw_header
from evlink.schema.errors import rewrite_errors

__all__ = [
    "RESOLVED",
    "KnownQuery",
    "Plans",
    "answer_known",
    "compile_plan",
    "execute_known",
    "known_query",
    "may_be_known",
    "refused_before_execution",
    "vehicle_asked",
]


@dataclass(frozen=True, slots=True)
class KnownQuery:
    """A request for a query of a known (validated) document."""

    text: str
    document: DocumentNode
    variables: dict[str, Any] | None
    operation_name: str | None


def may_be_known(scope: Scope, view: Any) -> bool:
    """Whether a POST may be a known query, from its headers: JSON, of a declared length
    (so that reading it first refuses nothing: a body over the limit is refused by its
    length before the view runs), not asking for a stream the view would serve."""
    if media_type(scope) != "application/json" or raw_header(scope, b"content-length") is None:
        return False
    return not (
        view._stream_transport_map and view._get_stream_transport_from_headers(Headers(scope=scope))
    )


def known_query(scope: Scope, body: bytes, view: Any, documents: Any) -> KnownQuery | None:
    """The known query ``body`` asks for, or None when Strawberry must handle the request
    (the headers were found fit by :func:`may_be_known`).

    ``view`` decodes the body as Strawberry's parsing would (``decode_json``);
    ``documents``: the schema's valid documents."""
    if documents is None:
        return None
    try:
        data = view.decode_json(body)
    except Exception:
        return None
    if not isinstance(data, dict):
        return None
    text = data.get("query")
    variables = data.get("variables")
    name = data.get("operationName")
    if (
        not isinstance(text, str)
        or not isinstance(variables, dict | None)
        or not isinstance(name, str | None)
        or data.get("extensions") is not None
    ):
        return None
    document = documents.get(text)
    if document is None:
        return None
    operation = get_operation_ast(document, name)
    if operation is None or operation.operation is not OperationType.QUERY:
        return None
    return KnownQuery(text, document, variables, name)


async def execute_known(
    schema: Any, query: KnownQuery, context: Any, *middleware: Any
) -> ExecutionResult:
    """``query`` executed as Strawberry's ``Schema.execute`` executes a known document once
    its extensions have charged it: graphql-core's ``execute`` with Strawberry's arguments,
    the errors processed by the schema (suggestions removed in production), then given
    their codes (:func:`~evlink.schema.errors.rewrite_errors`, the ``ErrorCodes``
    extension's work)."""
    executed: Any = execute(
        schema._schema,
        query.document,
        root_value=None,
        middleware=MiddlewareManager(*middleware),
        variable_values=query.variables,
        operation_name=query.operation_name,
        context_value=context,
        is_awaitable=cast(Any, optimized_is_awaitable),
        executor_class=schema.execution_context_class,
        operation_extensions=None,
    )
    result: GraphQLExecutionResult = (
        await executed if optimized_is_awaitable(executed) else executed
    )
    if result.errors:
        schema._process_errors(result.errors, None)
    rewrite_errors(result)
    return ExecutionResult(data=result.data, errors=result.errors, extensions={})


def refused_before_execution(schema: Any, error: Exception) -> ExecutionResult:
    """What Strawberry answers when an extension (the charge) fails with ``error`` before
    the execution: no data, the error as GraphQL's (not given a code: the error-code
    extension's hook is left by the exception)."""
    errors: list[GraphQLError] = [_coerce_error(error)]
    schema._process_errors(errors, None)
    return ExecutionResult(data=None, errors=errors, extensions={})


# The plan: a known query's selections, answered without graphql-core while every value
# is plain. Compiled once per (document, operation); None when the document has
# anything the plan does not do itself (directives, abstract types, fragments on another
# type, a field with a resolver not listed here, two resolvers in one selection set).

# The fields with a resolver a plan calls (with the context as ``info.context`` only):
# each reads the caller and one vehicle, and nothing of ``info`` but its context.
RESOLVED = frozenset({("Query", "vehicle"), ("Vehicle", "chargeState")})
_TYPENAME, _LEAF, _LEAF_LIST, _OBJECT, _RESOLVED = range(5)


@dataclass(frozen=True, slots=True, eq=False)
class _Field:
    key: str  # the response name
    kind: int
    attr: str = ""  # the Python attribute of a plain field
    non_null: bool = False
    items_non_null: bool = False
    coerce: Callable[[Any], Any] | None = None  # a leaf's output coercion
    typename: str = ""
    resolver: Callable[..., Awaitable[Any]] | None = None
    node: FieldNode | None = None  # the first node, for arguments
    definition: Any = None  # the GraphQLField
    arguments: tuple[tuple[str, str], ...] = ()  # (GraphQL name, Python name)
    # (Python name, variable) of each argument, when all are variables: no coercion.
    from_variables: tuple[tuple[str, str], ...] | None = None
    fields: tuple[_Field, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class _Plan:
    fields: tuple[_Field, ...]
    operation: OperationDefinitionNode
    # The operation's variables, when each is an ID! or a String! without a default and
    # every resolver's arguments are variables: values given as text are already
    # coerced (graphql-core would hand on the same strings), nothing else is.
    text_variables: tuple[str, ...] | None


class _Replay(Exception):
    """The plan met something it does not answer itself: graphql-core answers."""


@dataclass(slots=True)
class _Info:
    """What a listed resolver reads of ``info``."""

    context: Any


def _collect(
    parent: GraphQLObjectType,
    selection_sets: list[SelectionSetNode],
    fragments: dict[str, FragmentDefinitionNode],
    groups: dict[str, list[FieldNode]],
    visited: set[str],
) -> bool:
    """The fields of ``selection_sets`` by response name, in graphql-core's order (its
    ``collect_fields`` for an object type); False for what a plan does not do."""
    for selection_set in selection_sets:
        for selection in selection_set.selections:
            if selection.directives:
                return False
            if isinstance(selection, FieldNode):
                key = (selection.alias or selection.name).value
                groups.setdefault(key, []).append(selection)
                continue
            if isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                if condition is not None and condition.name.value != parent.name:
                    return False
                inner = selection.selection_set
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if getattr(selection, "arguments", None):
                    return False
                if name in visited:
                    continue
                visited.add(name)
                fragment = fragments.get(name)
                if (
                    fragment is None
                    or fragment.directives
                    or fragment.variable_definitions
                    or fragment.type_condition.name.value != parent.name
                ):
                    return False
                inner = fragment.selection_set
            else:  # pragma: no cover - GraphQL has three kinds of selection
                return False
            if not _collect(parent, [inner], fragments, groups, visited):
                return False
    return True


def _compile(
    schema: Any,
    parent: GraphQLObjectType,
    selection_sets: list[SelectionSetNode],
    fragments: dict[str, FragmentDefinitionNode],
) -> tuple[_Field, ...] | None:
    if parent.is_type_of is not None:
        return None
    groups: dict[str, list[FieldNode]] = {}
    if not _collect(parent, selection_sets, fragments, groups, set()):
        return None
    planned: list[_Field] = []
    resolvers = 0
    for key, nodes in groups.items():
        name = nodes[0].name.value
        if name == "__typename":
            planned.append(_Field(key, _TYPENAME, typename=parent.name))
            continue
        definition = parent.fields.get(name)
        if definition is None or name.startswith("__"):
            return None
        field = definition.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
        if not isinstance(field, StrawberryField):
            return None
        return_type = definition.type
        non_null = is_non_null_type(return_type)
        inner = return_type.of_type if non_null else return_type
        resolver: Callable[..., Awaitable[Any]] | None = None
        arguments: tuple[tuple[str, str], ...] = ()
        from_variables: tuple[tuple[str, str], ...] | None = None
        if field.base_resolver is not None:
            if (parent.name, name) not in RESOLVED or not field.is_async:
                return None
            resolvers += 1
            resolver = cast(Callable[..., Awaitable[Any]], field.base_resolver.wrapped_func)
            converter = schema.config.name_converter
            arguments = tuple((converter.from_argument(a), a.python_name) for a in field.arguments)
            if any(not is_leaf_type(_unwrapped(a.type)) for a in definition.args.values()):
                return None
            from_variables = _from_variables(nodes[0], definition, arguments)
        elif any(node.arguments for node in nodes):
            return None
        if is_list_type(inner):
            item = inner.of_type
            items_non_null = is_non_null_type(item)
            item = item.of_type if items_non_null else item
            if resolver is not None or not is_leaf_type(item):
                return None
            planned.append(
                _Field(
                    key,
                    _LEAF_LIST,
                    attr=field.python_name,
                    non_null=non_null,
                    items_non_null=items_non_null,
                    coerce=item.coerce_output_value,
                )
            )
        elif is_leaf_type(inner):
            if resolver is not None:
                return None
            planned.append(
                _Field(
                    key,
                    _LEAF,
                    attr=field.python_name,
                    non_null=non_null,
                    coerce=inner.coerce_output_value,
                )
            )
        elif is_object_type(inner):
            sets = [node.selection_set for node in nodes if node.selection_set is not None]
            fields = _compile(schema, inner, sets, fragments)
            if fields is None:
                return None
            planned.append(
                _Field(
                    key,
                    _RESOLVED if resolver is not None else _OBJECT,
                    attr=field.python_name,
                    non_null=non_null,
                    resolver=resolver,
                    node=nodes[0],
                    definition=definition,
                    arguments=arguments,
                    from_variables=from_variables,
                    fields=fields,
                )
            )
        else:
            return None
    if resolvers > 1:
        return None  # graphql-core would run them concurrently
    return tuple(planned)


def _from_variables(
    node: FieldNode, definition: Any, arguments: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...] | None:
    """(Python name, variable) of each argument of ``node`` when every argument the
    field has is given, each as a variable; else None."""
    python = dict(arguments)
    given = {a.name.value: a.value for a in node.arguments or ()}
    if set(given) != set(definition.args) or not set(given) <= set(python):
        return None
    pairs = []
    for name, value in given.items():
        if not isinstance(value, VariableNode):
            return None
        pairs.append((python[name], value.name.value))
    return tuple(pairs)


def _text_variables(operation: OperationDefinitionNode) -> tuple[str, ...] | None:
    """The operation's variables if each is declared ``ID!`` or ``String!``, without a
    default or a directive; else None."""
    names = []
    for definition in operation.variable_definitions or ():
        type_ = definition.type
        if (
            not isinstance(type_, NonNullTypeNode)
            or not isinstance(type_.type, NamedTypeNode)
            or type_.type.name.value not in ("ID", "String")
            or definition.default_value is not None
            or definition.directives
        ):
            return None
        names.append(definition.variable.name.value)
    return tuple(names)


def _all_from_variables(fields: tuple[_Field, ...]) -> bool:
    return all(
        (field.kind != _RESOLVED or field.from_variables is not None)
        and _all_from_variables(field.fields)
        for field in fields
    )


def _unwrapped(type_: Any) -> Any:
    while is_non_null_type(type_) or is_list_type(type_):
        type_ = type_.of_type
    return type_


def compile_plan(schema: Any, query: KnownQuery) -> _Plan | None:
    """The plan of ``query``'s operation, or None when graphql-core must execute it."""
    operation = get_operation_ast(query.document, query.operation_name)
    root = schema._schema.query_type
    if operation is None or root is None or operation.directives:
        return None
    fragments = {
        d.name.value: d for d in query.document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    fields = _compile(schema, root, [operation.selection_set], fragments)
    if fields is None:
        return None
    texts = _text_variables(operation) if _all_from_variables(fields) else None
    return _Plan(fields, operation, texts)


def vehicle_asked(plan: _Plan | None, query: KnownQuery) -> str | None:
    """The id a planned query's root ``vehicle(id:)`` asks for, as given (text, from a
    variable given as text or a string literal), or None: the view reads that vehicle
    with the key (:class:`~evlink.resolvers.vehicles.StatusRead`). Only a guess: the
    resolver takes what was read only for the id it is asked, once."""
    if plan is None:
        return None
    for field in plan.fields:
        if field.kind != _RESOLVED or field.node is None or field.node.name.value != "vehicle":
            continue
        if field.from_variables is not None:
            variable = dict(field.from_variables).get("id")
            given = (query.variables or {}).get(variable) if variable else None
            return given if isinstance(given, str) else None
        for argument in field.node.arguments or ():
            if argument.name.value == "id" and isinstance(argument.value, StringValueNode):
                return argument.value.value
    return None


class Plans:
    """The plans of the known queries (None: not plannable), by document and operation,
    least recently made out: at most ``count``, and at most ``text_bytes`` of their
    documents' text in all, as :class:`~evlink.schema.limits.ValidDocuments` bounds the
    documents it keeps (a plan keeps its document alive)."""

    def __init__(self, count: int = 256, text_bytes: int = 262_144) -> None:
        self.count = count
        self.text_bytes = text_bytes
        # (id(document), operation name) -> (document, plan, its text's length).
        self._plans: dict[tuple[int, str | None], tuple[DocumentNode, _Plan | None, int]] = {}
        self._bytes = 0
        # How many were answered by their plan, how many by graphql-core (/metrics).
        self.answered = {"plan": 0, "graphql-core": 0}

    def __len__(self) -> int:
        return len(self._plans)

    def plan(self, schema: Any, query: KnownQuery) -> _Plan | None:
        key = (id(query.document), query.operation_name)
        known = self._plans.get(key)
        if known is not None and known[0] is query.document:
            return known[1]
        if known is not None:  # another document under a reused id
            self._forget(key)
        plan = compile_plan(schema, query)
        self._plans[key] = (query.document, plan, len(query.text))
        self._bytes += len(query.text)
        while len(self._plans) > self.count or self._bytes > self.text_bytes:
            self._forget(next(iter(self._plans)))
        return plan

    def _forget(self, key: tuple[int, str | None]) -> None:
        self._bytes -= self._plans.pop(key)[2]


async def answer_known(
    schema: Any, plans: Plans, query: KnownQuery, context: Any
) -> ExecutionResult:
    """``query`` answered by its plan when every value on the way is plain, else (and for
    every error) by graphql-core (:func:`execute_known`), with the outcome of each
    resolver the plan already ran handed back rather than run again."""
    plan = plans.plan(schema, query)
    if plan is None:
        plans.answered["graphql-core"] += 1
        return await execute_known(schema, query, context)
    given = query.variables or {}
    variables: Any = None  # the given ones, text each (plan.text_variables)
    if plan.text_variables is None or not all(
        isinstance(given.get(name), str) for name in plan.text_variables
    ):
        variables = get_variable_values(
            schema._schema, plan.operation.variable_definitions or (), given
        )
        if isinstance(variables, list):  # graphql-core reports them
            plans.answered["graphql-core"] += 1
            return await execute_known(schema, query, context)
    outcomes: dict[tuple[str, ...], Any] = {}
    try:
        data = await _run(plan.fields, None, _Info(context), (), outcomes, variables, given)
    except _Replay:
        plans.answered["graphql-core"] += 1
        return await execute_known(schema, query, context, _replaying(outcomes))
    plans.answered["plan"] += 1
    return ExecutionResult(data=data, errors=None, extensions={})


async def _run(
    fields: tuple[_Field, ...],
    source: Any,
    info: _Info,
    path: tuple[str, ...],
    outcomes: dict[tuple[str, ...], Any],
    variables: Any,
    given: dict[str, Any],
) -> dict[str, Any]:
    answer: dict[str, Any] = {}
    for field in fields:
        kind = field.kind
        if kind == _TYPENAME:
            answer[field.key] = field.typename
            continue
        if kind == _RESOLVED:
            assert field.resolver is not None
            assert field.node is not None
            where = (*path, field.key)
            if variables is None:  # text variables, as graphql-core would coerce them
                assert field.from_variables is not None
                arguments = {python: given[name] for python, name in field.from_variables}
            else:
                try:
                    values = get_argument_values(field.definition, field.node, variables)
                except Exception:
                    raise _Replay() from None
                arguments = {
                    python: values[name] for name, python in field.arguments if name in values
                }
            try:
                value = await field.resolver(source, info=info, **arguments)
            except Exception as failed:
                outcomes[where] = _Failed(failed)
                raise _Replay() from None
            outcomes[where] = value
        else:
            value = getattr(source, field.attr)
        if value is None or value is Undefined:
            if field.non_null:
                raise _Replay()
            answer[field.key] = None
            continue
        if isinstance(value, Exception):
            raise _Replay()
        if kind == _LEAF:
            answer[field.key] = _coerced(field, value)
        elif kind == _LEAF_LIST:
            if not isinstance(value, list | tuple):
                raise _Replay()
            items: list[Any] = []
            for item in value:
                if item is None or item is Undefined:
                    if field.items_non_null:
                        raise _Replay()
                    items.append(None)
                else:
                    items.append(_coerced(field, item))
            answer[field.key] = items
        else:
            answer[field.key] = await _run(
                field.fields, value, info, (*path, field.key), outcomes, variables, given
            )
    return answer


def _coerced(field: _Field, value: Any) -> Any:
    assert field.coerce is not None
    if isinstance(value, Exception):
        raise _Replay()
    try:
        coerced = field.coerce(value)
    except Exception:
        raise _Replay() from None
    if coerced is None or coerced is Undefined:
        raise _Replay()
    return coerced


@dataclass(frozen=True, slots=True)
class _Failed:
    error: Exception


def _replaying(outcomes: dict[tuple[str, ...], Any]) -> Callable[..., Any]:
    """A graphql-core middleware: a field whose resolver the plan ran gets its outcome
    again (as the coroutine it was), any other field resolves as usual."""

    def replay(
        next_: Callable[..., Any], source: Any, info: GraphQLResolveInfo[Any], **args: Any
    ) -> Any:
        if outcomes:
            where = tuple(str(step) for step in info.path.as_list())
            if where in outcomes:
                return _again(outcomes.pop(where))
        return next_(source, info, **args)

    return replay


async def _again(outcome: Any) -> Any:
    if isinstance(outcome, _Failed):
        raise outcome.error
    return outcome
