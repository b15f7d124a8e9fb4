"""Node configuration: one TOML file, validated strictly.

A node is a directory holding ``mrx.toml``, its key store and its data. Paths
in the file are relative to the file's directory, so a node directory can be
moved or restored from backup as a whole. Unknown keys are errors, never
ignored: a misspelt limit that silently falls back to a default is how a node
ends up accepting what its operator meant to refuse.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mrx.keys.notes import ED25519, NoteError, VerifierKey
from mrx.schemas.codes import ControlResultCode, ControlType

CONFIG_NAME = "mrx.toml"
DEFAULT_PORT = 8470
DEFAULT_HOST = "127.0.0.1"  # this host only: partners reach the node through a TLS terminator

NodeId = Annotated[str, Field(pattern=r"^[A-Z]{2}-[A-Z0-9]{2,16}$")]
Locode = Annotated[str, Field(pattern=r"^[A-Z]{2}[A-Z2-9]{3}$")]


class ConfigError(Exception):
    """The configuration cannot be used; the message says what to change."""


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    max_batch_events: int = Field(default=500, ge=1, le=10_000)
    # A record's JWS must fit one audit-log entry (65,535 bytes, C2SP tlog-tiles): 48,000 bytes of XML
    # make at most 64,237 bytes of JWS. Real messages are one to three kilobytes.
    max_xml_bytes: int = Field(default=48_000, ge=4096, le=48_000)
    page_size: int = Field(default=100, ge=1, le=1000)


class Storage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # Group commit: the writer takes whatever is queued, up to this many
    # operations, into one transaction.
    max_batch_ops: int = Field(default=2000, ge=1, le=100_000)


class Signing(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # Worker processes that encode, validate and sign records; 0 signs on the
    # event loop. One per spare core: on 2 cores, 1.
    workers: int = Field(default=1, ge=0, le=64)


class Partner(BaseModel):
    """A partner authority's node: who it is, where it listens, which keys to start trusting."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    node_id: NodeId
    url: Annotated[str, Field(pattern=r"^https?://[^/?#\s]+/?$")]  # base URL, no path
    # RFC 7638 thumbprints of the partner's keys, taken out of band (letter, phone).
    anchors: Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{43}$")]], Field(min_length=1)]
    # The customs offices (UN/LOCODE) this partner's node serves: routing sends it
    # the records of consignments whose itinerary passes one of them.
    offices: Annotated[list[Locode], Field(min_length=1)]
    # The partner's audit-log note verifier key (name+keyid+base64), taken out of
    # band like the anchors (``mrx log key`` prints a node's). With it, the two
    # nodes witness each other's logs (docs/audit.md); without it, they do not.
    log_key: str | None = None

    @field_validator("log_key")
    @classmethod
    def _log_key(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                key = VerifierKey.parse(value)
            except NoteError as exc:
                raise ValueError(f"not a note verifier key: {exc}") from None
            if key.kind != ED25519:
                raise ValueError("a log key is a plain Ed25519 note key (type 0x01)")
        return value

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    @property
    def log_verifier(self) -> VerifierKey | None:
        return None if self.log_key is None else VerifierKey.parse(self.log_key)


class Exchange(BaseModel):
    """How this node sends to and receives from its partners (docs/protocol.md)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    batch_size: int = Field(default=200, ge=1, le=1000)  # records per request when there is a backlog
    retry_min_seconds: float = Field(default=0.5, gt=0, le=60)  # first backoff after a failure
    retry_max_seconds: float = Field(default=60.0, ge=1, le=900)  # backoff cap: minutes, never hours
    request_timeout_seconds: float = Field(default=30.0, ge=1, le=300)
    key_refresh_seconds: float = Field(default=300.0, ge=5, le=86_400)  # partners' key statements
    sweep_seconds: float = Field(default=5.0, ge=0.5, le=300)  # outbox retry sweep
    pull_seconds: float = Field(default=300.0, ge=1, le=86_400)  # catch-up pull from partners
    keep_delivered_days: int = Field(default=30, ge=1, le=3650)  # then delivered outbox rows are pruned
    # Which itinerary offices get a record: those after this node's office
    # ("downstream"), or every office on it ("itinerary").
    route_to: str = Field(default="downstream", pattern=r"^(downstream|itinerary)$")


class AgreementTerms(BaseModel):
    """A mutual-recognition agreement with one partner (docs/recognition.md)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9 ./_\-]{0,33}[A-Za-z0-9])?$")]
    partner: NodeId  # the partner whose inspections this agreement recognises
    control_types: Annotated[list[Annotated[ControlType, Field(strict=False)]], Field(min_length=1)]
    result_codes: Annotated[list[Annotated[ControlResultCode, Field(strict=False)]], Field(min_length=1)]
    excluded_hs_prefixes: list[Annotated[str, Field(pattern=r"^[0-9]{2,10}$")]] = []
    max_age_hours: Annotated[float, Field(gt=0, le=8760)] | None = None
    require_intact_chain: bool = True
    # Partner offices whose unseal authorisations count in a seal chain (this node's own always count).
    unseal_offices: list[Locode] = []


