"""GraphQL errors from the one error table: ``extensions.code``, internals masked."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.types.execution import StreamExecutionResult

from evlink.errors import BadRequest, EvlinkError, InternalError, StreamInterrupted
from evlink.requestid import current_request_id

__all__ = ["ErrorCodes", "format_error"]

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
    if not isinstance(original, EvlinkError):
        logger.error(
            "request %s: unexpected error in %s",
            current_request_id(),
            ".".join(str(p) for p in error.path or ()),
            exc_info=original,
        )
        original = InternalError()
    elif original.status >= 500 and not isinstance(original, StreamInterrupted):
        # (A broken event stream is expected and logged once per outage by the bus.)
        logger.error("request %s: %s (%s)", current_request_id(), original.code, original.message)
    extensions = {"code": original.code}
    if original.retry_after is not None:
        extensions["retryAfter"] = str(max(1, round(original.retry_after)))
    return GraphQLError(
        original.message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions=extensions,
    )


def _rewrite(result: object) -> None:
    errors = getattr(result, "errors", None)
    if errors:
        result.errors = [format_error(e) for e in errors]  # type: ignore[attr-defined]


class ErrorCodes(SchemaExtension):
    """Rewrites the errors of every result, subscription events included."""

    def on_operation(self) -> Iterator[None]:
        yield
        _rewrite(self.execution_context.result)

    def on_stream_result(self, result: StreamExecutionResult) -> Iterator[None]:
        _rewrite(result)
        yield
