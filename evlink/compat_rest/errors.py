"""Every REST failure as ``{"detail", "code"}`` with its status, from the one error table
(and a failure outside GraphQL's own handling on ``/graphql`` in GraphQL's shape)."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ExceptionHandler, Scope

from evlink.errors import EvlinkError, InternalError, code_for_status
from evlink.requestid import current_request_id

__all__ = ["error_answer", "error_response", "exception_handlers"]

logger = logging.getLogger(__name__)


def error_response(error: EvlinkError) -> JSONResponse:
    return JSONResponse(
        {"detail": error.message, "code": error.code},
        status_code=error.status,
        headers=error.headers(),
    )


def error_answer(scope: Scope, error: EvlinkError) -> JSONResponse:
    """``error`` in the shape of the API asked: GraphQL's ``{"errors": [...]}`` on
    ``/graphql`` (a body over its limit, say), the REST table's ``{"detail", "code"}``
    elsewhere."""
    if scope.get("path") == GRAPHQL_PATH:
        body = {"errors": [{"message": error.message, "extensions": {"code": error.code}}]}
        return JSONResponse(body, status_code=error.status, headers=error.headers())
    return error_response(error)


GRAPHQL_PATH = "/graphql"


async def _evlink_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EvlinkError)
    if isinstance(exc, InternalError) or (exc.status >= 500 and exc.log_each):
        logger.error(
            "request %s %s failed: %s (%s)",
            current_request_id(),
            request.url.path,
            exc.code,
            exc.message,
        )
    return error_answer(request.scope, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = code_for_status(exc.status_code)
    return JSONResponse(
        {"detail": exc.detail, "code": code}, status_code=exc.status_code, headers=exc.headers
    )


exception_handlers: dict[type[Exception] | int, ExceptionHandler] = {
    EvlinkError: _evlink_error,
    HTTPException: _http_error,
}
