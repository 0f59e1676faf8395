"""The real ``evlink`` command in subprocesses, on a SQLite file of its own."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest

from evlink.resolvers.auth import check_key_format
from tests.conftest import ServerLog, free_port, serve_process

PACKAGE = Path(__file__).resolve().parent.parent / "evlink"


@dataclass(frozen=True)
class Cli:
    """Runs ``python -m evlink.cli`` against one database, in one folder."""

    cwd: Path
    env: dict[str, str]

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 (our own interpreter and module)
            [sys.executable, "-m", "evlink.cli", *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """A CLI over a freshly migrated SQLite file (migrated by the CLI itself)."""
    folder = tmp_path_factory.mktemp("cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVLINK_")}
    env["EVLINK_DATABASE_URL"] = f"sqlite://{folder / 'cli.sqlite3'}"
    run = Cli(cwd=folder, env=env)
    out = run.ok("migrate")
    assert "0001_initial" in out
    assert (folder / "cli.sqlite3").is_file()
    return run


def test_migrate_again_is_up_to_date(cli: Cli) -> None:
    assert cli.ok("migrate").strip() == "database is up to date"


def test_demo_json_is_one_object_and_is_idempotent(cli: Cli) -> None:
    first = cli.ok("demo", "--json")
    second = cli.ok("demo", "--json")

    bodies = []
    for out in (first, second):
        lines = out.splitlines()
        assert len(lines) == 1, out
        body = json.loads(lines[0])
        assert isinstance(body, dict)
        assert check_key_format(body["api_key"]), body["api_key"]
        assert len(body["vehicles"]) == 3
        assert all(vehicle["id"] for vehicle in body["vehicles"])
        bodies.append(body)
    ids = [[vehicle["id"] for vehicle in body["vehicles"]] for body in bodies]
    assert len(set(ids[0])) == 3
    assert ids[0] == ids[1]  # the same three cars, in the same order
    assert bodies[0]["api_key"] != bodies[1]["api_key"]  # a new key each time
    assert bodies[0]["email"] == bodies[1]["email"]


def test_users_and_keys(cli: Cli) -> None:
    assert cli.ok("user", "create", "--email", "A@b.c", "--tier", "basic").split()[2:] == [
        "a@b.c",
        "BASIC",
    ]
    assert cli.ok("user", "set-tier", "--email", "a@b.c", "--tier", "pro").split()[2:] == [
        "a@b.c",
        "PRO",
    ]
    users = [line.split("\t") for line in cli.ok("user", "list").splitlines()]
    assert [u[1:] for u in users if u[1] == "a@b.c"] == [["a@b.c", "PRO"]]

    created = cli.ok("key", "create", "--user", "a@b.c", "--name", "laptop").splitlines()
    secret = created[-1].strip()
    assert check_key_format(secret), created
    prefix = secret[:12]

    listed = cli.ok("key", "list", "--user", "a@b.c")
    assert secret not in listed
    assert secret[12:] not in listed
    rows = [line.split("\t") for line in listed.splitlines()]
    assert len(rows) == 1, listed
    assert rows[0][1] == f"{prefix}…"
    assert rows[0][2:4] == ["a@b.c", "active"]

    revoked = cli.ok("key", "revoke", prefix)
    assert prefix in revoked

    rows = [line.split("\t") for line in cli.ok("key", "list").splitlines()]
    mine = [row for row in rows if row[1] == f"{prefix}…"]
    assert len(mine) == 1
    assert mine[0][3] == "revoked"


def test_a_duplicate_user_fails_with_one_line(cli: Cli) -> None:
    cli.ok("user", "create", "--email", "dup@b.c")

    result = cli("user", "create", "--email", "DUP@b.c", "--tier", "pro")

    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "dup@b.c" in lines[0]
    assert result.stdout == ""


async def test_serve_counts_failed_keys_by_peer_and_escapes_what_it_logs(cli: Cli) -> None:
    """`evlink serve` as run in production: X-Forwarded-For from an untrusted peer (here
    127.0.0.1, which uvicorn alone would trust) does not move the failed-key count, and a
    line feed in a path reaches the log escaped."""
    log = ServerLog()
    database = cli.env["EVLINK_DATABASE_URL"]
    async with (
        serve_process(database, log=log, EVLINK_AUTH_FAILURES="3/minute") as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
    ):
        codes = [
            (
                await http.get(
                    "/api/ha/me",
                    headers={"Authorization": "Bearer junk", "X-Forwarded-For": f"203.0.113.{n}"},
                )
            ).status_code
            for n in range(1, 5)
        ]
        forged = "/x%0a2026-11-29 12:00:00,000 ERROR evlink.edge [forged]".replace(" ", "%20")
        assert (await http.get(forged)).status_code == 404
        line = await log.line_with(b" evlink.access ", b"GET /x")

    assert codes == [401, 401, 401, 429]
    assert b"GET /x\\x0a2026-11-29 12:00:00,000 ERROR evlink.edge [forged] 404" in line
    # One access line per request, evlink's: uvicorn's own is not written beside it.
    access = [entry for entry in log.lines if b" evlink.access " in entry]
    assert len(access) == 5, access
    assert [entry for entry in log.lines if b"uvicorn.access" in entry] == []


def test_vehicle_add_asks_the_simulator_and_remove_frees_the_place(cli: Cli) -> None:
    """`vehicle add` stores only cars the configured provider has (here the simulator);
    `vehicle remove` frees the tier's place, and `vehicle list` shows what is left."""
    cli.ok("user", "create", "--email", "cars@b.c", "--tier", "free")

    made = cli.ok("vehicle", "add", "--user", "cars@b.c").split()
    assert made[0] == "vehicle"
    assert made[2] == "simulator"
    assert made[3].startswith("sim-plugged-")
    refused = {
        "--provider foo": cli("vehicle", "add", "--user", "cars@b.c", "--provider", "foo"),
        "tesla-123": cli(
            "vehicle", "add", "--user", "cars@b.c", "--provider-vehicle-id", "tesla-123"
        ),
        "past the limit": cli(
            "vehicle", "add", "--user", "cars@b.c", "--provider-vehicle-id", "sim-charging-x"
        ),
    }
    assert {name: r.returncode for name, r in refused.items()} == dict.fromkeys(refused, 1)
    assert "provider must be simulator" in refused["--provider foo"].stderr
    assert "remove one" in refused["past the limit"].stderr
    listed = [
        line.split("\t") for line in cli.ok("vehicle", "list", "--user", "cars@b.c").splitlines()
    ]
    assert [row[:4] for row in listed] == [[made[1], "cars@b.c", "simulator", made[3]]]
    # Added without --name: the name the API shows, the provider's (it was left blank).
    assert listed[0][4].strip() != ""

    removed = cli.ok("vehicle", "remove", made[1])
    assert removed.startswith(f"removed vehicle {made[1]}; 0 pending command(s) cancelled")
    assert cli.ok("vehicle", "list", "--user", "cars@b.c") == ""
    again = cli("vehicle", "remove", made[1])
    assert again.returncode == 1
    assert f"no vehicle {made[1]}" in again.stderr

    cli.ok("user", "set-tier", "--email", "cars@b.c", "--tier", "pro")
    unknown = cli("vehicle", "add", "--user", "cars@b.c", "--provider-vehicle-id", "tesla-123")
    assert unknown.returncode == 1
    assert "simulator has no vehicle tesla-123" in unknown.stderr
    named = cli.ok(
        "vehicle", "add", "--user", "cars@b.c", "--provider-vehicle-id", "sim-charging-x"
    ).split()
    assert named[2:] == ["simulator", "sim-charging-x"]
    assert [line.split("\t")[0] for line in cli.ok("vehicle", "list").splitlines()][-1:] == [
        named[1]
    ]


