"""evlink as it was before the benchmark's fixes, for the "Before fixes" column.

``python -m bench.serve_evlink --before`` calls :func:`apply` before it builds the
app, so that one run measures evlink with and without the fixes side by side.
Each undo is a small patch of this process only.

- **GraphQL validation ran on every request.** ``build_schema`` made the
  depth, alias and cost rule classes afresh for each request, and
  ``ValidationCache`` is keyed by those classes, so it never hit. The fix makes
  the classes once. Undone here by a stand-in for ``AddValidationRules`` that
  hands each request fresh copies of the rule classes.
- **Full garbage collections stalled every subscriber.** With 1,000 subscribers,
  CPython's default young-generation threshold (700 allocations) let each burst
  of events promote enough objects to trigger full collections of every
  websocket's objects, 300-700 ms each. The fix (``evlink.server.tune_gc``,
  called by the app's lifespan) raises the threshold. Undone here by a no-op.
- **Every read went to the database, every GraphQL query was executed.** A status
  read was three queries (key, vehicle, charge state). The fix is the read cache
  (:mod:`evlink.cache`, :mod:`evlink.schema.results`). Undone by its setting:
  ``EVLINK_CACHE_TTL=0`` (:data:`SETTINGS`).

- **Each subscriber executed the same event.** The fix
  (:mod:`evlink.schema.fanout`) executes an event once per document and
  variables. Undone here by Strawberry's own execution context class.
- **Websockets were compressed.** evlink now declines permessage-deflate unless
  ``EVLINK_WS_COMPRESSION=true``. Undone by that setting (:data:`SETTINGS`).

Not undone (they are not switchable): the five HTTP middlewares merged into
:class:`evlink.edge.HttpEdge`, and the limiter counting in memory without a
storage round trip. The "before" column therefore understates how slow evlink
was before the benchmark: it had those costs too.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["SETTINGS", "apply"]

# Settings of the "before" server (passed to bench.serve_evlink.bench_settings).
SETTINGS: dict[str, Any] = {"cache_ttl": 0.0, "ws_compression": True}

logger = logging.getLogger(__name__)


def _fresh_validation_rules() -> None:
    from strawberry.extensions import AddValidationRules

    import evlink.schema

    class FreshRules(AddValidationRules):
        """Each request gets new rule classes, as the factories used to make them."""

        def __init__(self, validation_rules: list[Any]) -> None:
            super().__init__([type(r.__name__, (r,), {}) for r in validation_rules])

    if getattr(evlink.schema, "AddValidationRules", None) is None:
        logger.warning("before: evlink.schema no longer uses AddValidationRules; not undone")
        return
    evlink.schema.AddValidationRules = FreshRules  # type: ignore[attr-defined]


def _default_gc() -> None:
    import evlink.app

    if getattr(evlink.app, "tune_gc", None) is None:
        logger.warning("before: evlink.app no longer calls tune_gc; not undone")
        return
    evlink.app.tune_gc = lambda: None  # type: ignore[attr-defined]


def _execute_per_subscriber() -> None:
    from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

    import evlink.schema

    if getattr(evlink.schema, "SharedEventExecutor", None) is None:
        logger.warning("before: evlink.schema no longer uses SharedEventExecutor; not undone")
        return
    evlink.schema.SharedEventExecutor = StrawberryGraphQLCoreExecutionContext  # type: ignore[attr-defined]


def apply() -> None:
    """Put the pre-fix code back in place (in this process only)."""
    _fresh_validation_rules()
    _default_gc()
    _execute_per_subscriber()
