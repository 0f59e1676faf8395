"""The evlink command: serve | migrate | demo | user | key | vehicle | usage | enode | mqtt."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tortoise.exceptions import DBConnectionError, OperationalError

from evlink.cache import ReadCache
from evlink.domain import vehicle_name
from evlink.errors import EvlinkError, NotFound
from evlink.events import MemoryEventBus, build_event_bus
from evlink.logs import configure_logging
from evlink.models import ApiKey, User, Vehicle
from evlink.models.database import apply_migrations, open_command_database
from evlink.mqtt import cli as mqtt_cli
from evlink.providers import build_provider
from evlink.providers.enode import EnodeProvider
from evlink.ratelimit import Limiter, describe
from evlink.resolvers import accounts, sessions, vehicles
from evlink.resolvers.auth import issue_key, key_id, revoke_key
from evlink.services import Services
from evlink.settings import (
    Settings,
    SettingsError,
    describe_database,
    renamed_names,
    unknown_names,
)
from evlink.tariffs import parse_period

__all__ = ["main"]


class CommandError(Exception):
    """A failure to report as one line and exit status 1."""


def _print(line: str = "") -> None:
    sys.stdout.write(line + "\n")


async def _migrate(settings: Settings, _: argparse.Namespace) -> None:
    applied = await apply_migrations(
        settings.database_url, connect_timeout=settings.database_timeout
    )
    _print(f"applied {', '.join(applied)}" if applied else "database is up to date")


async def _demo(settings: Settings, args: argparse.Namespace) -> None:
    if settings.provider != "simulator":
        raise CommandError("the demo's cars are simulated: it needs EVLINK_PROVIDER=simulator")
    async with open_command_database(settings):
        demo = await accounts.ensure_demo()
    if args.json:
        _print(json.dumps(_demo_json(settings, demo)))
        return
    _print_demo(settings, demo)


def _demo_json(settings: Settings, demo: accounts.DemoAccount) -> dict[str, Any]:
    return {
        "email": demo.user.email,
        "api_key": demo.key.secret,
        "base_url": _base_url(settings),
        "vehicles": [
            {
                "id": str(v.id),
                "name": vehicle_name(v.name, v.information),
                "provider_vehicle_id": v.provider_vehicle_id,
            }
            for v in demo.vehicles
        ],
    }


def _base_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host  # noqa: S104
    return f"http://{host}:{settings.port}"


def _print_demo(settings: Settings, demo: accounts.DemoAccount) -> None:
    base = _base_url(settings)
    _print(f"Demo user {demo.user.email} (PRO). API key, shown once:")
    _print()
    _print(f"    {demo.key.secret}")
    _print()
    for vehicle in demo.vehicles:
        _print(f"  vehicle {vehicle.id}  {vehicle_name(vehicle.name, vehicle.information) or ''}")
    first = demo.vehicles[0].id
    _print()
    _print("Try:")
    _print(f'  curl -H "Authorization: Bearer {demo.key.secret}" {base}/api/status/{first}')
    _print()


def _no_tables(settings: Settings) -> CommandError:
    return CommandError(
        f"the database {describe_database(settings.database_url)} has no evlink tables yet: "
        "run `evlink migrate` first"
    )


def _require_sqlite_file(settings: Settings) -> None:
    """Commands other than ``migrate`` never create a SQLite file: run in another folder,
    a relative EVLINK_DATABASE_URL would otherwise start a second, empty database there."""
    if not settings.is_sqlite:
        return
    path = describe_database(settings.database_url)
    if path != ":memory:" and not Path(path).is_file():
        raise CommandError(
            f"no evlink database at {path}: run `evlink migrate` to make it, or run evlink "
            "from the folder of your database (or set EVLINK_DATABASE_URL to its file)"
        )


async def _seed_if_empty(settings: Settings) -> None:
    """First start on an empty database: make the demo account and show its key. The
    first look is bounded by EVLINK_DATABASE_TIMEOUT: a database that does not answer
    it (a lock held elsewhere) stops the start in one line instead of holding it."""
    async with open_command_database(settings):
        try:
            async with asyncio.timeout(settings.database_timeout):
                empty = not await User.exists()
        except OperationalError:
            raise _no_tables(settings) from None
        if empty and settings.provider == "simulator":
            _print_demo(settings, await accounts.ensure_demo())
            _print(f"Serving on {_base_url(settings)}")
        elif empty:
            _print(
                f"Serving on {_base_url(settings)}. No users yet: "
                "`evlink user create --email … --tier PRO`, then `evlink key create --user …`."
            )
        else:
            _print(
                f"Serving on {_base_url(settings)}. Keys are shown only when made: "
                "`evlink key create --user <email>` makes another."
            )


def _bind(settings: Settings) -> socket.socket:
    """The listening socket, bound before anything says "Serving on"."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        address = f"{settings.host}:{settings.port}"
        if exc.errno == errno.EADDRINUSE:
            raise CommandError(f"{address} is in use; set EVLINK_PORT") from None
        raise CommandError(f"cannot listen on {address}: {exc.strerror}") from None
    sock.set_inheritable(True)  # for --workers: the worker processes accept on it
    return sock


