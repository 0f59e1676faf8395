"""Settings.from_env: defaults, the environment, a ``.env`` file, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evlink.settings import (
    Settings,
    SettingsError,
    describe_database,
    renamed_names,
    unknown_names,
)


def from_env(environ: dict[str, str], env_file: Path | None = None) -> Settings:
    return Settings.from_env(environ=environ, env_file=env_file)


def test_defaults_are_the_embedded_single_machine_setup(tmp_path: Path) -> None:
    settings = from_env({}, tmp_path / "absent.env")

    assert settings.database_url.startswith("sqlite://var/")
    assert settings.database_url.endswith(".sqlite3")
    assert settings.is_sqlite
    assert settings.provider == "simulator"
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.log_level == "INFO"
    assert settings == Settings()


def test_unrelated_and_empty_variables_leave_the_defaults() -> None:
    settings = from_env({"PORT": "9999", "EVLINK_PORT": "", "EVLINK_PROVIDER": ""})

    assert settings.port == 8000
    assert settings.provider == "simulator"


def test_values_are_parsed_from_the_environment() -> None:
    settings = from_env(
        {
            "EVLINK_DATABASE_URL": "postgres://evlink@db.internal:5432/evlink",
            "EVLINK_PROVIDER": " Enode ",
            "EVLINK_HOST": "10.1.2.3",
            "EVLINK_PORT": "9001",
            "EVLINK_LOG_LEVEL": "debug",
            "EVLINK_STATUS_MAX_AGE": "12.5",
            "EVLINK_CHARGING_MAX_ATTEMPTS": "7",
            "EVLINK_CHARGING_DEADLINE": "90",
            "EVLINK_SIMULATOR_ACTION_DELAY": "0",
            "EVLINK_SIMULATOR_SPEED": "60",
            "EVLINK_ENODE_CLIENT_ID": "client",
            "EVLINK_ENODE_CLIENT_SECRET": "s3cret-value",
            "EVLINK_ENODE_API_URL": "http://127.0.0.1:9999/",
        }
    )

    assert settings.database_url == "postgres://evlink@db.internal:5432/evlink"
    assert settings.enode_urls == ("http://127.0.0.1:9999", "https://oauth.sandbox.enode.io")
    assert "s3cret-value" not in repr(settings)
    assert not settings.is_sqlite
    assert settings.provider == "enode"
    assert settings.host == "10.1.2.3"
    assert settings.port == 9001
    assert settings.log_level == "DEBUG"
    assert settings.status_max_age == 12.5
    assert settings.charging_max_attempts == 7
    assert isinstance(settings.charging_max_attempts, int)
    assert settings.charging_deadline == 90.0
    assert isinstance(settings.charging_deadline, float)
    assert settings.simulator_action_delay == 0.0  # zero delay is allowed for the simulator
    assert settings.simulator_speed == 60.0


def test_values_are_read_from_an_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# evlink settings\n"
        "EVLINK_PORT=8123\n"
        'EVLINK_DATABASE_URL="sqlite://data/evlink.sqlite3"\n'
        "EVLINK_LOG_LEVEL = warning\n"
    )

    settings = from_env({}, env_file)

    assert settings.port == 8123
    assert settings.database_url == "sqlite://data/evlink.sqlite3"
    assert settings.log_level == "WARNING"
    assert settings.provider == "simulator"


def test_the_environment_wins_over_the_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("EVLINK_PORT=8123\nEVLINK_HOST=10.0.0.1\n")

    settings = from_env({"EVLINK_PORT": "9002"}, env_file)

    assert settings.port == 9002
    assert settings.host == "10.0.0.1"  # not in the environment: the file's value


def test_a_missing_env_file_is_not_an_error(tmp_path: Path) -> None:
    settings = from_env({"EVLINK_PORT": "8124"}, tmp_path / "nowhere" / ".env")

    assert settings.port == 8124


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EVLINK_PORT", "abc"),
        ("EVLINK_PORT", "70000"),
        ("EVLINK_PORT", "-1"),
        ("EVLINK_PORT", "80\n80"),
        ("EVLINK_PROVIDER", "tesla"),
        ("EVLINK_STATUS_MAX_AGE", "-1"),
        ("EVLINK_STATUS_MAX_AGE", "0"),
        ("EVLINK_STATUS_MAX_AGE", "soon"),
        ("EVLINK_CHARGING_MAX_ATTEMPTS", "0"),
        ("EVLINK_CHARGING_MAX_ATTEMPTS", "2.5"),
        ("EVLINK_SIMULATOR_ACTION_DELAY", "-0.5"),
        ("EVLINK_LOG_LEVEL", "verbose"),
        ("EVLINK_DATABASE_URL", "mysql://x"),
        ("EVLINK_DATABASE_URL", "var/evlink.sqlite3"),
        ("EVLINK_DATABASE_URL", "sqlite://var/evlink.sqlite3?synchronous=ful"),
        ("EVLINK_GRAPHQL_INTROSPECTION", "sometimes"),
        ("EVLINK_FORWARDED_ALLOW_IPS", "10.0.0.300"),
        ("EVLINK_FORWARDED_ALLOW_IPS", "proxy.internal"),
        ("EVLINK_FORWARDED_ALLOW_IPS", "10.0.0.1,*"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        from_env({name: value})

    message = str(raised.value)
    assert "\n" not in message
    assert "\r" not in message
    assert message.startswith(f"{name}: ")


@pytest.mark.parametrize("value", ["FULL", "full", "2", "normal", "EXTRA", "off"])
def test_sqlite_s_synchronous_modes_are_taken_in_any_case(value: str) -> None:
    url = f"sqlite://var/evlink.sqlite3?synchronous={value}"
    assert from_env({"EVLINK_DATABASE_URL": url}).database_url == url


def test_a_bad_value_in_the_env_file_names_the_variable(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("EVLINK_PROVIDER=tesla\n")

    with pytest.raises(SettingsError, match=r"^EVLINK_PROVIDER: "):
        from_env({}, env_file)


def test_a_good_environment_value_hides_a_bad_one_in_the_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("EVLINK_PORT=abc\n")

    assert from_env({"EVLINK_PORT": "8125"}, env_file).port == 8125


def _environ_without_evlink() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EVLINK_")}


def _cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m evlink.cli *args`` in ``cwd`` with ``env``, its output captured."""
    return subprocess.run(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", "evlink.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_stops_with_one_line_on_a_bad_setting(tmp_path: Path) -> None:
    env = _environ_without_evlink()
    env["EVLINK_PORT"] = "abc"
    env["EVLINK_DATABASE_URL"] = f"sqlite://{tmp_path / 'cli.sqlite3'}"

    result = _cli(env, tmp_path, "migrate")

    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "EVLINK_PORT" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cli.sqlite3").exists()  # stopped before touching the database


def test_enode_needs_its_credentials() -> None:
    with pytest.raises(SettingsError) as error:
        from_env({"EVLINK_PROVIDER": "enode"})
    assert str(error.value).startswith("EVLINK_ENODE_CLIENT_ID:")


@pytest.mark.parametrize(
    ("environ", "introspection"),
    [
        ({}, True),
        ({"EVLINK_GRAPHQL_INTROSPECTION": "false"}, False),
        ({"EVLINK_ENVIRONMENT": "production"}, False),
        ({"EVLINK_ENVIRONMENT": "production", "EVLINK_GRAPHQL_INTROSPECTION": "true"}, True),
        ({"EVLINK_ENVIRONMENT": "production", "EVLINK_GRAPHQL_INTROSPECTION": "false"}, False),
        ({"EVLINK_ENVIRONMENT": "production", "EVLINK_GRAPHQL_INTROSPECTION": ""}, False),
    ],
)
def test_production_turns_introspection_off_unless_the_variable_is_given(
    environ: dict[str, str], introspection: bool
) -> None:
    assert from_env(environ).introspection is introspection


def test_forwarded_ips_are_read_as_uvicorn_compares_them() -> None:
    assert from_env({}).forwarded_allow_ips == ""  # no proxy believed
    given = from_env({"EVLINK_FORWARDED_ALLOW_IPS": " 10.0.0.7 , 172.16.0.1/12, ::1 "})
    # A network with host bits set is written as the network: uvicorn would otherwise take
    # it for a name and never match it.
    assert given.forwarded_allow_ips == "10.0.0.7,172.16.0.0/12,::1"
    assert from_env({"EVLINK_FORWARDED_ALLOW_IPS": "*"}).forwarded_allow_ips == "*"


def test_export_lines_in_the_env_file_are_read(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# a shell-style file\nexport EVLINK_PORT=18800\nexport  EVLINK_HOST='::1'\n"
    )

    settings = from_env({}, env_file)

    assert (settings.port, settings.host) == (18800, "::1")


def test_unknown_evlink_names_are_warned_about_with_the_likely_one(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("export EVLINK_CACHE_TL=3\nEVLINK_PORT=8001\n")
    environ = {
        "EVLINK_PORTT": "18800",
        "EVLINK_HOST": "127.0.0.1",
        "EVLINK_TEST_DATABASE_URL": "sqlite://:memory:",  # the test suite's, not a setting
        "PATH": "/bin",
    }

    warnings = unknown_names(environ, env_file)

    assert warnings == [
        "EVLINK_CACHE_TL is not an evlink setting (did you mean EVLINK_CACHE_TTL?): ignored",
        "EVLINK_PORTT is not an evlink setting (did you mean EVLINK_PORT?): ignored",
    ]
    assert unknown_names({"EVLINK_PORT": "1"}, None) == []


PER_USER = "EVLINK_WS_MAX_CONNECTIONS_PER_USER"
PER_KEY = "EVLINK_WS_MAX_CONNECTIONS_PER_KEY"  # its old name, an alias for one release


def test_the_websocket_cap_per_user_is_read_under_its_old_name_too(tmp_path: Path) -> None:
    absent = tmp_path / "absent.env"
    assert from_env({}, absent).ws_max_connections_per_user == 10
    assert from_env({PER_USER: "3"}, absent).ws_max_connections_per_user == 3
    assert from_env({PER_KEY: "4"}, absent).ws_max_connections_per_user == 4
    both = from_env({PER_USER: "3", PER_KEY: "4"}, absent)
    assert both.ws_max_connections_per_user == 3  # the new name wins
    (tmp_path / ".env").write_text(f"{PER_KEY}=5\n")
    assert from_env({}, tmp_path / ".env").ws_max_connections_per_user == 5

    with pytest.raises(SettingsError) as refused:
        from_env({PER_KEY: "0"}, absent)
    assert str(refused.value) == f"{PER_KEY}: must be 1 or more (got '0')"


def test_an_old_name_is_warned_about_with_its_new_one_and_is_not_unknown() -> None:
    assert renamed_names({PER_KEY: "4"}, None) == [
        f"{PER_KEY} is renamed {PER_USER}; the old name stops working next release"
    ]
    assert renamed_names({PER_KEY: "4", PER_USER: "3"}, None) == [
        f"{PER_KEY} is ignored: {PER_USER}, its new name, is given"
    ]
    assert renamed_names({PER_USER: "3"}, None) == []
    assert unknown_names({PER_KEY: "4", PER_USER: "3"}, None) == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgres://evlink:s3cret@db.local:5432/evlink",
            "postgres://evlink:***@db.local:5432/evlink",
        ),
        ("postgres://postgres@127.0.0.1:5432/test", "postgres://postgres@127.0.0.1:5432/test"),
        ("postgres://u:p@ss:w@h/d", "postgres://u:***@h/d"),
    ],
)
def test_a_database_is_described_without_its_password(url: str, shown: str) -> None:
    assert describe_database(url) == shown


def test_a_sqlite_database_is_described_by_its_absolute_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    assert describe_database("sqlite://var/evlink.sqlite3") == str(tmp_path / "var/evlink.sqlite3")


def test_the_cli_warns_about_a_misspelt_setting_and_an_old_name(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"EVLINK_PORTT=18800\n{PER_KEY}=4\n")
    env = _environ_without_evlink()
    env["EVLINK_DATABASE_URL"] = "sqlite://nothing-here.sqlite3"

    result = _cli(env, tmp_path, "user", "list")

    assert "evlink: warning: EVLINK_PORTT is not an evlink setting (did you mean EVLINK_PORT?)" in (
        result.stderr
    )
    assert f"evlink: warning: {PER_KEY} is renamed {PER_USER};" in result.stderr
