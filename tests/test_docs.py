"""The YAML and Python in README.md and docs/*.md work against a running evlink.

Every ```yaml block must parse (with Home Assistant's ``!secret`` and
``!include`` tags). In the blocks that configure Home Assistant, each URL is a
documented path, each header one that evlink reads, each request is accepted,
and each JSON path, attribute, entity and command that a template or an
automation uses exists. The Python bridge in docs/home-assistant.md runs
against the test server and a stand-in for Home Assistant's REST API.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import threading
import types
from collections.abc import Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from evlink.compat_rest.openapi import openapi_document
from tests.conftest import TIMEOUT, Server

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>\w*)\n(?P<body>.*?)^(?P=indent)```", re.S | re.M
)
EVLINK = "http://127.0.0.1:8000"  # where the docs say evlink runs
HA_DOMAINS = {"sensor", "binary_sensor", "rest", "rest_command", "template", "automation"}
ENTITY = r"((?:sensor|binary_sensor)\.[a-z0-9_]+)"
OPENAPI = openapi_document()


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    text: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path, lang: str) -> list[Block]:
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        if match["lang"] == lang:
            indent = len(match["indent"])
            body = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
            found.append(Block(path, text[: match.start()].count("\n") + 1, lang, body))
    return found


YAML_BLOCKS = [block for path in DOCS for block in code_blocks(path, "yaml")]


@dataclass(frozen=True)
class Tagged:
    """A Home Assistant tag (``!secret name``) kept as it is written."""

    tag: str
    value: str


class HomeAssistantLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus the tags Home Assistant's own loader knows."""


for _tag in (
    "!secret",
    "!include",
    "!include_dir_list",
    "!include_dir_named",
    "!include_dir_merge_list",
    "!include_dir_merge_named",
    "!env_var",
    "!input",
):
    HomeAssistantLoader.add_constructor(
        _tag, lambda loader, node: Tagged(node.tag, loader.construct_scalar(node))
    )


def load(block: Block) -> Any:
    return yaml.load(block.text, Loader=HomeAssistantLoader)  # noqa: S506 (a safe loader)


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=str)
def test_every_yaml_block_parses(block: Block) -> None:
    assert isinstance(load(block), dict), f"{block}: not a mapping"


def test_the_docs_have_home_assistant_configuration_to_check() -> None:
    configured = {b.path.name for b in YAML_BLOCKS if HA_DOMAINS & set(load(b))}

    assert {"README.md", "home-assistant.md"} <= configured


# -- what a Home Assistant configuration uses ---------------------------------------