def _playground_note() -> str | None:
    from evlink.playground.page import missing_assets

    if not missing_assets():
        return None
    return (
        "The GraphQL playground is not built (it needs Node.js and npm): "
        "`make playground`, or `python -m evlink.playground.vendor`; the API works without it"
    )


def _shared_database_note(settings: Settings) -> str | None:
    """On PostgreSQL without Redis, what a second instance on the same database would
    miss: one line, printed at start (one instance alone is served as it should be)."""
    if settings.is_sqlite or settings.redis_url:
        return None
    return (
        "PostgreSQL without EVLINK_REDIS_URL: right for one instance. Another instance on "
        "this database needs Redis too, or neither sees the other's changes in its "
        "subscriptions and read cache (docs/scaling.md)"
    )


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    from uvicorn.supervisors import Multiprocess

    from evlink.app import create_app
    from evlink.server import EvlinkConfig, EvlinkServer, server_options

    workers: int = args.workers
    if workers > 1 and not settings.redis_url:
        raise CommandError("--workers above 1 needs EVLINK_REDIS_URL: workers share events there")
    if workers > 1 and settings.is_sqlite:
        raise CommandError("--workers above 1 needs PostgreSQL (EVLINK_DATABASE_URL=postgres://…)")
    _require_sqlite_file(settings)
    sock = _bind(settings)
    try:
        asyncio.run(_seed_if_empty(settings))
    except BaseException:
        sock.close()
        raise
    for note in (_playground_note(), _shared_database_note(settings)):
        if note:
            _print(note)
    sys.stdout.flush()
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "lifespan": "on",
        # evlink.logs configures the logging of this process and of each worker
        "log_level": settings.log_level,
        "log_format": settings.log_format,
        "access_log": False,  # evlink.edge writes the access log, with the request id
        "timeout_graceful_shutdown": 10,
        **server_options(settings),
    }
    if workers == 1:
        EvlinkServer(EvlinkConfig(create_app(settings), **common)).run(sockets=[sock])
        return
    # Each worker builds its app from the environment, as evlink did above. uvicorn's
    # supervisor runs its own servers: on SIGTERM their websockets close with 1012
    # (service restart) rather than 1001; one process per instance keeps 1001.
    config = EvlinkConfig("evlink.app:create_app", factory=True, workers=workers, **common)
    host, port = sock.getsockname()[:2]
    logging.getLogger("uvicorn.error").info(
        "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", host, port
    )
    Multiprocess(config, sockets=[sock]).run()


async def _user_create(settings: Settings, args: argparse.Namespace) -> None:
    async with open_command_database(settings):
        user = await accounts.create_user(args.email, accounts.parse_tier(args.tier))
    _print(f"user {user.id} {user.email} {user.tier.value}")


@contextlib.asynccontextmanager
async def _servers_told(settings: Settings) -> AsyncIterator[ReadCache]:
    """A cache with nothing in it whose invalidations reach the servers' read caches over
    Redis when it is configured; without Redis they see the change within EVLINK_CACHE_TTL."""
    cache = ReadCache(0.0)
    if settings.redis_url:
        cache.events = build_event_bus(settings.redis_url, settings.database_url)
    try:
        yield cache
    finally:
        if cache.events is not None:
            await cache.events.aclose()


async def _user_set_tier(settings: Settings, args: argparse.Namespace) -> None:
    async with (
        open_command_database(settings),
        _servers_told(settings) as cache,
    ):
        user = await accounts.set_tier(
            await accounts.find_user(args.email), accounts.parse_tier(args.tier), cache
        )
    _print(f"user {user.id} {user.email} {user.tier.value}")


async def _user_list(settings: Settings, _: argparse.Namespace) -> None:
    async with open_command_database(settings):
        for user in await User.all().order_by("id"):
            _print(f"{user.id}\t{user.email}\t{user.tier.value}")


