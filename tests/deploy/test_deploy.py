"""deploy/ stays true to the code it deploys.

- The example configs (deploy/config/) load with the node's own loader, as
  shipped and with every commented-out option switched on; together with the
  adapters and the MQTT listener they configure, they are what a node starts
  with. Each names every option of the config model (so a new option without
  an example fails here), says whether it is required, and states the
  default the code has.
- The systemd unit is well formed (and passes ``systemd-analyze verify`` where
  systemd is installed), hardened, and starts ``mrx serve`` on the node
  directory it owns.
- The container image definition copies what the wheel is built from, runs as
  a user, keeps the node directory in a volume and checks the node's
  readiness route.
- The compose corridor's files exist and agree with each other; its init
  script, run here, makes three nodes that are each other's partners with
  the right anchors and log keys; and its broker, started here with
  Mosquitto, carries a gateway's events to the node that way (when
  Mosquitto is installed).
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
import types
import typing
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from pydantic import BaseModel

from mrx.adapters.files import FileOptions, NctsOptions
from mrx.adapters.interface import SHIPPED
from mrx.adapters.mqtt import LockListener
from mrx.adapters.webhook import WebhookOptions
from mrx.keys.keyring import KeyStore
from mrx.keys.notes import NoteSigner
from mrx.node import openapi
from mrx.node.cli import build_parser
from mrx.node.config import CONFIG_NAME, DEFAULT_PORT, AdapterConfig, NodeConfig, load_config
from mrx.node.metrics import NodeMetrics
from mrx.node.outbound import build_adapters
from tests.corridor import free_port, wait_until
from tests.deploy.conftest import REPO, shell_env
from tests.nodeproc import NodeDir, NodeProcess


DEPLOY = REPO / "deploy"
EXAMPLES = sorted((DEPLOY / "config").glob("*.toml"))
OPTIONS = {"webhook": WebhookOptions, "files": FileOptions, "ncts": NctsOptions}  # each shipped adapter's options


# -- the example configs ----------------------------------------------------------------

_COMMENTED_TABLE = re.compile(r"^# ?(\[\[?[a-z_]+\]\]?)(\s+#.*)?$")
_COMMENTED_KEY = re.compile(r"^# ?([a-z_]+ = .*)$")


def every_option_on(text: str) -> str:
    """The example with its commented-out tables and options switched on."""
    lines = []
    for line in text.splitlines():
        match = _COMMENTED_TABLE.match(line) or _COMMENTED_KEY.match(line)
        lines.append(match.group(1) if match else line)
    return "\n".join(lines) + "\n"


def install(text: str, directory: Path) -> Path:
    """The example as a node directory's mrx.toml, with the secret files it names."""
    secrets = directory / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "webhook.secret").write_text("a-webhook-secret-of-32-characters\n")
    (secrets / "mqtt.password").write_text("a-broker-password\n")
    for secret in secrets.iterdir():
        secret.chmod(0o600)
    path = directory / CONFIG_NAME
    path.write_text(text)
    return path


VARIANTS = {"as-shipped": lambda text: text, "every-option-on": every_option_on}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_an_example_is_a_config_a_node_starts_with(example: Path, variant: str, tmp_path: Path) -> None:
    config = load_config(install(VARIANTS[variant](example.read_text()), tmp_path))
    # What the node does with the config at start, short of listening: build the adapters (each validates its own
    # options and reads its secret) and the MQTT listener (which reads its password).
    assert [a.name for a in build_adapters(config)] == [t.name for t in config.adapters]
    if config.mqtt is not None:
        unused = cast(Any, None)  # the listener only keeps these until it starts
        LockListener.of(config, ingest=unused, access=unused, store=unused, metrics=NodeMetrics())


def test_there_is_an_example_per_kind_of_office() -> None:
    assert {p.stem for p in EXAMPLES} == {"origin-node", "border-node", "eu-node"}


def _model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``M``, ``M | None``, ``list[M]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list):
        return next((m for a in typing.get_args(annotation) if (m := _model(a)) is not None), None)
    return None