def slug(name: str) -> str:
    """Home Assistant's entity id from a name: "EV battery" -> "ev_battery"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def mappings(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from mappings(item)
    elif isinstance(value, list):
        for item in value:
            yield from mappings(item)


def json_path(answer: Any, path: list[str], where: str) -> Any:
    for key in path:
        assert isinstance(answer, dict), f"{where}: {'.'.join(path)} passes through a value"
        assert key in answer, f"{where}: no {'.'.join(path)}"
        answer = answer[key]
    return answer


def value_json_paths(template: str) -> list[list[str]]:
    """``value_json.chargeState.batteryLevel`` and ``value_json['x']`` paths in a template."""
    paths = []
    for match in re.finditer(r"value_json((?:\.\w+|\[\s*['\"]\w+['\"]\s*\])+)", template):
        paths.append(re.findall(r"\w+", match[1]))
    return paths


@dataclass
class Configuration:
    """Everything one document configures, merged from its YAML blocks."""

    name: str
    secrets: dict[str, str] = field(default_factory=dict)
    sensors: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    commands: dict[str, dict[str, Any]] = field(default_factory=dict)
    entities: dict[str, list[str]] = field(default_factory=dict)  # entity id -> attributes
    users: list[Any] = field(default_factory=list)  # templates and automations

    @classmethod
    def of(cls, path: Path) -> Configuration:
        config = cls(path.name)
        for block in code_blocks(path, "yaml"):
            content = load(block)
            if not HA_DOMAINS & set(content):
                config.secrets.update({k: v for k, v in content.items() if isinstance(v, str)})
                continue
            for platform in ("sensor", "binary_sensor"):
                for sensor in content.get(platform, []):
                    assert sensor["platform"] == "rest", f"{block}: only REST sensors are checked"
                    config.add_rest_sensor(platform, sensor, sensor)
            for resource in content.get("rest", []):
                for platform in ("sensor", "binary_sensor"):
                    for sensor in resource.get(platform, []):
                        config.add_rest_sensor(platform, resource, sensor)
            for group in content.get("template", []):
                for platform in ("sensor", "binary_sensor"):
                    for sensor in group.get(platform, []):
                        config.entities[f"{platform}.{slug(sensor['name'])}"] = list(
                            sensor.get("attributes", {})
                        )
                config.users.append(group)
            config.commands.update(content.get("rest_command", {}))
            config.users.extend(content.get("automation", []))
        return config

    def add_rest_sensor(
        self, platform: str, resource: dict[str, Any], sensor: dict[str, Any]
    ) -> None:
        self.sensors.append((resource, sensor))
        self.entities[f"{platform}.{slug(sensor['name'])}"] = list(
            sensor.get("json_attributes", [])
        )


CONFIGURATIONS = [
    path for path in DOCS if any(HA_DOMAINS & set(load(b)) for b in code_blocks(path, "yaml"))
]


@dataclass
class Live:
    """The test server, a key and a car to put in place of the docs' placeholders."""

    server: Server
    key: str
    vehicle_id: str

    def headers(self, config: Configuration, given: dict[str, Any], where: str) -> dict[str, str]:
        headers = {}
        for name, value in given.items():
            if isinstance(value, Tagged):
                assert value.tag == "!secret", f"{where}: {value.tag}"
                assert value.value in config.secrets, f"{where}: no secret {value.value}"
                documented = config.secrets[value.value]
                assert re.fullmatch(r"Bearer evl_\w+_\w+", documented), f"{where}: {documented}"
                value = f"Bearer {self.key}"
            headers[name] = str(value)
        return headers

    def url(self, url: str, method: str, where: str) -> tuple[str, dict[str, Any]]:
        """The test server's URL for a documented one, and the operation it names."""
        assert url.startswith(EVLINK), f"{where}: {url} is not at {EVLINK}"
        parts = urlsplit(url.replace("VEHICLE_ID", self.vehicle_id))
        operation = None
        for template, item in OPENAPI["paths"].items():
            if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), parts.path):
                operation = item.get(method)
        assert operation is not None, f"{where}: {method.upper()} {parts.path} is not documented"
        query = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        for name in re.findall(r"([^&=]+)=", parts.query):
            assert name in query, f"{where}: ?{name} is not a parameter of {parts.path}"
        return self.server.base_url + parts.path + (f"?{parts.query}" if parts.query else ""), (
            operation
        )


def check_headers(operation: dict[str, Any], headers: dict[str, str], where: str) -> None:
    known = {"authorization", "content-type"} | {
        p["name"].lower() for p in operation.get("parameters", []) if p["in"] == "header"
    }
    for name in headers:
        assert name.lower() in known, f"{where}: evlink does not read the header {name}"