async def _tariff_set(settings: Settings, args: argparse.Namespace) -> None:
    periods = [parse_period(text) for text in args.period or []]
    async with open_command_database(settings):
        user = await accounts.find_user(args.user)
        tariff = await sessions.set_tariff(user, args.price, args.currency, periods, args.timezone)
    shown = " ".join(f"{p.text}={p.price:g}" for p in tariff.periods)
    _print(
        f"tariff of {user.email}: {tariff.price_per_kwh:g} {tariff.currency}/kWh"
        f"{' ' + shown if shown else ''} ({tariff.time_zone})"
    )


async def _key_create(settings: Settings, args: argparse.Namespace) -> None:
    async with open_command_database(settings):
        issued = await issue_key(await accounts.find_user(args.user), name=args.name)
    _print(f"key {issued.record.prefix}… for {args.user}; shown once, store it now:")
    _print(issued.secret)


async def _key_list(settings: Settings, args: argparse.Namespace) -> None:
    async with open_command_database(settings):
        query = ApiKey.all().select_related("user").order_by("id")
        if args.user:
            query = query.filter(user__email=args.user.strip().lower())
        for key in await query:
            state = "revoked" if key.revoked_at else "active"
            used = key.last_used_at.isoformat() if key.last_used_at else "never"
            _print(f"{key.id}\t{key.prefix}…\t{key.user.email}\t{state}\tlast used {used}")


async def _key_revoke(settings: Settings, args: argparse.Namespace) -> None:
    async with (
        open_command_database(settings),
        _servers_told(settings) as cache,
    ):
        key = await revoke_key(args.key, cache)
    _print(f"revoked key {key.id} ({key.prefix}…)")


@contextlib.asynccontextmanager
async def _provider_services(settings: Settings) -> AsyncIterator[Services]:
    """The database and the configured provider (not started: no background steps), for
    the `evlink vehicle` and `evlink enode` commands. What they change reaches the
    servers' subscribers and caches over Redis when it is configured."""
    async with (
        open_command_database(settings),
        _servers_told(settings) as cache,
    ):
        provider = build_provider(settings)
        try:
            events = cache.events or MemoryEventBus()
            yield Services(settings=settings, provider=provider, events=events, cache=cache)
        finally:
            await provider.aclose()  # the simulator hands back step leases in the database


async def _vehicle_add(settings: Settings, args: argparse.Namespace) -> None:
    async with _provider_services(settings) as services:
        vehicle = await accounts.register_vehicle(
            services,
            await accounts.find_user(args.user),
            provider=args.provider,
            provider_vehicle_id=args.provider_vehicle_id,
            name=args.name,
        )
    _print(f"vehicle {vehicle.id}  {vehicle.provider} {vehicle.provider_vehicle_id}")


async def _vehicle_list(settings: Settings, args: argparse.Namespace) -> None:
    async with open_command_database(settings):
        query = Vehicle.filter(deleted_at=None).select_related("user").order_by("created_at", "id")
        if args.user:
            query = query.filter(user=await accounts.find_user(args.user))
        for vehicle in await query:
            linked = vehicle.provider_vehicle_id or "(no provider id: remove it)"
            _print(
                f"{vehicle.id}\t{vehicle.user.email}\t{vehicle.provider}\t{linked}"
                f"\t{vehicle_name(vehicle.name, vehicle.information) or ''}"
            )


async def _vehicle_remove(settings: Settings, args: argparse.Namespace) -> None:
    vehicle: Vehicle | None = None
    async with _provider_services(settings) as services:
        with contextlib.suppress(NotFound):
            vehicle_id = vehicles.parse_vehicle_id(args.vehicle)
            vehicle = await Vehicle.get_or_none(id=vehicle_id, deleted_at=None)
        if vehicle is None:
            raise CommandError(f"no vehicle {args.vehicle} (`evlink vehicle list` shows them)")
        cancelled = await accounts.remove_vehicle(services, vehicle)
    _print(f"removed vehicle {vehicle.id}; {cancelled} pending command(s) cancelled")


async def _usage(settings: Settings, args: argparse.Namespace) -> None:
    """What a user has spent of each quota, from the counts the servers share in Redis."""
    async with open_command_database(settings):
        user = await accounts.find_user(args.user)
        keys = await ApiKey.filter(user=user, revoked_at=None).order_by("id")
    limiter = Limiter.from_settings(settings)
    try:
        states = await limiter.usage(user, [key_id(key.hash) for key in keys])
        shared = limiter.shared
    finally:
        await limiter.aclose()
    prefixes = {key_id(key.hash): key.prefix for key in keys}
    _print(f"{user.email}\t{user.tier.value}")
    if not settings.redis_url:
        _print("(no EVLINK_REDIS_URL: each server counts in its own memory, unseen from here)")
    elif not shared:
        _print("(Redis did not answer: these counts are not the servers')")
    for state in states:
        subject = state.subject.removeprefix("key:")
        name = f"burst key {prefixes[subject]}…" if subject in prefixes else state.policy.name
        reset = state.reset_datetime
        _print(
            f"{name}\t{state.used}/{describe(state.policy.item)}\t{state.remaining} left"
            f"\tresets {reset.isoformat() if reset else '-'}"
        )


