"""The documented Home Assistant REST API, as thin routes over :mod:`evlink.resolvers`."""

from evlink.compat_rest.routes import routes

__all__ = ["routes"]
