"""GraphQL errors from the one error table: ``extensions.code``, internals masked."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types.execution import StreamExecutionResult

from evlink.errors import BadRequest, EvlinkError, InternalError
from evlink.requestid import current_request_id

__all__ = ["ErrorCodes", "format_error", "rewrite_errors", "without_schema_names"]

logger = logging.getLogger(__name__)


def format_error(error: GraphQLError) -> GraphQLError:
    """An error a client may see: evlink's own with its code, anything else masked."""
    original = error.original_error
    if original is None or isinstance(original, GraphQLError):
        return error  # GraphQL's own (syntax, validation): stays GraphQL's
    if isinstance(original, InvalidOperationTypeError):
        # A client's mistake (e.g. a query over the legacy graphql-ws protocol), not ours.
        original = BadRequest(
            f"{original.operation_type.value} operations are not served here; "
            "send queries and mutations over HTTP or graphql-transport-ws"
        )
    if isinstance(original, CannotGetOperationTypeError):
        # An operationName the document does not have (websockets; HTTP answers 400).
        original = BadRequest(original.as_http_error_reason())
    if not isinstance(original, EvlinkError):
        logger.error(
            "request %s: unexpected error in %s",
            current_request_id(),
            ".".join(str(p) for p in error.path or ()),
            exc_info=original,
        )
        original = InternalError()
    elif original.status >= 500 and original.log_each:
        logger.error("request %s: %s (%s)", current_request_id(), original.code, original.message)
    extensions: dict[str, str | int] = {"code": original.code}
    if original.retry_after is not None:
        extensions["retryAfter"] = max(1, round(original.retry_after))
    return GraphQLError(
        original.message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions=extensions,
    )


# GraphQL's own messages that name an argument, a type or a parent type the client did
# not write, with what production answers instead (the client's own names kept).
_SCHEMA_NAMES: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(
            r"Argument '(?:\w+\.)?(@?\w+)\(\w+:\)' of type '[^']*' is required,"
            r" but it was not provided\."
        ),
        r"A required argument of '\1' was not provided.",
    ),
    (re.compile(r"Cannot query field '(\w+)' on type '\w+'\."), r"Cannot query field '\1' here."),
    (
        re.compile(r"Unknown argument '(\w+)' on field '\w+\.(\w+)'\."),
        r"Unknown argument '\1' on field '\2'.",
    ),
    (
        re.compile(
            r"Field '(\w+)' must not have a selection since type '[^']*' has no subfields\."
        ),
        r"Field '\1' must not have a selection.",
    ),
    (re.compile(r"Field '(\w+)' of type '[^']*' must have"), r"Field '\1' must have"),
    (
        re.compile(r"(Variable '\$\w+' of type '[^']*') used in position expecting type '[^']*'\."),
        r"\1 cannot be used in this position.",
    ),
    (re.compile(r"does not exist in '\w+' enum\."), "does not exist in this enum."),
    (
        re.compile(
            r"(?:Enum '\w+'|\b(?:Int|Float|String|Boolean|ID)) cannot represent [^:]*value: "
        ),
        "Cannot represent value: ",
    ),
    (re.compile(r"(Expected (?:a )?value) of (?:non-null )?type '[^']*'"), r"\1"),
    (
        re.compile(r"as objects of type '\w+' can never be of type '(\w+)'"),
        r"as these objects can never be of type '\1'",
    ),
]


def without_schema_names(message: str) -> str:
    """Production: ``message`` with no suggestion ("Did you mean …") and no name of an
    argument or a type that the client did not write; its own names stay."""
    message = message.split("Did you mean")[0].strip()
    for pattern, replacement in _SCHEMA_NAMES:
        message = pattern.sub(replacement, message)
    return message


def rewrite_errors(result: object) -> None:
    """The errors of ``result`` (any result with ``errors``) as :func:`format_error` has them."""
    errors = getattr(result, "errors", None)
    if errors:
        result.errors = [format_error(e) for e in errors]  # type: ignore[attr-defined]


class ErrorCodes(SchemaExtension):
    """Rewrites the errors of every result, subscription events included."""

    def on_operation(self) -> Iterator[None]:
        yield
        rewrite_errors(self.execution_context.result)

    def on_stream_result(self, result: StreamExecutionResult) -> Iterator[None]:
        rewrite_errors(result)
        yield