class Recognition(BaseModel):
    """How seal chains are judged (docs/recognition.md)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    reporting_period_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60)  # longest silence of a lock in transit
    clock_tolerance_seconds: int = Field(default=300, ge=0, le=3600)  # how far two clocks may disagree


class Log(BaseModel):
    """The audit log (docs/audit.md)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # The log's name in its checkpoints, and its key's name: the URL auditors
    # fetch it from, without the scheme, e.g. "customs.example.kz/mrx/log".
    # Never change it once checkpoints are out. Default: "mrx/<node_id>".
    origin: Annotated[str, Field(pattern=r"^[^\s+]{1,200}$")] | None = None
    checkpoint_seconds: int = Field(default=60, ge=1, le=86_400)  # sign a checkpoint this often if the log grew


class Mqtt(BaseModel):
    """The MQTT lock listener (``[mqtt]``; `mrx.adapters.mqtt`, docs/adapters.md). Absent: no listener.

    Topics, under ``topic_prefix``: gateways publish events to
    ``<prefix>/gateways/<gateway>/events``; the node answers a refused event on
    ``.../problems`` and publishes unseal authorisations on ``.../instructions``.

    ``max_inflight``: the node reads at most this many messages that it has
    not acknowledged yet (it acknowledges after the commit), and no more from
    the broker's connection until some are. Set the broker's own window for
    the node (Mosquitto's ``max_inflight_messages``) at least as large, or the
    broker's is the limit. At most this many messages are between the broker
    and a commit, so the window bounds the rate: the default suits a quiet
    node; a busy one wants about a thousand (docs/operations.md).
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    # Fixed across restarts: the broker keeps the node's persistent session
    # (its subscriptions and the QoS 1 messages not yet acknowledged) under it.
    client_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] | None = None  # default "mrx-<node_id>"
    username: str | None = None
    password_file: str | None = None  # relative to this file; one line, mode 0600
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")] = "mrx"
    keepalive_seconds: int = Field(default=30, ge=5, le=3600)
    max_inflight: int = Field(default=100, ge=1, le=65_535)  # unacknowledged messages the node reads at most


AdapterName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,31}$")]


class AdapterConfig(BaseModel):
    """One ``[[adapters]]`` table: a national-system adapter (docs/adapters.md).

    ``kind`` names the adapter: a shipped one (``webhook``, ``files``,
    ``ncts``), a name another package registers under the ``mrx.adapters``
    entry-point group, or ``"package.module:Class"``. The remaining keys are
    the adapter's own options, which the adapter validates.
    """

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    name: AdapterName  # unique; names its durable delivery cursor, so never rename a live one
    kind: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,200}$")]

    @property
    def options(self) -> dict[str, object]:
        return dict(self.model_extra or {})


class NodeConfig(BaseModel):
    """What ``mrx.toml`` holds. Paths are resolved against ``base_dir``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    node_id: NodeId
    office: Locode
    host: str = DEFAULT_HOST
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)  # 0: any free port
    data_dir: str = "data"
    keys_dir: str = "keys"
    log_level: str = Field(default="info", pattern=r"^(debug|info|warning|error)$")
    limits: Limits = Limits()
    storage: Storage = Storage()
    signing: Signing = Signing()
    exchange: Exchange = Exchange()
    partners: list[Partner] = []
    agreements: list[AgreementTerms] = []
    recognition: Recognition = Recognition()
    log: Log = Log()
    mqtt: Mqtt | None = None
    adapters: list[AdapterConfig] = []

    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _distinct_partners(self) -> NodeConfig:
        seen: set[str] = set()
        for partner in self.partners:
            if partner.node_id == self.node_id:
                raise ValueError(f"partner {partner.node_id} is this node itself; list only other nodes")
            if partner.node_id in seen:
                raise ValueError(f"partner {partner.node_id} is listed twice")
            seen.add(partner.node_id)
        agreed: set[str] = set()
        for terms in self.agreements:
            if terms.partner not in seen:
                raise ValueError(f"agreement {terms.id} is with {terms.partner}, which is not a listed partner")
            if terms.partner in agreed:
                raise ValueError(f"there are two agreements with {terms.partner}; one partner has one agreement")
            agreed.add(terms.partner)
        names = [a.name for a in self.adapters]
        if len(names) != len(set(names)):
            raise ValueError(f"two [[adapters]] share a name ({sorted(n for n in names if names.count(n) > 1)[0]}); "
                             "each adapter's name is its own")
        return self

    def partner(self, node_id: str) -> Partner | None:
        return next((p for p in self.partners if p.node_id == node_id), None)

    @property
    def data_path(self) -> Path:
        return (self.base_dir / self.data_dir).resolve()

    @property
    def keys_path(self) -> Path:
        return (self.base_dir / self.keys_dir).resolve()

    @property
    def log_origin(self) -> str:
        return self.log.origin or f"mrx/{self.node_id}"

    @property
    def mqtt_client_id(self) -> str:
        return (self.mqtt.client_id if self.mqtt and self.mqtt.client_id else None) or f"mrx-{self.node_id}"

    @property
    def database_path(self) -> Path:
        return self.data_path / "mrx.sqlite3"