async def check_configuration(config: Configuration, live: Live) -> None:
    http = live.server.http
    for resource, sensor in config.sensors:
        where = f"{config.name}: sensor {sensor['name']!r}"
        url, operation = live.url(resource["resource"], resource.get("method", "get"), where)
        headers = live.headers(config, resource.get("headers", {}), where)
        check_headers(operation, headers, where)
        response = await http.get(url, headers=headers)
        assert response.status_code == 200, f"{where}: {response.text}"
        answer = response.json()
        for path in value_json_paths(sensor.get("value_template", "")):
            json_path(answer, path, where)
        attributes_path = sensor.get("json_attributes_path", "$")
        assert re.fullmatch(r"\$(\.\w+)*", attributes_path), f"{where}: {attributes_path}"
        block = json_path(answer, attributes_path.split(".")[1:], where)
        for attribute in sensor.get("json_attributes", []):
            assert attribute in block, f"{where}: no attribute {attribute} at {attributes_path}"

    answers: dict[str, Any] = {}
    for name, command in config.commands.items():  # in the docs' order: START, then STOP
        where = f"{config.name}: rest_command {name}"
        method = command.get("method", "get").lower()
        url, operation = live.url(command["url"], method, where)
        headers = live.headers(config, command.get("headers", {}), where)
        if "content_type" in command:
            headers["Content-Type"] = command["content_type"]
        check_headers(operation, headers, where)
        response = await http.request(
            method, url, headers=headers, content=command.get("payload"), timeout=TIMEOUT
        )
        assert response.status_code == 200, f"{where}: {response.text}"
        if wait := re.search(r"wait=([\d.]+)", url):  # HA must wait longer than evlink
            assert command.get("timeout", 10) > float(wait[1]), f"{where}: timeout"
        answers[name] = response.json()

    for user in config.users:
        check_references(config, user, answers)


def check_references(config: Configuration, user: Any, answers: dict[str, Any]) -> None:
    """Entities, attributes, commands and response fields that a template or automation uses."""
    where = f"{config.name}: {user.get('alias') or 'template'}"
    responses: dict[str, str] = {}  # response variable -> its command
    for step in mappings(user):
        ids = step.get("entity_id", [])
        for entity in [ids] if isinstance(ids, str) else ids:
            assert entity in config.entities, f"{where}: no entity {entity}"
            if "attribute" in step:
                assert step["attribute"] in config.entities[entity], f"{where}: {step}"
        action = step.get("action", "")
        if isinstance(action, str) and action.startswith("rest_command."):
            command = action.removeprefix("rest_command.")
            assert command in config.commands, f"{where}: no {action}"
            if "response_variable" in step:
                responses[step["response_variable"]] = command
    for text in strings(user):
        for entity in re.findall(rf"(?:states|is_state|state_attr)\(\s*'{ENTITY}'", text):
            assert entity in config.entities, f"{where}: no entity {entity}"
        for entity, attribute in re.findall(rf"state_attr\(\s*'{ENTITY}'\s*,\s*'(\w+)'", text):
            assert attribute in config.entities[entity], f"{where}: no {entity}.{attribute}"
        for variable, command in responses.items():
            for part, key in re.findall(rf"\b{variable}\.(\w+)(?:\.(\w+))?", text):
                assert part in ("status", "content", "headers"), f"{where}: {variable}.{part}"
                if part == "content" and key:
                    assert key in answers[command], f"{where}: {command} answers no {key}"


@pytest.mark.parametrize("path", CONFIGURATIONS, ids=lambda path: path.name)
async def test_home_assistant_configuration_works_against_evlink(
    server: Server, path: Path
) -> None:
    user, key = await server.user()
    car = await server.vehicle(user, "plugged")
    server.simulator.action_delay = timedelta(0)  # ?wait=30 then ends at once

    await check_configuration(Configuration.of(path), Live(server, key, str(car.id)))


# -- the Python bridge of docs/home-assistant.md ------------------------------------


def bridge_module() -> types.ModuleType:
    (block,) = code_blocks(ROOT / "docs" / "home-assistant.md", "python")
    module = types.ModuleType("evlink_to_ha")
    exec(compile(block.text, str(block), "exec"), module.__dict__)  # noqa: S102 (our own docs)
    return module


@contextmanager
def stand_in_home_assistant() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP server that records what would be POSTed to Home Assistant's REST API."""
    received: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(
                {
                    "path": self.path,
                    "authorization": self.headers["Authorization"],
                    "body": json.loads(body),
                }
            )
            self.send_response(201)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    ha = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=ha.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{ha.server_address[1]}", received
    finally:
        ha.shutdown()
        ha.server_close()
        thread.join(TIMEOUT)


