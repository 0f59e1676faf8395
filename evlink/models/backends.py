"""Tortoise database clients whose every call is bounded and whose outages are one error.

Tortoise 1.x sets no timeout: a call waits as long as the database (or the link to
it) keeps silent. What Tortoise passes through does not close the gap: extra
credentials reach ``asyncpg.create_pool`` (``timeout`` bounds connecting,
``command_timeout`` each statement), but nothing bounds the wait for a pooled
connection, and ``aiosqlite.connect`` gets no argument at all (only PRAGMAs). So
evlink bounds each whole call here, with ``asyncio.timeout``: waiting for the pool
(or SQLite's one connection), connecting, the statement and handing the connection
back, within ``EVLINK_DATABASE_TIMEOUT`` together. One bound for the whole call is
what a client waits for, and it makes asyncpg's two redundant.

- A call that runs out of time, cannot connect, loses its connection, meets
  PostgreSQL shutting down or starting up, or a SQLite database locked elsewhere
  raises :class:`~evlink.errors.DatabaseUnavailable` (503 with ``Retry-After``).
  Every other database error (a constraint, bad SQL) passes unchanged.
- A statement cut short leaves no broken connection behind. On PostgreSQL its
  connection is terminated before it goes back to the pool: asyncpg would wait for
  the server to acknowledge a cancel, over a link that may be dead, and hold the
  caller meanwhile. The pool opens a new one when needed, and keeps no floor of
  open connections (it would retry that in the background, logging each failure).
  SQLite gives up waiting for another connection's lock (``busy_timeout``) at half
  the bound, so a locked database is told as such before the call runs out.
- A PostgreSQL connection goes back to the pool without asyncpg's reset statement
  (:class:`SessionlessConnection`): the server leaves no session state to undo.
- The outage is logged once, a WARNING when a call first fails and an INFO when one
  succeeds again; the answers in between are not logged (:class:`Outage`).

A transaction is bounded the same way, as one call: :func:`transaction` (and
Tortoise's own ``in_transaction``, which ``get_or_create`` and ``update_or_create``
open themselves: :meth:`BoundedClient._in_transaction` makes it the same) takes the
connection, begins, runs the block's statements and commits within one
``EVLINK_DATABASE_TIMEOUT``. Any failure rolls everything back and an outage is told
as above. Cut short, a PostgreSQL connection is terminated, not pooled (the server
rolls back when it sees it gone); SQLite's one connection stays locked until its
statement has finished in aiosqlite's thread and is rolled back, in the background.
Inside a transaction, :func:`transaction` is a savepoint of it (what a statement
that may fail, a unique insert, needs on PostgreSQL to leave the rest standing).

:func:`in_sqlite_thread` runs a function of the sqlite3 connection in aiosqlite's
thread, so that several statements (a compare-and-set and the insert it allows) cost
one trip there, bounded as one call (inside a transaction, by the transaction).
:func:`fetch_rows` is the hot reads' way (a status miss's key, vehicle and charge
state): one bounded call, with the same lock, bound and errors as ``execute_query``
but without its wrappers. On SQLite the reads asked while a trip to aiosqlite's
thread is under way go together in the next trip (each its own rows or error, each
caller within its own bound); on PostgreSQL asyncpg's ``fetch`` on a pooled
connection. :class:`RowUpdate` is an update not run yet, that another write of the same
transaction may carry in its own database call (one trip for both).

Only the server's own calls are bounded: ``evlink.settings.tortoise_config`` selects
these clients when given a timeout (the app always is; migrations and the CLI are
not).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import aiosqlite
import asyncpg  # type: ignore[import-untyped]
from tortoise.backends.asyncpg.client import AsyncpgDBClient, TransactionWrapper
from tortoise.backends.base.client import (
    BaseDBAsyncClient,
    PoolConnectionWrapper,
    TransactionalDBClient,
)
from tortoise.backends.sqlite.client import SqliteClient, SqliteTransactionWrapper
from tortoise.connection import connections
from tortoise.exceptions import IntegrityError, OperationalError, TransactionManagementError
from tortoise.models import Model

from evlink.errors import DatabaseUnavailable

__all__ = [
    "SQLITE_ONE_TRIP",
    "BoundedClient",
    "BoundedPostgresClient",
    "BoundedSqliteClient",
    "ManyAtOnce",
    "Outage",
    "RowUpdate",
    "database_answers",
    "fetch_rows",
    "fetch_together",
    "get_client_class",
    "in_sqlite_thread",
    "transaction",
]

logger = logging.getLogger(__name__)

# Failures that say the database cannot be reached or cannot serve now. OSError covers
# refused and reset connections and asyncpg's own connect timeout (TimeoutError).
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08: the connection broke
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutting down, starting up
)
# SQLite's answer when another connection held the lock past ``busy_timeout`` (Tortoise
# wraps it in its own OperationalError, as it does bad SQL).
_SQLITE_LOCKED = "database is locked"

T = TypeVar("T")

# aiosqlite runs every call in its connection's thread through ``Connection._execute``
# (private; there since its first releases, and in 0.22). Where it is missing,
# SQLITE_ONE_TRIP is False and callers of in_sqlite_thread make a call per statement.
SQLITE_ONE_TRIP = callable(getattr(aiosqlite.Connection, "_execute", None))


def _unavailable(exc: BaseException) -> str | None:
    """Why ``exc`` means the database is unavailable; None for any other error."""
    if isinstance(exc, _UNREACHABLE):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    cause = exc.args[0] if isinstance(exc, OperationalError) and exc.args else exc
    if isinstance(cause, sqlite3.OperationalError) and str(cause) == _SQLITE_LOCKED:
        return f"SQLite: {cause}"
    return None


class Outage:
    """Whether the database is out, logged once when that changes."""

    def __init__(self) -> None:
        self.since: float | None = None  # monotonic time the outage was first seen

    def failed(self, reason: str) -> None:
        if self.since is None:
            self.since = time.monotonic()
            logger.warning(
                "database unavailable (%s); answering 503 DATABASE_UNAVAILABLE until it "
                "answers again",
                reason,
            )

    def answered(self) -> None:
        if self.since is not None:
            logger.info(
                "database answers again, after %.1f s unavailable", time.monotonic() - self.since
            )
            self.since = None


def _told(outage: Outage, limit: float, exc: Exception) -> DatabaseUnavailable | None:
    """What a bounded call that failed with ``exc`` raises instead: DatabaseUnavailable
    when it ran out of time or the database is unavailable (the outage noted); None for
    any other error, raised as it is."""
    if isinstance(exc, TimeoutError):
        outage.failed(f"no answer within {limit:g} s")
        return DatabaseUnavailable()
    reason = _unavailable(exc)
    if reason is None:
        return None
    outage.failed(reason)
    return DatabaseUnavailable()


@asynccontextmanager
async def _bounded(outage: Outage, limit: float) -> AsyncIterator[None]:
    """One database call within ``limit`` seconds; its outage told as DatabaseUnavailable."""
    try:
        async with asyncio.timeout(limit):
            yield
    except Exception as exc:
        told = _told(outage, limit, exc)
        if told is None:
            raise
        raise told from exc
    outage.answered()


def _cut_short(exc_type: type[BaseException] | None) -> bool:
    """The statement did not finish: the task was cancelled (a timeout, a client gone)."""
    return exc_type is not None and issubclass(exc_type, asyncio.CancelledError)


class BoundedClient(BaseDBAsyncClient):
    """Every statement of a client within its bound (mixed in before the backend's)."""

    timeout: float
    outage: Outage

    def _bound(self) -> AbstractAsyncContextManager[None]:
        return _bounded(self.outage, self.timeout)

    async def ping(self, limit: float) -> None:
        """``SELECT 1`` within ``limit`` seconds (readiness), or DatabaseUnavailable."""
        async with _bounded(self.outage, min(limit, self.timeout)):
            await super().execute_query("SELECT 1")

    async def execute_insert(self, query: str, values: list[Any]) -> Any:
        async with self._bound():
            return await super().execute_insert(query, values)

    async def execute_many(self, query: str, values: list[list[Any]]) -> None:
        async with self._bound():
            await super().execute_many(query, values)

    async def execute_query(
        self, query: str, values: list[Any] | None = None
    ) -> tuple[int, Any]:  # the rows: a list on PostgreSQL, a sequence on SQLite
        async with self._bound():
            return await super().execute_query(query, values)

    async def execute_query_dict(
        self, query: str, values: list[Any] | None = None
    ) -> list[dict[str, Any]]:
        async with self._bound():
            return await super().execute_query_dict(query, values)

    async def execute_script(self, query: str) -> None:
        async with self._bound():
            await super().execute_script(query)

    async def fetch_rows(self, query: str, values: list[Any]) -> Sequence[Any]:
        """The rows of a read (:func:`fetch_rows`): here through ``execute_query``."""
        _, rows = await self.execute_query(query, values)
        return rows  # type: ignore[no-any-return]

    def _transaction(self) -> AbstractAsyncContextManager[TransactionalDBClient]:
        """The backend's transaction: its client for the statements, committed at the
        end, rolled back on failure (bounded by :func:`transaction`)."""
        raise NotImplementedError

    def _in_transaction(self) -> Any:
        """Tortoise's own transactions (``in_transaction``, and those its queries open
        themselves: ``get_or_create``, ``update_or_create``) bounded as :func:`transaction`
        is; Tortoise's would run their statements past this client, unbounded."""
        return _bounded_transaction(self, self.connection_name)


@asynccontextmanager
async def _bounded_transaction(
    client: BoundedClient, connection_name: str
) -> AsyncIterator[BaseDBAsyncClient]:
    """A transaction of ``client`` within its bound, its client the connection
    ``connection_name`` of the block's statements (as Tortoise's transactions set it)."""
    async with client._bound(), client._transaction() as transactional:
        token = connections.set(connection_name, transactional)
        try:
            yield transactional
        finally:
            connections.reset(token)


@asynccontextmanager
async def transaction(connection_name: str | None = None) -> AsyncIterator[BaseDBAsyncClient]:
    """A transaction of the server's database, bounded as one call (see the module).

    The block's statements, through models or the client it gives, run in it; they are
    committed together when the block ends, and none is when it raises. Inside a
    transaction, this is a savepoint of it: its failure undoes only its own statements.
    Over a client that is not bounded (not the server's), Tortoise's own transaction.
    ``connection_name``: Tortoise's name of the connection; its only one by default.
    """
    connection_name = connection_name or next(iter(connections.db_config))
    current = connections.get(connection_name)
    if not isinstance(current, BoundedClient):
        # A savepoint in a transaction, or Tortoise's own unbounded client (migrations,
        # the CLI): Tortoise's transaction, as unbounded as that client's other calls.
        async with current._in_transaction() as client:
            yield client
        return
    async with _bounded_transaction(current, connection_name) as client:
        yield client


async def in_sqlite_thread(
    client: BaseDBAsyncClient, function: Callable[[sqlite3.Connection], T]
) -> T:
    """``function(connection)`` in aiosqlite's thread, on the sqlite3 connection of
    ``client`` (the server's SQLite client, or a transaction of it): one trip to that
    thread for all of its statements. Bounded as one call outside a transaction (a
    transaction bounds its own), its errors told as Tortoise's client tells them.
    Only where :data:`SQLITE_ONE_TRIP`."""
    bound = client._bound() if isinstance(client, BoundedClient) else nullcontext()
    async with bound, client.acquire_connection() as connection:
        try:
            result: T = await connection._execute(function, connection._conn)
        except sqlite3.OperationalError as exc:  # as Tortoise's translate_exceptions
            raise OperationalError(exc) from exc
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(exc) from exc
        return result


async def fetch_rows(db: BaseDBAsyncClient, query: str, values: list[Any]) -> Sequence[Any]:
    """The rows of the read ``query`` with ``values`` on ``db``, each read by position: the
    hot reads' way (:mod:`evlink.models.statements`). On the server's clients, one bounded
    call at less cost than ``execute_query``'s (the same bound, connection lock and
    errors): on SQLite one trip to aiosqlite's thread that executes and fetches (where
    :data:`SQLITE_ONE_TRIP`), on PostgreSQL asyncpg's ``fetch`` on a pooled connection.
    Anywhere else (a transaction, an unbounded client), ``execute_query``."""
    if isinstance(db, BoundedClient):
        return await db.fetch_rows(query, values)
    _, rows = await db.execute_query(query, values)
    return rows


@dataclass(frozen=True, slots=True)
class ManyAtOnce:
    """A read by one row of parameters (``sql``) that may also be asked for many rows
    of them in one statement (``many``: one array per parameter; each row it answers
    ends with the 1-based ordinal of its parameters' row). ``many`` None: not in this
    dialect."""

    sql: str
    many: str | None = None


async def fetch_together(
    db: BaseDBAsyncClient, read: ManyAtOnce, values: list[Any]
) -> Sequence[Any]:
    """:func:`fetch_rows` of ``read.sql`` with ``values``; on PostgreSQL, the reads of it
    asked in one turn of the event loop go together in one statement (``read.many``):
    one round trip for all of them (:meth:`BoundedPostgresClient.fetch_together`;
    SQLite's reads go together in aiosqlite's thread anyway)."""
    if isinstance(db, BoundedPostgresClient) and read.many is not None:
        return await db.fetch_together(read, values)
    return await fetch_rows(db, read.sql, values)


def _sqlite_error(exc: Exception) -> Exception:
    """``exc`` as Tortoise's SQLite client tells it (its ``translate_exceptions``)."""
    if isinstance(exc, sqlite3.OperationalError):
        return OperationalError(exc)
    if isinstance(exc, sqlite3.IntegrityError):
        return IntegrityError(exc)
    return exc


def _postgres_error(exc: Exception) -> Exception:
    """``exc`` as Tortoise's asyncpg client tells it (its ``_translate_exceptions``)."""
    if isinstance(exc, asyncpg.SyntaxOrAccessError | asyncpg.exceptions.DataError):
        return OperationalError(exc)
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return IntegrityError(exc)
    if isinstance(exc, asyncpg.InvalidTransactionStateError):
        return TransactionManagementError(exc)
    return exc


def _raise_failure(client: BoundedClient, exc: Exception, translated: Exception) -> NoReturn:
    """Raise what a bounded call that failed with ``exc`` (``translated`` as Tortoise's
    client tells it) raises: DatabaseUnavailable for an outage, else ``translated``."""
    told = _told(client.outage, client.timeout, translated)
    if told is not None:
        raise told from translated
    if translated is exc:
        raise exc
    raise translated from exc


def _fetchall(connection: sqlite3.Connection, query: str, values: list[Any]) -> list[Any]:
    return connection.execute(query, values).fetchall()


def _fetch_each(
    connection: sqlite3.Connection, reads: list[tuple[str, list[Any]]]
) -> list[list[Any] | Exception]:
    """Each read's rows, or its error (one read's error is its own)."""
    answers: list[list[Any] | Exception] = []
    for query, values in reads:
        try:
            answers.append(connection.execute(query, values).fetchall())
        except Exception as exc:
            answers.append(exc)
    return answers


_UPDATES: dict[tuple[Any, ...], str] = {}  # RowUpdate's statements, by model, fields, dialect


@dataclass(frozen=True, slots=True)
class RowUpdate:
    """``UPDATE`` of the row of ``model`` whose ``key`` is ``key_value`` to ``values``,
    not run yet: alone (:meth:`run`), or in the database call of another write of the
    same transaction (:func:`evlink.models.sessions.advance_session`: one trip to
    aiosqlite's thread, one statement on PostgreSQL, for both). Its statement is made
    once per set of fields (Tortoise's ``update()`` builds its query on every call)."""

    model: type[Model]
    key: str  # a column of ``model``: the row's key
    key_value: Any
    values: dict[str, Any]

    def sql(self, dialect: str, first: int = 1) -> str:
        """The statement; on PostgreSQL its parameters numbered from ``first``."""
        names = tuple(self.values)
        known = (self.model, self.key, names, dialect, first)
        sql = _UPDATES.get(known)
        if sql is None:
            count = len(names) + 1
            if dialect == "postgres":
                marks = [f"${i}" for i in range(first, first + count)]
            else:
                marks = ["?"] * count
            columns = self.model._meta.fields_db_projection
            # Only the model's own table and column names go into the text.
            assignments = ", ".join(
                f'"{columns[name]}" = {mark}' for name, mark in zip(names, marks, strict=False)
            )
            sql = (
                f'UPDATE "{self.model._meta.db_table}" SET {assignments} '  # noqa: S608
                f'WHERE "{columns[self.key]}" = {marks[-1]}'
            )
            _UPDATES[known] = sql
        return sql

    def parameters(self) -> list[Any]:
        """The values as the database takes them (each by its field), then the key."""
        fields = self.model._meta.fields_map
        model = self.model
        return [
            *(fields[name].to_db_value(value, model) for name, value in self.values.items()),
            fields[self.key].to_db_value(self.key_value, model),
        ]

    async def run(self) -> None:
        """The update alone, in a call of its own."""
        db = self.model._meta.db
        await db.execute_query(self.sql(db.capabilities.dialect), self.parameters())


class _TerminatingPoolConnection(PoolConnectionWrapper[Any]):
    """A pooled connection that is terminated, not handed back, when its statement was
    cut short: it may still be waiting for the server, and the pool replaces it."""

    async def __aexit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        if _cut_short(exc_type) and self.connection is not None:
            self.connection.terminate()
        await super().__aexit__(exc_type, exc_val, exc_tb)


class SessionlessConnection(asyncpg.connection.Connection):  # type: ignore[misc]
    """A connection the pool takes back without asyncpg's reset statement.

    asyncpg sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` to the
    server each time a connection goes back to the pool: a round trip per statement of
    evlink's, as many as the statements themselves. The server's calls leave nothing
    of that kind on a connection (no advisory lock, cursor, ``LISTEN`` or ``SET``:
    every call is one statement through Tortoise's client), so there is nothing to
    undo. A connection handed back inside a transaction is still rolled back
    (asyncpg's ``reset`` adds that itself).
    """

    def get_reset_query(self) -> str:
        return ""


# Trips of one read under way at once before the next reads wait for one to end: below
# the pool's five connections (Tortoise's default size), so a slow database delays no read
# the pool would have served at once; a busy server's reads of one turn go together.
TRIPS_AT_ONCE = 4


class _Together:
    """:meth:`BoundedPostgresClient.fetch_together`'s trips of one read."""

    __slots__ = ("forming", "trips", "under_way", "waiting")

    def __init__(self) -> None:
        self.under_way = 0  # trips of this read started (at most TRIPS_AT_ONCE)
        self.forming = False  # a trip is made and takes the waiting reads when it starts
        self.waiting: list[tuple[list[Any], asyncio.Future[list[Any]]]] = []  # for the next
        self.trips: set[asyncio.Task[None]] = set()  # kept until done


class BoundedPostgresClient(BoundedClient, AsyncpgDBClient):
    """asyncpg through Tortoise, every call bounded, connections handed back without a
    reset round trip (:class:`SessionlessConnection`)."""

    connection_class = SessionlessConnection

    def __init__(self, database_timeout: float, **kwargs: Any) -> None:
        # No floor of open connections: asyncpg would restore it in the background
        # during an outage and log each failed attempt with its traceback. Calls open
        # the connections they need, within their bound.
        kwargs.setdefault("minsize", 0)
        super().__init__(**kwargs)
        self.timeout = database_timeout
        self.outage = Outage()
        self._together: dict[str, _Together] = {}  # fetch_together's, by read

    def acquire_connection(self) -> _TerminatingPoolConnection:
        return _TerminatingPoolConnection(self, self._pool_init_lock)

    async def fetch_rows(self, query: str, values: list[Any]) -> Sequence[Any]:
        # What execute_query does for a read, without its wrappers: a pooled connection
        # (terminated if cut short), asyncpg's fetch, the connection handed back.
        self.log.debug("%s: %s", query, values)  # as Tortoise logs each statement
        try:
            async with asyncio.timeout(self.timeout):
                pool: Any = self._pool
                if pool is None:
                    async with self._pool_init_lock:
                        if self._pool is None:
                            await self.create_connection(with_db=True)
                    pool = self._pool
                connection = await pool.acquire()
                try:
                    rows = await connection.fetch(query, *values)
                except asyncio.CancelledError:
                    connection.terminate()
                    raise
                finally:
                    await pool.release(connection)
        except Exception as exc:
            _raise_failure(self, exc, _postgres_error(exc))
        self.outage.answered()
        return rows  # type: ignore[no-any-return]

    async def fetch_together(self, read: ManyAtOnce, values: list[Any]) -> Sequence[Any]:
        """The rows of ``read`` for ``values``, in a trip with every other read of it asked
        in the same turn of the loop: at that turn's end while fewer than
        :data:`TRIPS_AT_ONCE` trips of this read are under way, else when the next of
        them ends, with every read asked meanwhile. A trip of one is ``read.sql``, of
        more ``read.many``: one statement. Each caller within its own bound, which counts
        a wait for a trip's end as it counts a wait for a pooled connection."""
        assert read.many is not None
        together = self._together.get(read.many)
        if together is None:
            together = self._together[read.many] = _Together()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        together.waiting.append((values, future))
        if not together.forming and together.under_way < TRIPS_AT_ONCE:
            self._form_trip(read, together)
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except Exception as exc:  # the trip's own failures come told already
            _raise_failure(self, exc, exc)

    def _form_trip(self, read: ManyAtOnce, together: _Together) -> None:
        """A trip that takes every read waiting when it starts, at the end of this turn."""
        together.forming = True
        together.under_way += 1
        trip = asyncio.get_running_loop().create_task(self._trip(read, together))
        together.trips.add(trip)
        trip.add_done_callback(together.trips.discard)

    async def _trip(self, read: ManyAtOnce, together: _Together) -> None:
        """One statement for every read waiting as it starts, its rows handed by their
        ordinal to each whose caller is still there; then, if reads wait, the next."""
        assert read.many is not None
        together.forming = False
        waiting, together.waiting = together.waiting, []
        try:
            if len(waiting) == 1:
                answers = [list(await self.fetch_rows(read.sql, waiting[0][0]))]
            else:
                arrays = [list(column) for column in zip(*(v for v, _ in waiting), strict=True)]
                answers = [[] for _ in waiting]
                for row in await self.fetch_rows(read.many, arrays):
                    answers[row[-1] - 1].append(row)
        except asyncio.CancelledError:  # the loop is closing: callers run out of time
            together.under_way -= 1
            raise
        except Exception as exc:  # told already (DatabaseUnavailable, Tortoise's)
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), rows in zip(waiting, answers, strict=True):
                if not future.done():
                    future.set_result(rows)
        together.under_way -= 1
        if together.waiting and not together.forming:
            self._form_trip(read, together)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[TransactionalDBClient]:
        # A pooled connection, terminated if anything here is cut short. On a failure
        # the pool's reset as it takes the connection back rolls the transaction back
        # (asyncpg's ``Connection.reset``). asyncpg's own transaction, so that a nested
        # one is a savepoint.
        async with self.acquire_connection() as connection:
            client = TransactionWrapper(self)
            client._connection = connection
            await client.begin()
            yield client
            await client.commit()