def option_names(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every option of a config model, dotted (``limits.max_body_bytes``, ``partners.log_key``)."""
    names = set()
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        inner = _model(field.annotation)
        names |= option_names(inner, f"{prefix}{name}.") if inner else {prefix + name}
    return names


def given_names(data: dict[str, Any], prefix: str = "") -> set[str]:
    """The options a parsed config sets, named like `option_names`."""
    names = set()
    for key, value in data.items():
        tables = value if isinstance(value, list) and value and isinstance(value[0], dict) else [value]
        if isinstance(tables[0], dict):
            for table in tables:
                names |= given_names(table, f"{prefix}{key}.")
        else:
            names.add(prefix + key)
    return names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_option_of_the_config_is_in_every_example(example: Path) -> None:
    given = given_names(tomllib.loads(every_option_on(example.read_text())))
    expected = option_names(NodeConfig)
    assert not expected - given, f"{example.name} lacks {sorted(expected - given)}: add them, commented if optional"


def test_every_option_of_every_shipped_adapter_is_in_an_example() -> None:
    assert set(OPTIONS) == set(SHIPPED), "a shipped adapter without its options model here"
    given: dict[str, set[str]] = {kind: set() for kind in OPTIONS}
    for example in EXAMPLES:
        for table in tomllib.loads(every_option_on(example.read_text())).get("adapters", []):
            given.setdefault(table["kind"], set()).update(set(table) - {"name", "kind"})
    for kind, options in OPTIONS.items():
        missing = set(options.model_fields) - given[kind]
        assert not missing, f"no example shows the {kind} adapter's {sorted(missing)}"


# Each option's line: the key (possibly commented out), then its comment and the indented comment lines after it.
_TABLE = re.compile(r"^(?:# ?)?\[\[?([a-z_]+)\]\]?")
_OPTION = re.compile(r"^(?:# ?)?([a-z_]+) = (.*)$")
_MORE = re.compile(r"^\s+#(.*)$")
_DEFAULT = re.compile(r"\(default:? ")
_NOTHING = {"none", "no limit"}  # stated defaults that mean None (or an empty list)


def documented_options(text: str) -> list[tuple[type[BaseModel], str, str]]:
    """(model, option, comment) for every option line of an example, in order."""
    tables = {name: inner for name, field in NodeConfig.model_fields.items() if (inner := _model(field.annotation))}
    found: list[tuple[type[BaseModel], str, str]] = []
    model: type[BaseModel] = NodeConfig
    for line in text.splitlines():
        if table := _TABLE.match(line):
            model = tables[table.group(1)]
        elif (more := _MORE.match(line)) and found:
            owner, key, comment = found[-1]
            found[-1] = (owner, key, f"{comment} {more.group(1).strip()}")
        elif option := _OPTION.match(line):
            key, rest = option.groups()
            value, _, comment = rest.partition(" # ")
            found.append((model, key, comment))
            if model is AdapterConfig and key == "kind":  # the adapter's own options follow
                model = OPTIONS[tomllib.loads(f"kind = {value}")["kind"]]
    return found


def stated_default(comment: str) -> tuple[bool, Any]:
    """(whether the comment states a default, the value it states)."""
    match = _DEFAULT.search(comment)
    if match is None:
        return False, None
    rest = comment[match.end():]
    if rest.startswith("["):
        literal = rest[: rest.index("]") + 1]
    else:
        literal = re.split(r"[;,)]", rest, maxsplit=1)[0].strip()
    if literal in _NOTHING:
        return True, None
    return True, tomllib.loads(f"value = {literal}")["value"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_option_says_whether_it_is_required_and_its_default_is_the_codes(example: Path) -> None:
    options = documented_options(example.read_text())
    documented = set()
    for model, key, comment in options:
        where = f"{example.name}: {model.__name__}.{key}"
        assert key in model.model_fields, f"{where} is not an option"
        field = model.model_fields[key]
        states, value = stated_default(comment)
        if "Required" in comment:
            assert field.is_required(), f"{where} is not required"
        elif states:
            assert not field.is_required(), f"{where} is required: it has no default"
            default = field.get_default(call_default_factory=True)
            if isinstance(value, str) and "<node_id>" in value:
                assert default is None, f"{where}: its default is not computed from the node ID"
            elif value is None:
                assert default in (None, []), f"{where} defaults to {default!r}, not to nothing"
            else:
                assert value == default, f"{where} defaults to {default!r}, the comment says {value!r}"
        else:
            continue
        documented.add((model.__name__, key))
    undocumented = {(m.__name__, k) for m, k, _ in options} - documented
    assert not undocumented, f"{example.name}: say 'Required' or '(default ...)' for {sorted(undocumented)}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_max_inflight_is_described_as_the_listener_uses_it(example: Path) -> None:
    """adapters/mqtt.py: held unacknowledged until the commit; at the limit the listener stops reading the
    connection and the rest wait at the broker; the broker's own window must be at least as large."""
    (comment,) = [c for model, key, c in documented_options(example.read_text()) if key == "max_inflight"]
    for says in ("unacknowledged", "after its commit", "stops reading the broker's connection",
                 "wait at the broker", "max_inflight_messages", "at least as large"):
        assert says in comment, f"{example.name}: [mqtt] max_inflight's comment does not say {says!r}"


def test_the_border_example_and_the_mosquitto_example_agree() -> None:
    config = tomllib.loads((DEPLOY / "config" / "border-node.toml").read_text())["mqtt"]
    broker = _directives(DEPLOY / "mosquitto" / "mosquitto.conf")
    acl = (DEPLOY / "mosquitto" / "acl").read_text()
    assert config["max_inflight"] <= int(broker["max_inflight_messages"])  # else the broker's window is the limit
    assert f"\nuser {config['username']}\n" in acl
    assert f"topic read {config['topic_prefix']}/gateways/+/events" in acl


def _directives(path: Path) -> dict[str, str]:
    """A Mosquitto config's directives, the last of each (comments and blank lines left out)."""
    pairs = (line.split(None, 1) for line in path.read_text().splitlines() if line.strip() and line[0] != "#")
    return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}