async def test_the_subscription_bridge_mirrors_the_charge_state_into_home_assistant(
    server: Server,
) -> None:
    bridge = bridge_module()
    user, key = await server.user()
    car = await server.vehicle(user, "charging")
    status = (
        await server.http.get(f"/api/status/{car.id}", headers={"Authorization": f"Bearer {key}"})
    ).json()

    async with aclosing(bridge.charge_states(server.ws_url, key, str(car.id))) as states:
        first = await asyncio.wait_for(anext(states), TIMEOUT)
    with stand_in_home_assistant() as (ha_url, received):
        await asyncio.to_thread(bridge.to_home_assistant, ha_url, "ha-token", first)

    assert first["batteryLevel"] == status["chargeState"]["batteryLevel"]
    assert first["powerDeliveryState"] == status["chargeState"]["powerDeliveryState"]
    (posted,) = received
    assert posted["path"] == "/api/states/sensor.ev_battery_live"
    assert posted["authorization"] == "Bearer ha-token"
    assert posted["body"]["state"] == first["batteryLevel"]
    assert posted["body"]["attributes"]["isCharging"] is True


async def test_the_bridge_is_refused_with_a_bad_key(server: Server) -> None:
    bridge = bridge_module()
    user, _ = await server.user()
    car = await server.vehicle(user)

    states = bridge.charge_states(server.ws_url, "evl_not_a_key", str(car.id))
    with pytest.raises(Exception) as refused:  # noqa: PT011 (what the bridge's loop catches)
        await asyncio.wait_for(anext(states), TIMEOUT)

    assert isinstance(refused.value, OSError | RuntimeError | bridge.websockets.ConnectionClosed)


def test_the_readme_error_table_has_every_error_code() -> None:
    codes = set(
        re.findall(r'^    code = "([A-Z_]+)"$', (ROOT / "evlink" / "errors.py").read_text(), re.M)
    )
    readme = (ROOT / "README.md").read_text()
    table = set(re.findall(r"^\| `([A-Z_]+)` \| \d{3}", readme, re.M))

    assert "UNSUPPORTED_MEDIA_TYPE" in codes
    assert codes - table == set()


def test_architecture_stands_alone_and_lists_every_migration() -> None:
    architecture = (ROOT / "ARCHITECTURE.md").read_text()
    changelog = (ROOT / "CHANGELOG.md").read_text()
    migrations = sorted(
        path.stem for path in (ROOT / "evlink" / "models" / "migrations").glob("[0-9]*.py")
    )

    assert "DESIGN" not in architecture
    assert len(migrations) >= 6
    for name in migrations:
        assert name.split("_", 1)[0] in architecture, name
        assert f"`{name}`" in changelog, name


def layout_paths(architecture: str) -> set[str]:
    """The paths ARCHITECTURE.md's layout names: each entry under the folders above it by
    indentation (two spaces a level; a description stands further right). An entry may
    name several files ("a.py, b.py") or a path below its folder ("x/test_y.py")."""
    block = architecture.split("## Layout", 1)[1].split("```", 2)[1]
    folders: list[tuple[int, str]] = []
    named: set[str] = set()
    for line in block.splitlines():
        entry = re.match(r"^( {0,12})(\S+(?:, \S+)*)", line)
        if entry is None:
            continue
        indent = len(entry[1])
        while folders and folders[-1][0] >= indent:
            folders.pop()
        where = "".join(folder for _, folder in folders)
        for name in entry[2].split(", "):
            named.add(where + name)
        if entry[2].endswith("/"):
            folders.append((indent, entry[2]))
    return named


def test_the_layout_lists_every_module() -> None:
    """Every evlink/**/*.py is in ARCHITECTURE.md's layout (a folder listed without its
    files, such as migrations/, stands for what is in it)."""
    named = layout_paths((ROOT / "ARCHITECTURE.md").read_text())
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "evlink").rglob("*.py"))

    # Folders listed without any of their files (migrations/, static/).
    whole = {n for n in named if n.endswith("/") and not any(m.startswith(n) for m in named - {n})}
    missing = [
        module
        for module in modules
        if module not in named and not any(module.startswith(folder) for folder in whole)
    ]
    assert len(modules) > 60
    assert missing == []