class BoundedSqliteClient(BoundedClient, SqliteClient):
    """aiosqlite through Tortoise, every call bounded."""

    def __init__(self, file_path: str, database_timeout: float, **kwargs: Any) -> None:
        # SQLite's own wait for another connection's lock (a PRAGMA, in ms): half the
        # bound, so that a locked database is told as such, and its statement has left
        # aiosqlite's thread, before the call's bound runs out.
        kwargs.setdefault("busy_timeout", round(database_timeout * 500))
        # Under WAL, NORMAL syncs at checkpoints, not at every commit: a commit no longer
        # waits for the disk (it was most of a fleet's time on SQLite). An application
        # crash loses nothing; a power loss or OS crash may lose the last commits, never
        # corrupts. ``?synchronous=FULL`` in the database URL restores a sync per commit.
        kwargs.setdefault("synchronous", "NORMAL")
        super().__init__(file_path, **kwargs)
        self.timeout = database_timeout
        self.outage = Outage()
        self._settling: set[asyncio.Task[None]] = set()  # rollbacks of transactions cut short
        # fetch_rows' reads: whether a trip of them is under way, those waiting for the
        # next, and the task of the next (or last) trip.
        self._under_way = False
        self._reads: list[tuple[str, list[Any], asyncio.Future[Any]]] = []
        self._tripping: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[TransactionalDBClient]:
        # The one connection's lock, held until the transaction ends. IMMEDIATE takes
        # the database's write lock at once (waiting ``busy_timeout`` for another
        # connection's), so no statement inside waits for it.
        await self._lock.acquire()
        settled_later = False
        try:
            if self._connection is None:
                await self.create_connection(with_db=True)
            connection = self._connection
            assert connection is not None
            try:
                await connection.execute("BEGIN IMMEDIATE")
                yield SqliteTransactionWrapper(self)
                await connection.commit()
            except BaseException as exc:
                settled_later = True  # the rollback releases the lock
                rollback = asyncio.ensure_future(self._roll_back_then_unlock(connection))
                self._settling.add(rollback)
                rollback.add_done_callback(self._settling.discard)
                if not _cut_short(type(exc)):
                    # Waited for, within the bound; cut short meanwhile, it goes on.
                    await asyncio.shield(rollback)
                raise
        finally:
            if not settled_later:
                self._lock.release()

    async def fetch_rows(self, query: str, values: list[Any]) -> Sequence[Any]:
        # A read asked while no trip of these reads is under way goes alone, at once;
        # those asked meanwhile go together in the next trip (:meth:`_trips`). Always
        # under the one connection's lock (never inside another task's transaction),
        # each caller within its own bound.
        if not SQLITE_ONE_TRIP:
            return await super().fetch_rows(query, values)
        self.log.debug("%s: %s", query, values)  # as Tortoise logs each statement
        try:
            if self._under_way:
                future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                self._reads.append((query, values, future))
                async with asyncio.timeout(self.timeout):
                    rows = await future
            else:
                self._under_way = True
                try:
                    async with asyncio.timeout(self.timeout), self._lock:
                        connection = await self._open()
                        rows = await connection._execute(  # type: ignore[no-untyped-call]
                            _fetchall, connection._conn, query, values
                        )
                finally:
                    self._trip_ended()
        except Exception as exc:
            _raise_failure(self, exc, _sqlite_error(exc))
        self.outage.answered()
        return rows  # type: ignore[no-any-return]

    async def _open(self) -> aiosqlite.Connection:
        """The one connection, opened if it is not (the lock held)."""
        if self._connection is None:
            await self.create_connection(with_db=True)
        connection = self._connection
        assert connection is not None
        return connection

    def _trip_ended(self) -> None:
        """A trip of the reads ended: the next takes those asked meanwhile, if any."""
        if self._reads:
            self._tripping = asyncio.get_running_loop().create_task(self._trips())
        else:
            self._under_way = False

    async def _trips(self) -> None:
        """One trip to aiosqlite's thread with every read waiting when it starts (but
        those whose callers are gone), then the next if reads are waiting again."""
        try:
            async with self._lock:
                reads = [read for read in self._reads if not read[2].done()]
                self._reads = []
                answers: list[Any] = []
                if reads:
                    try:
                        connection = await self._open()
                        answers = await connection._execute(  # type: ignore[no-untyped-call]
                            _fetch_each, connection._conn, [read[:2] for read in reads]
                        )
                    except Exception as exc:  # the connection is closed, or cannot open
                        answers = [exc] * len(reads)
        except asyncio.CancelledError:  # the loop is closing: its callers run out of time
            self._under_way = False
            raise
        for (_, _, future), answer in zip(reads, answers, strict=True):
            if future.done():
                continue
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        self._trip_ended()

    async def _roll_back_then_unlock(self, connection: aiosqlite.Connection) -> None:
        """Roll back, then release the lock. A task of its own: a statement cut short
        still runs in aiosqlite's thread, and the rollback waits for it there, past the
        bound of the caller, who is answered meanwhile."""
        try:
            await connection.rollback()
        except Exception as exc:  # the connection broke: nothing of the transaction stays
            logger.warning("SQLite rollback failed: %r", exc)
        finally:
            self._lock.release()


def get_client_class(db_info: dict[str, Any]) -> type[BaseDBAsyncClient]:
    """Tortoise's hook for an engine module: SQLite's client or PostgreSQL's."""
    if "file_path" in db_info.get("credentials", {}):
        return BoundedSqliteClient
    return BoundedPostgresClient


async def database_answers(client: BaseDBAsyncClient, limit: float) -> bool:
    """Readiness: the database answers ``SELECT 1`` within ``limit`` seconds."""
    if not isinstance(client, BoundedClient):
        raise TypeError("the database client is not bounded (evlink.settings.tortoise_config)")
    try:
        await client.ping(limit)
    except DatabaseUnavailable:
        return False
    return True