# -- the systemd unit ------------------------------------------------------------------

UNIT = DEPLOY / "systemd" / "mrx.service"


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)  # systemd repeats some keys
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    return unit


def test_the_unit_runs_mrx_serve_on_the_node_directory_it_owns_as_its_own_user() -> None:
    unit = _unit()
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    args = build_parser().parse_args(argv[1:])
    assert Path(argv[0]).name == "mrx" and args.command == "serve"
    node_dir = Path("/var/lib") / service["StateDirectory"]
    assert Path(args.config) == node_dir / CONFIG_NAME == Path(service["Environment"].partition("=")[2])
    assert Path(service["WorkingDirectory"]) == node_dir
    assert service["User"] not in ("root", "0") and service["StateDirectoryMode"] == "0700"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


# An absolute path to a node's directory, its config or anything in it, as the pages and deploy/ write them.
_NODE_PATH = re.compile(r"(/(?:var/lib|srv|opt|etc)/[\w.-]+(?:/[\w.-]+)*)")


def test_every_page_puts_the_node_directory_where_the_unit_does() -> None:
    """One node directory, the unit's state directory, in the operator's pages and every file of deploy/."""
    node_dir = Path("/var/lib") / _unit()["Service"]["StateDirectory"]
    pages = [REPO / "docs" / "operations.md", REPO / "docs" / "audit.md",
             *(p for p in sorted(DEPLOY.rglob("*")) if p.is_file())]
    wrong = []
    for page in pages:
        for path in map(Path, _NODE_PATH.findall(page.read_text())):
            of_a_node = path.name == CONFIG_NAME or (path.is_relative_to("/var/lib") and path.parts[3].startswith("mrx"))
            where = path.relative_to(node_dir).parts[:1] if path.is_relative_to(node_dir) else None
            if of_a_node and where not in ((), (CONFIG_NAME,), ("data",), ("keys",)):
                wrong.append(f"{page.relative_to(REPO)}: {path}")
    assert not wrong, f"node paths other than {node_dir} (its {CONFIG_NAME}, data/, keys/): {wrong}"


def test_the_unit_is_hardened_and_restarts() -> None:
    service = _unit()["Service"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "Restart": "on-failure", "KillSignal": "SIGTERM",
                       "CapabilityBoundingSet": ""}.items():
        assert service.get(key) == value, key


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here; the unit's structure is checked by the tests above")
    # verify wants ExecStart's program to exist: put one that does in its place.
    executable = shutil.which("mrx") or sys.executable
    unit = tmp_path / "mrx.service"
    unit.write_text(UNIT.read_text().replace("/opt/mrx/bin/mrx", executable))
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)],
                              check=False, capture_output=True, text=True, timeout=60)
    about_unit = [line for line in verified.stderr.splitlines() if "mrx.service" in line]
    assert verified.returncode == 0 and not about_unit, verified.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                              check=False, capture_output=True, text=True, timeout=60)
    exposure = re.search(r"Overall exposure level for mrx\.service: ([0-9.]+)", security.stdout)
    if exposure is not None:  # systemd 252 and later
        assert float(exposure.group(1)) <= 2.0, security.stdout


# -- the container image -------------------------------------------------------------------

CONTAINERFILE = DEPLOY / "container" / "Containerfile"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments left out."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    split = (line.split(None, 1) for line in text.splitlines() if line.strip())
    return [(word.upper(), args.strip()) for word, args in split]


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions(CONTAINERFILE):
        if instruction[0] == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages


