"""The documented Home Assistant REST API, as thin routes over :mod:`evlink.resolvers`,
and its OpenAPI document (``/api/openapi.json``, rendered at ``/api/docs``)."""

from starlette.routing import BaseRoute, Route

from evlink.compat_rest.apidocs import api_docs
from evlink.compat_rest.openapi import openapi_json
from evlink.compat_rest.routes import routes as api_routes
from evlink.compat_rest.sessions import routes as session_routes

__all__ = ["routes"]

routes: list[BaseRoute] = [
    *api_routes,
    *session_routes,
    Route("/api/openapi.json", openapi_json, methods=["GET"]),
    Route("/api/docs", api_docs, methods=["GET"]),
]