def _bare_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVLINK_")}
    env.update(settings)
    return env


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("command", [("migrate",), ("serve",), ("key", "list"), ("demo",)])
def test_an_unreachable_database_is_one_line_without_the_password(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    port = free_port()  # nothing listens there
    url = f"postgres://evlink:s3cret-pw@127.0.0.1:{port}/evlink"
    run = Cli(cwd=tmp_path, env=_bare_env(EVLINK_DATABASE_URL=url))

    line = _one_line(run(*command))

    assert line.startswith(
        f"evlink: cannot open the database postgres://evlink:***@127.0.0.1:{port}/evlink: "
    )
    assert "refused" in line.lower() or "connect call failed" in line.lower()
    assert "s3cret-pw" not in line


def test_a_database_that_does_not_exist_is_one_line_naming_it(tmp_path: Path) -> None:
    base = os.environ.get("EVLINK_TEST_DATABASE_URL")
    if not base:
        pytest.skip("set EVLINK_TEST_DATABASE_URL to run against PostgreSQL")
    url = base.rsplit("/", 1)[0] + "/evlink_no_such_database"
    run = Cli(cwd=tmp_path, env=_bare_env(EVLINK_DATABASE_URL=url))

    for command in (("migrate",), ("key", "list")):
        line = _one_line(run(*command))
        assert "evlink_no_such_database" in line
        assert "does not exist" in line


@pytest.mark.parametrize("command", [("serve",), ("key", "list"), ("demo",)])
def test_from_another_folder_the_missing_sqlite_file_is_named_and_not_made(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    home = tmp_path / "project"
    elsewhere = tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    Cli(cwd=home, env=_bare_env()).ok("migrate")  # the default: var/evlink.sqlite3
    assert (home / "var" / "evlink.sqlite3").is_file()

    line = _one_line(Cli(cwd=elsewhere, env=_bare_env(EVLINK_PORT=str(free_port())))(*command))

    assert f"no evlink database at {elsewhere / 'var' / 'evlink.sqlite3'}" in line
    assert "evlink migrate" in line
    assert list(elsewhere.iterdir()) == []  # no empty database, no var/ folder


def test_an_unmigrated_sqlite_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty.sqlite3").write_bytes(b"")
    run = Cli(cwd=tmp_path, env=_bare_env(EVLINK_DATABASE_URL="sqlite://empty.sqlite3"))

    for command in (("key", "list"), ("serve",)):
        line = _one_line(run(*command))
        assert f"the database {tmp_path / 'empty.sqlite3'} has no evlink tables yet" in line
        assert "evlink migrate" in line


def test_a_port_in_use_is_one_line_and_nothing_says_serving(cli: Cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = Cli(cwd=cli.cwd, env={**cli.env, "EVLINK_PORT": str(port)})

        result = run("serve")

    assert _one_line(result) == f"evlink: 127.0.0.1:{port} is in use; set EVLINK_PORT"
    assert "Serving on" not in result.stdout


@pytest.mark.parametrize("workers", ["0", "-3", "two"])
def test_serve_refuses_a_worker_count_below_one(cli: Cli, workers: str) -> None:
    port = free_port()
    run = Cli(cwd=cli.cwd, env={**cli.env, "EVLINK_PORT": str(port)})

    result = run("serve", "--workers", workers)

    assert result.returncode == 2
    assert "argument --workers" in result.stderr
    assert "Serving on" not in result.stdout
    with socket.socket() as probe:  # nothing was started there
        probe.bind(("127.0.0.1", port))


@pytest.mark.parametrize("line", ["EVLINK_PORT=18800", "export EVLINK_PORT=18800"])
def test_demo_urls_follow_the_env_file_the_server_reads(cli: Cli, line: str) -> None:
    folder = cli.cwd / f"envfile-{'export' if 'export' in line else 'plain'}"
    folder.mkdir()
    (folder / ".env").write_text(line + "\n")
    run = Cli(cwd=folder, env=cli.env)  # EVLINK_DATABASE_URL: an absolute path

    body = json.loads(run.ok("demo", "--json"))
    text = run.ok("demo")

    assert body["base_url"] == "http://127.0.0.1:18800"
    assert "http://127.0.0.1:18800/api/status/" in text
    assert ":8000" not in text


def test_help_is_plain_text_and_every_subcommand_says_what_it_does() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "evlink.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "``" not in result.stdout
    for group, actions in {
        "user": ["create", "set-tier", "list"],
        "vehicle": ["add", "list", "remove"],
        "key": ["create", "list", "revoke"],
        "enode": ["link", "sync", "webhook"],
    }.items():
        shown = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "evlink.cli", group, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        for action in actions:
            described = [
                row
                for row in shown.splitlines()
                if row.split()[:1] == [action] and len(row.split()) > 1
            ]
            assert described, (group, action, shown)


async def test_serve_without_the_playground_bundles_says_how_to_get_them(
    cli: Cli, tmp_path: Path
) -> None:
    """evlink's own code, copied without the npm bundles (as after an install without npm),
    found first on PYTHONPATH: it serves, says in one line how to get the playground,
    and /graphql says the same."""
    shutil.copytree(PACKAGE, tmp_path / "evlink", ignore=shutil.ignore_patterns("vendor"))
    printed = ServerLog()
    database = cli.env["EVLINK_DATABASE_URL"]
    async with (
        serve_process(database, cwd=cli.cwd, printed=printed, PYTHONPATH=str(tmp_path)) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
    ):
        note = await printed.line_with(b"playground")
        page = await http.get("/graphql", headers={"Accept": "text/html"})
        status = await http.get("/api/status/00000000-0000-0000-0000-000000000000")

    assert b"`make playground`" in note
    assert page.status_code == 503
    assert "make playground" in page.text
    assert status.status_code == 401  # the API itself serves


def test_a_reader_that_goes_away_gets_no_traceback(cli: Cli) -> None:
    """`evlink user list | head -1`: the pipe closes before evlink writes."""
    cli.ok("user", "create", "--email", "pipe@b.c", "--tier", "free")
    process = subprocess.Popen(
        [sys.executable, "-m", "evlink.cli", "user", "list"],
        env=cli.env,
        cwd=cli.cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    process.stdout.close()  # long before the command has started
    _, errors = process.communicate(timeout=60)

    assert process.returncode == 0
    assert b"Traceback" not in errors
    assert b"BrokenPipeError" not in errors


def test_tariff_set_stores_a_checked_tariff_and_refuses_bad_ones_in_one_line(cli: Cli) -> None:
    cli.ok("user", "create", "--email", "tariff@b.c")
    out = cli.ok(
        "tariff",
        "set",
        "--user",
        "tariff@b.c",
        "--price",
        "0.30",
        "--currency",
        "eur",
        "--period",
        "22:00-06:00=0.12",
        "--timezone",
        "Europe/Oslo",
    )
    assert out.strip() == "tariff of tariff@b.c: 0.3 EUR/kWh 22:00-06:00=0.12 (Europe/Oslo)"
    for bad, message in (
        (["--price", "-1"], "pricePerKwh must be a number from 0 to 1000"),
        (["--price", "1", "--period", "22-06=1"], "must be HH:MM-HH:MM=PRICE"),
        (["--price", "1", "--timezone", "Nowhere/City"], "is not an IANA time zone"),
        (
            ["--price", "1", "--period", "22:00-06:00=1", "--period", "05:00-07:00=1"],
            "overlaps",
        ),
    ):
        refused = cli("tariff", "set", "--user", "tariff@b.c", "--currency", "EUR", *bad)
        assert refused.returncode == 1, bad
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert message in refused.stderr, refused.stderr
    unknown = cli("tariff", "set", "--user", "nobody@b.c", "--price", "1", "--currency", "EUR")
    assert unknown.returncode == 1


async def test_serve_on_postgresql_without_redis_says_what_a_second_instance_needs(
    database_url: str, tmp_path: Path
) -> None:
    # One instance on PostgreSQL is served as it should be, so it starts; but another on
    # the same database without Redis would never see this one's changes in its
    # subscriptions (a trial found one silently stale), so serve says so at start.
    printed = ServerLog()
    async with serve_process(database_url, cwd=tmp_path, printed=printed, EVLINK_REDIS_URL=""):
        await printed.line_with(b"Serving on")
    notes = [line for line in printed.lines if b"EVLINK_REDIS_URL" in line]
    if database_url.startswith("sqlite"):
        assert notes == []
    else:
        (note,) = notes
        assert b"Another instance on this database needs Redis" in note
        assert b"docs/scaling.md" in note


@pytest.mark.parametrize("command", [["user", "list"], ["migrate"], ["serve"]])
def test_a_postgresql_that_takes_connections_but_never_answers_is_one_line(
    cli: Cli, command: list[str]
) -> None:
    # A listening socket that never accepts: the kernel completes the handshake, and
    # nothing answers asyncpg's startup message (a stalled server, a wrong port behind a
    # proxy). The CLI says so within EVLINK_DATABASE_TIMEOUT instead of waiting.
    with socket.socket() as stalled:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(8)
        port = stalled.getsockname()[1]
        url = f"postgres://evlink@127.0.0.1:{port}/evlink"
        run = Cli(
            cwd=cli.cwd,
            env={
                **cli.env,
                "EVLINK_DATABASE_URL": url,
                "EVLINK_DATABASE_TIMEOUT": "1",
                "EVLINK_PORT": str(free_port()),
            },
        )
        result = run(*command)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert _one_line(result) == (
        f"evlink: cannot open the database postgres://evlink@127.0.0.1:{port}/evlink: "
        "no answer within 1 s (EVLINK_DATABASE_TIMEOUT)"
    )


async def test_serve_on_a_database_that_does_not_answer_stops_in_one_line(
    database_url: str, tmp_path: Path
) -> None:
    # The users' table locked by another session (a migration, a stuck transaction):
    # serve's first look at the database waits for it no longer than
    # EVLINK_DATABASE_TIMEOUT, and says so, instead of never starting.
    if database_url.startswith("sqlite"):
        pytest.skip("a PostgreSQL lock held by another session")
    holder = await asyncpg.connect(database_url.replace("postgres://", "postgresql://", 1))
    try:
        await holder.execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVLINK_")}
        env |= {
            "EVLINK_DATABASE_URL": database_url,
            "EVLINK_DATABASE_TIMEOUT": "1",
            "EVLINK_PORT": str(free_port()),
        }
        result = await asyncio.to_thread(Cli(cwd=tmp_path, env=env), "serve")
    finally:
        await holder.close()
    line = _one_line(result)
    assert line.startswith("evlink: cannot open the database postgres://"), line
    assert line.endswith("no answer within 1 s (EVLINK_DATABASE_TIMEOUT)"), line
    assert "Serving on" not in result.stdout


def test_demo_shows_a_car_added_without_a_name_by_the_api_s_name(cli: Cli) -> None:
    cli.ok("demo")
    added = cli.ok("vehicle", "add", "--user", "demo@evlink.local").split()[1]
    rows = cli.ok("vehicle", "list", "--user", "demo@evlink.local").splitlines()
    listed = {row.split("	")[0]: row.split("	")[-1] for row in rows}

    body = json.loads(cli.ok("demo", "--json"))
    text = cli.ok("demo")

    shown = {vehicle["id"]: vehicle["name"] for vehicle in body["vehicles"]}
    assert shown[added], body  # not null: the provider's name, as `vehicle list` shows
    assert shown[added] == listed[added].strip()
    assert f"vehicle {added}  {shown[added]}" in text
    assert "None" not in text