def test_the_image_is_built_in_stages_on_slim_python_3_11() -> None:
    stages = _stages()
    assert len(stages) >= 2
    assert all(stage[0][1].split()[0] == "python:3.11-slim" for stage in stages)


def test_the_image_copies_everything_the_wheel_is_built_from() -> None:
    copied = set()
    for instruction, args in (i for stage in _stages() for i in stage):
        if instruction == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            copied |= {s.rstrip("/") for s in sources}
    assert all((REPO / source).exists() for source in copied), copied
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"],
              *project["tool"]["hatch"]["build"]["targets"]["wheel"]["only-include"]}
    assert needed <= copied, f"the image does not copy {sorted(needed - copied)}"
    ignore = (DEPLOY / "container" / "Containerfile.dockerignore").read_text().splitlines()
    assert {line[1:] for line in ignore if line.startswith("!")} == copied, "the build context leaves out a COPY source"


def test_the_image_runs_mrx_serve_as_a_user_with_a_volume_and_a_readiness_check() -> None:
    final = dict(_stages()[-1][1:])  # the last of each instruction
    assert final["USER"] not in ("root", "0")
    env = dict(re.findall(r"(\w+)=(\S+)", final["ENV"]))
    node_dir = Path(env["MRX_CONFIG"]).parent
    assert final["WORKDIR"] == str(node_dir) and f'"{node_dir}"' in final["VOLUME"]
    command = [*yaml.safe_load(final["ENTRYPOINT"]), *yaml.safe_load(final["CMD"])]  # JSON arrays
    assert command[0] == "mrx" and build_parser().parse_args(command[1:]).command == "serve"
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", final["HEALTHCHECK"])
    assert url is not None and int(url.group(1)) == DEFAULT_PORT == int(final["EXPOSE"])
    assert url.group(2) == "/readyz" and url.group(2) in openapi.document()["paths"]


# -- the compose corridor --------------------------------------------------------------------

COMPOSE = DEPLOY / "compose"
NODES = {"cn-akl": ("CN-AKL", "CNAKL"), "kz-dos": ("KZ-DOS", "KZDOS"), "pl-maa": ("PL-MAA", "PLMAA")}


def _compose() -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load((COMPOSE / "compose.yaml").read_text()))


def test_the_compose_file_names_files_that_exist_and_a_volume_per_node() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(NODES) | {"init", "broker"} <= set(services)
    for name, service in services.items():
        if "build" in service:
            assert (COMPOSE / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == CONTAINERFILE
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), f"{name} mounts {source}, which is not there"
            else:
                assert source in compose["volumes"], f"{name} mounts the undeclared volume {source}"
    for name in NODES:
        assert services[name]["volumes"] == [f"{name}:/var/lib/mrx"]
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert f"{name}:/corridor/{name}" in services["init"]["volumes"]
    ports = [p for s in services.values() for p in s.get("ports", [])]
    assert len(ports) == len(set(ports)) and all(p.startswith("127.0.0.1:") for p in ports)


def _run_init(corridor: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(COMPOSE / "init-corridor.sh")], env={**env, "CORRIDOR": str(corridor)},
                          check=False, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def corridor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compose corridor's volumes as its init step leaves them."""
    corridor = tmp_path_factory.mktemp("corridor")
    made = _run_init(corridor, shell_env(tmp_path_factory.mktemp("bin")))
    assert made.returncode == 0, made.stdout + made.stderr
    return corridor


@pytest.mark.slow
def test_the_init_step_makes_three_nodes_that_trust_each_other(corridor: Path) -> None:
    compose = _compose()
    configs = {name: load_config(corridor / name / CONFIG_NAME) for name in NODES}
    keys = {name: KeyStore.open(c.keys_path) for name, c in configs.items()}
    for name, config in configs.items():
        assert (config.node_id, config.office) == NODES[name]
        assert config.host == "0.0.0.0"
        assert [p.rpartition(":")[2] for p in compose["services"][name]["ports"]] == [str(config.port)]
        partners = {p.node_id: p for p in config.partners}
        assert set(partners) == {NODES[other][0] for other in NODES if other != name}
        for other in NODES:
            if other == name:
                continue
            partner = partners[NODES[other][0]]
            assert partner.url == f"http://{other}:{configs[other].port}"
            assert partner.anchors == [keys[other].signing_key.kid]
            assert partner.log_key == str(NoteSigner(configs[other].log_origin, keys[other].note_key()).verifier)
    for name in ("kz-dos", "pl-maa"):
        assert [a.partner for a in configs[name].agreements] == ["CN-AKL"]
    mqtt = configs["kz-dos"].mqtt
    assert mqtt is not None and mqtt.host == "broker" and "broker" in compose["services"]
    assert mqtt.max_inflight <= int(_directives(COMPOSE / "mosquitto.conf")["max_inflight_messages"])
    broker_password = (corridor / "broker" / f"{mqtt.username}.password").read_text()
    assert broker_password == (corridor / "kz-dos" / str(mqtt.password_file)).read_text()



