"""``evlink mqtt enable|disable`` in a subprocess, on a SQLite file of its own."""

from __future__ import annotations

import re

from tests.test_cli import Cli, cli  # noqa: F401 (the fixture)


def test_enable_prints_a_random_topic_id_and_the_acl_then_disable(cli: Cli) -> None:  # noqa: F811
    cli.ok("user", "create", "--email", "mqtt-user@example.com", "--tier", "pro")
    out = cli.ok("mqtt", "enable", "--user", "mqtt-user@example.com")
    found = re.search(r"topic id ([0-9a-f]{16})", out)
    assert found, out
    topic_id = found.group(1)
    assert f"topic read homeassistant/+/evlink_{topic_id}/#" in out
    assert f"topic write evlink/{topic_id}/+/charging/set" in out
    for leaf in ("state", "command", "session"):  # every retained topic an entity reads
        assert f"topic read evlink/{topic_id}/+/{leaf}" in out
    assert "mqtt-user" not in topic_id
    # Enabled again: the same id (Home Assistant keeps its entities).
    assert f"topic id {topic_id}" in cli.ok("mqtt", "enable", "--user", "mqtt-user@example.com")
    assert "off" in cli.ok("mqtt", "disable", "--user", "mqtt-user@example.com")
    assert f"topic id {topic_id}" in cli.ok("mqtt", "enable", "--user", "mqtt-user@example.com")


def test_enable_for_an_unknown_user_is_one_line(cli: Cli) -> None:  # noqa: F811
    result = cli("mqtt", "enable", "--user", "nobody@example.com")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "nobody@example.com" in result.stderr