@contextlib.asynccontextmanager
async def _enode(settings: Settings) -> AsyncIterator[Services]:
    """The database and an Enode provider, for the `evlink enode` commands."""
    if not (settings.enode_client_id and settings.enode_client_secret):
        raise CommandError("set EVLINK_ENODE_CLIENT_ID and EVLINK_ENODE_CLIENT_SECRET first")
    async with _provider_services(replace(settings, provider="enode")) as services:
        yield services


async def _enode_link(settings: Settings, args: argparse.Namespace) -> None:
    async with _enode(settings) as services:
        user = await accounts.find_user(args.user)
        url = await accounts.link_vehicle_account(services, user, args.redirect_uri)
    _print(f"Open this link to connect {user.email}'s vehicles:")
    _print(url)


async def _enode_sync(settings: Settings, args: argparse.Namespace) -> None:
    async with _enode(settings) as services:
        if args.user:
            users = [await accounts.find_user(args.user)]
        else:
            users = await User.filter(enode_user_id__isnull=False).order_by("id")
        for user in users:
            synced = await accounts.sync_vehicles(services, user)
            _print(f"{user.email}: {len(synced)} vehicle(s)")
            for vehicle in synced:
                _print(f"  vehicle {vehicle.id}  {vehicle.provider_vehicle_id}")


async def _enode_webhook(settings: Settings, args: argparse.Namespace) -> None:
    if not settings.enode_webhook_secret:
        raise CommandError("set EVLINK_ENODE_WEBHOOK_SECRET first: Enode signs with it")
    provider = EnodeProvider.from_settings(settings)
    try:
        registered = await provider.register_webhook(args.url, settings.enode_webhook_secret)
    finally:
        await provider.aclose()
    _print(f"webhook {registered.get('id')} registered for {args.url}")


def _workers(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evlink", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the API (makes the demo on an empty database)")
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="worker processes (above 1 needs PostgreSQL and EVLINK_REDIS_URL)",
    )
    commands.add_parser("migrate", help="apply database migrations")
    demo = commands.add_parser("demo", help="make the demo user, cars and a new key")
    demo.add_argument("--json", action="store_true", help="print one JSON object")

    user = commands.add_parser("user", help="manage users").add_subparsers(
        dest="action", required=True
    )
    create = user.add_parser("create", help="make a user")
    create.add_argument("--email", required=True)
    create.add_argument("--tier", default="FREE", help="FREE, BASIC or PRO")
    set_tier = user.add_parser("set-tier", help="change a user's tier")
    set_tier.add_argument("--email", required=True)
    set_tier.add_argument("--tier", required=True)
    user.add_parser("list", help="list users: id, email, tier")

    key = commands.add_parser("key", help="manage API keys").add_subparsers(
        dest="action", required=True
    )
    key_create = key.add_parser("create", help="make an API key (shown once)")
    key_create.add_argument("--user", required=True, help="the user's email")
    key_create.add_argument("--name", default="")
    key_list = key.add_parser("list", help="list keys: id, prefix, user, state, last use")
    key_list.add_argument("--user", help="only this user's keys")
    key_revoke = key.add_parser("revoke", help="revoke a key at once, on every server")
    key_revoke.add_argument("key", help="the key's id or prefix (as `key list` shows)")

    vehicle = commands.add_parser("vehicle", help="manage vehicles").add_subparsers(
        dest="action", required=True
    )
    vehicle_add = vehicle.add_parser(
        "add", help="add a car the provider has (the simulator makes one without an id)"
    )
    vehicle_add.add_argument("--user", required=True, help="the user's email")
    vehicle_add.add_argument("--name")
    vehicle_add.add_argument("--provider", help="must be EVLINK_PROVIDER (the default)")
    vehicle_add.add_argument(
        "--provider-vehicle-id",
        help="the provider's id, checked with the provider (Enode: a car of the user's link; "
        "simulator: sim-<unplugged|plugged|charging>-<name>, a new sim-plugged-… if omitted)",
    )
    vehicle_list = vehicle.add_parser("list", help="list cars: id, user, provider, provider id")
    vehicle_list.add_argument("--user", help="only this user's vehicles")
    vehicle_remove = vehicle.add_parser(
        "remove", help="remove a vehicle; its pending commands are cancelled"
    )
    vehicle_remove.add_argument("vehicle", help="evlink's vehicle id (as `vehicle list` shows)")

    tariff = commands.add_parser("tariff", help="users' electricity tariffs").add_subparsers(
        dest="action", required=True
    )
    tariff_set = tariff.add_parser(
        "set", help="set a user's tariff; sessions opened from then on are priced by it"
    )
    tariff_set.add_argument("--user", required=True, help="the user's email")
    tariff_set.add_argument("--price", required=True, type=float, help="price per kWh")
    tariff_set.add_argument("--currency", required=True, help="ISO 4217 code, e.g. EUR")
    tariff_set.add_argument(
        "--period", action="append", help="HH:MM-HH:MM=PRICE, local time (repeatable)"
    )
    tariff_set.add_argument("--timezone", help="IANA zone of the periods (default UTC)")

    usage = commands.add_parser("usage", help="what a user has spent of each quota")
    usage.add_argument("--user", required=True, help="the user's email")

    enode = commands.add_parser(
        "enode", help="link and sync Enode vehicle accounts"
    ).add_subparsers(dest="action", required=True)
    link = enode.add_parser("link", help="print the Enode link URL for a user")
    link.add_argument("--user", required=True, help="the user's email")
    link.add_argument(
        "--redirect-uri", default="https://enode.com", help="where Enode sends the user after"
    )
    sync = enode.add_parser("sync", help="import the vehicles of linked users")
    sync.add_argument("--user", help="only this user's (default: every linked user)")
    webhook = enode.add_parser("webhook", help="register evlink's webhook with Enode")
    webhook.add_argument(
        "--url", required=True, help="public URL of POST /api/webhooks/enode on this server"
    )
    mqtt_cli.add_parser(commands)
    return parser