@pytest.mark.slow
def test_the_init_step_run_again_changes_nothing(corridor: Path, tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in sorted(corridor.rglob("*")) if p.is_file() and "data" not in p.parts}
    again = _run_init(corridor, shell_env(tmp_path / "bin"))
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.slow
def test_a_gateway_reaches_dostyk_through_the_compose_broker(corridor: Path, tmp_path: Path) -> None:
    """The broker as compose starts it (its config, the ACL, broker-start.sh), Dostyk's node as init made it."""
    if shutil.which("mosquitto") is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("Mosquitto is not installed here; the compose broker's files are checked by the tests above")
    port = free_port()
    broker_dir = tmp_path / "mosquitto"
    for sub in ("config", "data"):
        (broker_dir / sub).mkdir(parents=True)
    conf = (COMPOSE / "mosquitto.conf").read_text().replace("/mosquitto/", f"{broker_dir}/")
    assert "\nlistener 1883\n" in conf
    conf = conf.replace("\nlistener 1883\n", f"\nlistener {port} 127.0.0.1\n")
    if os.geteuid() == 0:  # else Mosquitto drops to its own user, which cannot reach pytest's private tmp_path
        conf += "user root\n"
    (broker_dir / "config" / "mosquitto.conf").write_text(conf)
    shutil.copy(DEPLOY / "mosquitto" / "acl", broker_dir / "config" / "acl")
    env = {**os.environ, "SECRETS": str(corridor / "broker"), "PASSWORDS": str(broker_dir / "data" / "passwords"),
           "CONF": str(broker_dir / "config" / "mosquitto.conf")}
    broker_log = tmp_path / "mosquitto.log"
    with broker_log.open("wb") as out:
        broker = subprocess.Popen(["sh", str(COMPOSE / "broker-start.sh")], env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _accepts(port) or broker.poll() is not None, 30, "the broker to listen")
        assert broker.poll() is None, broker_log.read_text()

        # Dostyk's node directory as init left it, the broker and its HTTP port moved to this host.
        node_path = tmp_path / "kz-dos"
        shutil.copytree(corridor / "kz-dos", node_path)
        text = (node_path / CONFIG_NAME).read_text()
        for old, new in (('host = "0.0.0.0"', 'host = "127.0.0.1"'), ("port = 8470", "port = 0"),
                         ('host = "broker"', 'host = "127.0.0.1"'), ("port = 1883", f"port = {port}")):
            assert old in text
            text = text.replace(old, new, 1)
        (node_path / CONFIG_NAME).write_text(text)
        with NodeProcess(NodeDir(node_path, load_config(node_path / CONFIG_NAME))) as node:
            start = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
            played = subprocess.run(
                [sys.executable, "-m", "mrx.node.cli", "simulate", "--mqtt", f"127.0.0.1:{port}",
                 "--gateway", "GW-DOS-01", "--mqtt-username", "GW-DOS-01",
                 "--mqtt-password-file", str(corridor / "broker" / "GW-DOS-01.password"),
                 "--containers", "1", "--start", start],
                check=False, capture_output=True, text=True, timeout=120,
            )
            assert played.returncode == 0, played.stdout + played.stderr
            counted = re.search(r"(\d+) published", played.stdout + played.stderr)
            assert counted is not None and int(counted.group(1)) > 0, played.stdout + played.stderr
            published = int(counted.group(1))
            stored = 'mrx_mqtt_messages_total{outcome="stored"}'
            try:
                wait_until(lambda: _metric(node.url, stored) == published, 120, "every published event stored")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {_metric(node.url, stored)} of {published} stored\n"
                                     f"{node.stderr()[-3000:]}\n{broker_log.read_text()[-3000:]}") from None
            assert _metric(node.url, 'mrx_mqtt_messages_total{outcome="refused"}') == 0
    finally:
        broker.terminate()
        broker.wait(10)


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _metric(url: str, sample: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
    return 0.0