def load_config(path: Path) -> NodeConfig:
    """Read and validate a node's config file; raise `ConfigError` with a fix."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path}; create a node with `mrx init`") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    if "base_dir" in data:
        raise ConfigError(f"{path}: 'base_dir' is not a config key; paths are relative to the file")
    try:
        return NodeConfig.model_validate({**data, "base_dir": path.parent.resolve()})
    except ValidationError as exc:
        raise ConfigError(f"{path} is not a valid mrx config:\n{_explain(exc)}") from None


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(file)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key; remove it or check its spelling")
        else:
            lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def render_config(node_id: str, office: str, port: int, host: str = DEFAULT_HOST) -> str:
    """The text of a new node's ``mrx.toml``, commented for its operator."""
    return f"""\
# mrx node configuration. Paths are relative to this file.
# Every key is documented in docs/operations.md; unknown keys are errors.

node_id = "{node_id}"      # this node's ID in message headers (CC-XXX)
office = "{office}"        # UN/LOCODE of the customs office this node serves
host = {json.dumps(host)}  # listen address (mrx init --host); partners come through a TLS terminator
port = {port}
data_dir = "data"          # SQLite database
keys_dir = "keys"          # signing keys (private keys are mode 0600)
log_level = "info"

[limits]
max_body_bytes = 1048576   # largest request body, after decompression
max_batch_events = 500     # most seal events in one POST
max_xml_bytes = 48000      # largest XML message accepted (at most 48000: a record must fit a log entry)
page_size = 100            # default page of timelines

[storage]
max_batch_ops = 2000       # most writes grouped into one commit

[signing]
workers = 1                # processes that encode and sign records (0: on the event loop)

[exchange]
route_to = "downstream"    # itinerary offices that get records: "downstream" of this office, or "itinerary"
batch_size = 200           # records per request to a partner when there is a backlog
retry_max_seconds = 60     # backoff cap after failures to reach a partner

[recognition]
reporting_period_minutes = 60  # longest a lock in transit may stay silent before its chain is UNKNOWN
clock_tolerance_seconds = 300  # how far a lock's clock may disagree with its gateway's

[log]
# origin = "customs.example.cn/mrx/log"  # the log's name in checkpoints; default "mrx/<node_id>"; never change it
checkpoint_seconds = 60    # sign a checkpoint this often when the log has grown

# Partner nodes, one [[partners]] table each (docs/protocol.md):
# [[partners]]
# node_id = "KZ-DOS"
# url = "https://mrx.dostyk.example"
# anchors = ["<RFC 7638 thumbprint of the partner's key, confirmed out of band>"]
# offices = ["KZDOS"]
# log_key = "<the partner's audit-log key, name+keyid+base64 (mrx log key): the nodes witness each other>"
#
# Mutual-recognition agreements, one per partner (docs/recognition.md):
# [[agreements]]
# id = "CN-KZ-2026"
# partner = "KZ-DOS"
# control_types = ["physical", "non-intrusive"]
# result_codes = ["A1", "A2"]
# excluded_hs_prefixes = ["93"]
# max_age_hours = 72
# require_intact_chain = true
# unseal_offices = ["KZDOS"]
"""


def write_new_config(directory: Path, node_id: str, office: str, port: int, host: str = DEFAULT_HOST) -> Path:
    """Write ``mrx.toml`` in ``directory``; refuse to overwrite an existing one."""
    NodeConfig.model_validate({"node_id": node_id, "office": office, "host": host, "port": port})
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONFIG_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise ConfigError(f"{path} exists: a node is already initialised in {directory}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(render_config(node_id, office, port, host))
    return path