_ASYNC_COMMANDS: dict[
    tuple[str, str | None], Callable[[Settings, Any], Coroutine[Any, Any, None]]
] = {
    ("migrate", None): _migrate,
    ("demo", None): _demo,
    ("user", "create"): _user_create,
    ("user", "set-tier"): _user_set_tier,
    ("user", "list"): _user_list,
    ("key", "create"): _key_create,
    ("key", "list"): _key_list,
    ("key", "revoke"): _key_revoke,
    ("vehicle", "add"): _vehicle_add,
    ("vehicle", "list"): _vehicle_list,
    ("vehicle", "remove"): _vehicle_remove,
    ("tariff", "set"): _tariff_set,
    ("usage", None): _usage,
    ("enode", "link"): _enode_link,
    ("enode", "sync"): _enode_sync,
    ("enode", "webhook"): _enode_webhook,
    **mqtt_cli.COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        status = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`evlink user list | head -1`): no traceback, and nothing
        # more to write at exit (Python's advice: point stdout at devnull).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return status


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    for warning in unknown_names() + renamed_names():
        sys.stderr.write(f"evlink: warning: {warning}\n")
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.stderr.write(f"evlink: {exc}\n")
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        if args.command == "serve":
            _serve(settings, args)
        else:
            if args.command != "migrate":
                _require_sqlite_file(settings)
            command = _ASYNC_COMMANDS[(args.command, getattr(args, "action", None))]
            asyncio.run(command(settings, args))
    except (CommandError, EvlinkError) as exc:
        sys.stderr.write(f"evlink: {exc}\n")
        return 1
    except OperationalError as exc:
        if "no such table" in str(exc) or "does not exist" in str(exc):
            sys.stderr.write(f"evlink: {_no_tables(settings)}\n")
        else:
            sys.stderr.write(f"evlink: database error on {_where(settings)}: {exc}\n")
        return 1
    except BrokenPipeError:
        raise  # the reader of our output went away (main), not the database
    except (DBConnectionError, OSError) as exc:
        cause = _unanswered(settings) if isinstance(exc, TimeoutError) else _cause(exc)
        sys.stderr.write(f"evlink: cannot open the database {_where(settings)}: {cause}\n")
        return 1
    return 0


def _unanswered(settings: Settings) -> str:
    return f"no answer within {settings.database_timeout:g} s (EVLINK_DATABASE_TIMEOUT)"


def _where(settings: Settings) -> str:
    return describe_database(settings.database_url)


def _cause(exc: BaseException) -> str:
    """The first line of the innermost error's message (Tortoise wraps asyncpg's)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
