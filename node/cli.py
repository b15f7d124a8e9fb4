"""The ``mrx`` command.

Every subcommand that works on a node takes ``--config FILE`` (default: the
``MRX_CONFIG`` environment variable, else ``./mrx-data/mrx.toml``). Commands
that change a node's database (``gateway add``, ``client add``) work whether
or not the node is running: SQLite in WAL mode lets them write beside it.

Exit codes: 0 success, 1 the operation failed (the message says why),
2 the command line was wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from uuid import UUID

from mrx.keys.keyring import KeyStore, KeyStoreError
from mrx.keys import notes
from mrx.keys.notes import Checkpoint, NoteError, NoteSigner, VerifierKey

from . import auditlog, evidence
from .storage.sqlite_audit import AuditQuery

from .access import new_credential
from .config import CONFIG_NAME, DEFAULT_HOST, DEFAULT_PORT, ConfigError, NodeConfig, load_config, write_new_config
from .server import configure_logging, default_node_dir, run_event_loop, serve
from .storage import Delivery
from .storage.sqlite import SchemaTooNew, SqliteStore

DEFAULT_NODE_ID = "CN-CQI"
DEFAULT_OFFICE = "CNCQI"


class CommandError(Exception):
    """A failure to report in one sentence, exit code 1."""


def _config_path(args: argparse.Namespace) -> Path:
    if args.config:
        return Path(args.config)
    if env := os.environ.get("MRX_CONFIG"):
        return Path(env)
    return default_node_dir() / CONFIG_NAME


def _load(args: argparse.Namespace) -> NodeConfig:
    return load_config(_config_path(args))


def init_node(directory: Path, node_id: str, office: str, port: int, host: str = DEFAULT_HOST) -> NodeConfig:
    """Create a node: config, key store, database. Refuses an existing node."""
    if (directory / CONFIG_NAME).exists():
        raise CommandError(f"{directory / CONFIG_NAME} exists: a node is already initialised there")
    config_path = write_new_config(directory, node_id, office, port, host)
    config = load_config(config_path)
    KeyStore.create(config.keys_path).note_key()  # the audit log's key too: partners need it before the first start
    config.data_path.mkdir(parents=True, exist_ok=True)

    async def create_database() -> None:
        store = await SqliteStore.open(config.database_path)
        await store.close()

    asyncio.run(create_database())
    return config


def cmd_init(args: argparse.Namespace) -> int:
    config = init_node(Path(args.dir), args.node_id, args.office, args.port, args.host)
    key = KeyStore.open(config.keys_path).signing_key
    print(f"initialised node {config.node_id} ({config.office}) in {Path(args.dir).resolve()}")
    print(f"  config:  {Path(args.dir).resolve() / CONFIG_NAME}")
    print(f"  key:     {key.kid} ({key.alg})")
    print(f"  start:   mrx serve --config {Path(args.dir) / CONFIG_NAME}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    path = _config_path(args)
    if not args.config and not os.environ.get("MRX_CONFIG") and not path.exists():
        directory = path.parent
        print(f"mrx: no node in {directory}; creating a default one ({DEFAULT_NODE_ID}, {DEFAULT_OFFICE})", flush=True)
        init_node(directory, DEFAULT_NODE_ID, DEFAULT_OFFICE, DEFAULT_PORT)
    config = load_config(path)
    if args.port is not None:
        config = config.model_copy(update={"port": args.port})
    configure_logging(config.log_level)
    try:
        run_event_loop(serve(config))
    except OSError as exc:
        raise CommandError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    config = _load(args)
    store = KeyStore.open(config.keys_path)
    if args.keys_command == "list":
        for key in store.keys():
            until = key.valid_to.isoformat() if key.valid_to else "-"
            revoked = f" revoked {key.revoked_at.isoformat()}" if key.revoked_at else ""
            print(f"{key.kid}  {key.alg:6} {key.status:8} from {key.valid_from.isoformat()} to {until}{revoked}")
    elif args.keys_command == "rotate":
        key = store.rotate(alg=args.alg, new_anchor=args.new_anchor)
        print(f"new signing key {key.kid} ({key.alg}); a running node switches to it within seconds")
    elif args.keys_command == "revoke":
        key = store.revoke(args.kid)
        print(f"revoked {key.kid} at {key.revoked_at.isoformat() if key.revoked_at else '?'}")
    elif args.keys_command == "jwks":
        print(json.dumps(store.jwks(), indent=2))
    return 0


async def _add_credential(config: NodeConfig, name: str, role: str, patterns: tuple[str, ...]) -> str:
    credential, token = new_credential(name, role, patterns)
    store = await SqliteStore.open(config.database_path)
    try:
        await store.add_credential(credential)
    finally:
        await store.close()
    return token


def cmd_gateway_add(args: argparse.Namespace) -> int:
    config = _load(args)
    patterns = tuple(p.strip() for arg in args.locks for p in arg.split(",") if p.strip())
    token = _credential_or_error(config, args.gateway_id, "gateway", patterns)
    print(f"gateway {args.gateway_id} may report for locks matching: {', '.join(patterns)}", file=sys.stderr)
    _print_token(token)
    return 0


def cmd_client_add(args: argparse.Namespace) -> int:
    config = _load(args)
    token = _credential_or_error(config, args.name, args.role, ())
    print(f"{args.role} client {args.name} added", file=sys.stderr)
    _print_token(token)
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.partner is not None and config.partner(args.partner) is None:
        raise CommandError(f"{args.partner} is not a partner in {_config_path(args)}")

    async def run() -> int:
        store = await SqliteStore.open(config.database_path)
        try:
            if args.outbox_command == "list":
                state = Delivery(args.state) if args.state else None
                for item in await store.outbox(args.partner, state, 0, args.limit):
                    print(
                        f"{item.outbox_id}\t{item.partner}\t{item.state.value}\t{item.attempts}\t"
                        f"{item.message_type}\t{item.message_id}\t{item.last_error or ''}"
                    )
                return 0
            messages = [UUID(m) for m in args.message] if args.message else None
            requeued = await store.retry_outbox(args.partner, messages)
            print(f"{requeued} failed deliveries to {args.partner} queued again; a running node sends them "
                  "within its sweep interval")
            return 0
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def cmd_log(args: argparse.Namespace) -> int:
    """``mrx log checkpoint`` and ``mrx log export``: on a running node's data or a stopped one's."""
    config = _load(args)
    keys = KeyStore.open(config.keys_path)
    if args.log_command == "key":
        print(NoteSigner(config.log_origin, keys.note_key()).verifier)
        return 0
    out = Path(args.out) if args.log_command == "export" else None
    if out is not None and out.exists() and any(out.iterdir()):
        raise CommandError(f"{out} is not empty; export into a new or empty directory")

    async def run() -> int:
        store = await SqliteStore.open(config.database_path)
        try:
            audit = auditlog.AuditLog.of(config, keys, store)
            size, note = await audit.checkpoint()
            if out is None:
                print(note, end="")
                return 0
            progress = _progress("tiles")
            files = await store.log_read(lambda db: auditlog.export_tiles(db, size, note, out, progress))
            print(f"exported {size} records ({files} files) to {out}; verify with: "
                  f"mrx verify --log {out} --log-key '{audit.verifier}'", file=sys.stderr)
            return 0
        finally:
            await store.close()

    return asyncio.run(run())


def cmd_verify(args: argparse.Namespace) -> int:
    """``mrx verify BUNDLE`` or ``mrx verify --log DIR``: offline, each check's verdict, non-zero on any failure."""
    if (args.bundle is None) == (args.log is None):
        raise CommandError("give an evidence bundle (mrx verify BUNDLE) or a tiles export (mrx verify --log DIR)")
    try:
        log_key = VerifierKey.parse(args.log_key) if args.log_key else None
        witnesses = [_witness_key(k) for k in args.witness_key] if args.witness_key is not None else None
    except NoteError as exc:
        raise CommandError(f"--log-key / --witness-key: {exc}") from None
    if args.log is not None:
        if log_key is None:
            raise CommandError("--log needs --log-key: the log's verifier key, taken from its operator")
        try:
            checkpoint = auditlog.reprove_tiles(Path(args.log), log_key, _progress("tiles"))
        except (NoteError, auditlog.ProofError, LookupError) as exc:
            print(f"FAIL  log {args.log}: {exc}")
            return 1
        print(f"ok    checkpoint signature: {checkpoint.origin}, {checkpoint.size} records, by {log_key.name}")
        print("ok    every entry hashes to its tile, every tile to the one above, the tiles to the checkpoint's root")
        return 0
    anchors: dict[str, list[str]] = {}
    for item in args.anchor or []:
        owner, _, thumbprint = item.partition("=")
        if not owner or not thumbprint:
            raise CommandError(f"--anchor {item!r}: write OWNER=THUMBPRINT, e.g. CN-AKL=Nz1u...")
        anchors.setdefault(owner, []).append(thumbprint)
    try:
        bundle = evidence.load(Path(args.bundle))
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read the bundle {args.bundle}: {exc}") from None
    try:
        held = Path(args.since).read_text() if args.since else None
    except OSError as exc:
        raise CommandError(f"cannot read --since {args.since}: {exc.strerror}") from None
    verdicts = evidence.verify(bundle, log_key=log_key, witness_keys=witnesses, anchors=anchors, held=held,
                               progress=_progress("records"))
    for v in verdicts:
        if not v.ok or not args.failures_only:
            print(f"{'ok  ' if v.ok else 'FAIL'}  {v.subject}: {v.check}: {v.detail}")
    failed = sum(1 for v in verdicts if not v.ok)
    records = len({v.subject for v in verdicts if v.check == "inclusion"})
    print(f"{records} records, {len(verdicts)} checks, {failed} failed")
    return 1 if failed else 0


def _witness_key(text: str) -> VerifierKey:
    """A witness's cosigning key (type 0x04), also from its node's log key as `mrx log key` prints it (type 0x01).

    An mrx node witnesses with its log key, so the key its operator hands over names its cosignatures too."""
    key = VerifierKey.parse(text)
    return key.cosigning() if key.kind == notes.ED25519 else key


def cmd_evidence(args: argparse.Namespace) -> int:
    """``mrx evidence``: an evidence bundle for a record or a container, from a running or stopped node."""
    config = _load(args)
    keys = KeyStore.open(config.keys_path)
    query = AuditQuery(message_id=args.record, container=args.container)
    since = None
    if args.since:
        try:
            since = Checkpoint.from_text(notes.parse(Path(args.since).read_text()).text).size
        except (OSError, NoteError) as exc:
            raise CommandError(f"--since {args.since}: {exc}") from None

    async def run() -> tuple[dict | None, VerifierKey]:
        store = await SqliteStore.open(config.database_path)
        try:
            audit = auditlog.AuditLog.of(config, keys, store)
            return await audit.evidence(query, keys.statements(), since), audit.verifier
        finally:
            await store.close()

    try:
        bundle, log_key = asyncio.run(run())
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if bundle is None:
        raise CommandError(f"this node's log holds no record for {args.record or args.container}")
    Path(args.out).write_text(json.dumps(bundle, indent=1) + "\n")
    print(f"wrote {len(bundle['records'])} records to {args.out}; check it with: mrx verify {args.out} "
          f"--log-key '{log_key}'", file=sys.stderr)
    return 0


def _progress(what: str) -> auditlog.Progress | None:
    """A one-line progress bar on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        end = "\n" if done >= total else ""
        print(f"\r  {what} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end, file=sys.stderr, flush=True)

    return show


def _credential_or_error(config: NodeConfig, name: str, role: str, patterns: tuple[str, ...]) -> str:
    try:
        return asyncio.run(_add_credential(config, name, role, patterns))
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _print_token(token: str) -> None:
    # Only the token goes to stdout, so that `GW=$(mrx gateway add ...)` works.
    print("credential (shown once; the node keeps only its hash):", file=sys.stderr)
    print(token)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrx", description="mrx mutual-recognition exchange node")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", help=f"node config file (default: $MRX_CONFIG or ./mrx-data/{CONFIG_NAME})")
        return p

    p = sub.add_parser("init", help="create a node: config, signing key, database")
    p.add_argument("--node-id", required=True, help="this node's ID, e.g. CN-AKL")
    p.add_argument("--office", required=True, help="UN/LOCODE of the customs office, e.g. CNAKL")
    p.add_argument("--dir", required=True, help="directory to create the node in")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"listen address (default {DEFAULT_HOST}: this host only; 0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT}; 0: any)")
    p.set_defaults(func=cmd_init)

    p = with_config(sub.add_parser("serve", help="run the node (a default one in ./mrx-data if none is given)"))
    p.add_argument("--port", type=int, help="listen on this port instead of the config's (0: any free port)")
    p.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="signing keys: list, rotate, revoke, jwks")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    with_config(keys_sub.add_parser("list", help="list keys with their validity and status"))
    p = with_config(keys_sub.add_parser("rotate", help="make a new signing key; old records still verify"))
    p.add_argument("--alg", choices=("EdDSA", "ES256"), default="EdDSA")
    p.add_argument(
        "--new-anchor", action="store_true",
        help="start a new key chain after the active key was revoked; partners need the new kid out of band",
    )
    p = with_config(keys_sub.add_parser("revoke", help="revoke a key from now on"))
    p.add_argument("kid")
    with_config(keys_sub.add_parser("jwks", help="print the public JWKS"))
    keys.set_defaults(func=cmd_keys)

    gateway = sub.add_parser("gateway", help="lock gateways")
    gateway_sub = gateway.add_subparsers(dest="gateway_command", required=True, metavar="ACTION")
    p = with_config(gateway_sub.add_parser("add", help="add a gateway; prints its credential once"))
    p.add_argument("gateway_id", metavar="GATEWAY_ID")
    p.add_argument(
        "--locks", action="append", required=True, metavar="PATTERN",
        help="lock IDs it may report for (glob, e.g. 'LK-CQ-*'); repeat or comma-separate",
    )
    p.set_defaults(func=cmd_gateway_add)

    client = sub.add_parser("client", help="national-system and auditor clients")
    client_sub = client.add_subparsers(dest="client_command", required=True, metavar="ACTION")
    p = with_config(client_sub.add_parser("add", help="add a client; prints its credential once"))
    p.add_argument("name")
    p.add_argument("--role", choices=("national", "auditor"), required=True)
    p.set_defaults(func=cmd_client_add)

    outbox = sub.add_parser("outbox", help="deliveries to partner nodes: list, retry")
    outbox_sub = outbox.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    p = with_config(outbox_sub.add_parser("list", help="list deliveries, oldest first (tab-separated)"))
    p.add_argument("--partner", help="only this partner's")
    p.add_argument("--state", choices=[d.value for d in Delivery], help="only in this state")
    p.add_argument("--limit", type=int, default=100)
    p = with_config(outbox_sub.add_parser("retry", help="queue a partner's failed deliveries again"))
    p.add_argument("partner", metavar="PARTNER")
    p.add_argument("--message", action="append", metavar="MESSAGE_ID", help="only this record; repeatable")
    outbox.set_defaults(func=cmd_outbox)

    audit = sub.add_parser("log", help="the audit log: key, checkpoint, export (docs/audit.md)")
    audit_sub = audit.add_subparsers(dest="log_command", required=True, metavar="ACTION")
    with_config(audit_sub.add_parser("key", help="print the log's note verifier key, for partners' log_key and auditors"))
    with_config(audit_sub.add_parser("checkpoint", help="print the latest signed checkpoint (signing one if the log grew)"))
    p = with_config(audit_sub.add_parser("export", help="write the log in C2SP tlog-tiles layout"))
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    audit.set_defaults(func=cmd_log)

    p = with_config(sub.add_parser("evidence", help="write an evidence bundle for a record or a container"))
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--record", metavar="MESSAGE_ID", help="one record (with the receipts that answer it)")
    which.add_argument("--container", metavar="NUMBER", help="every record that speaks of this container")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--since", metavar="CHECKPOINT", help="a checkpoint the auditor holds: add a consistency proof")
    p.set_defaults(func=cmd_evidence)

    p = sub.add_parser("verify", help="verify offline an evidence bundle or a tiles export (docs/audit.md)")
    p.add_argument("bundle", nargs="?", metavar="BUNDLE", help="an evidence bundle (mrx evidence)")
    p.add_argument("--log", metavar="DIR", help="a tiles export (mrx log export) instead")
    p.add_argument("--log-key", metavar="VKEY",
                   help="the log's note verifier key (name+id+key), taken from its operator; default: the bundle's")
    p.add_argument("--witness-key", action="append", metavar="VKEY",
                   help="a witness that must have cosigned: its node's log key (mrx log key) or its cosigning key; "
                        "repeatable; default: the bundle's")
    p.add_argument("--anchor", action="append", metavar="OWNER=THUMBPRINT",
                   help="a signer's key anchor (RFC 7638 thumbprint); default: its first statement")
    p.add_argument("--since", metavar="CHECKPOINT", help="a checkpoint you hold: the bundle's must extend it")
    p.add_argument("--failures-only", action="store_true", help="print only the checks that failed")
    p.set_defaults(func=cmd_verify)

    def _simulate(args: argparse.Namespace) -> int:
        from mrx.adapters import simulator  # imported here: only this command needs it (and paho-mqtt)

        return simulator.command(args)

    p = sub.add_parser("simulate", help="play simulated lock gateways' corridor journeys to a node (HTTP or MQTT)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="the node's base URL, e.g. http://127.0.0.1:8470")
    where.add_argument("--mqtt", metavar="HOST:PORT", help="publish to this MQTT broker instead")
    where.add_argument("--out", metavar="FILE", help="write the events as JSON lines, in send order, and send nothing")
    p.add_argument("--gateway", metavar="ID", help="gateway ID (MQTT topic); default: the credential's")
    p.add_argument("--token-file", metavar="FILE", help="file holding the credential `mrx gateway add` printed")
    p.add_argument("--mqtt-username")
    p.add_argument("--mqtt-password-file", metavar="FILE")
    p.add_argument("--topic-prefix", default="mrx", help="MQTT topic prefix (default mrx)")
    p.add_argument("--containers", type=int, default=10, metavar="N", help="containers, 41 to a train (default 10)")
    p.add_argument("--seed", type=int, default=1, help="the same seed and start give the same events (default 1)")
    p.add_argument("--start", help="first train's departure, RFC 3339 or 'now' (default 2026-11-22T00:00:00Z)")
    p.add_argument("--speed", type=float, default=0.0, help="journey time per real time: 1 live, 0 (default) at once")
    p.add_argument("--concurrency", type=int, default=8, help="deliveries in flight, one per lock (default 8)")
    p.set_defaults(func=_simulate)

    def _demo(args: argparse.Namespace) -> int:
        from . import demo  # imported here: it brings the simulator (and paho-mqtt)

        return demo.run(args)

    p = sub.add_parser("demo", help="a working day on the corridor: four nodes, gateways, national systems, an auditor")
    p.add_argument("--keep", metavar="DIR", help="keep the nodes' directories here (a new or empty directory)")
    p.add_argument("--containers", type=int, default=30, metavar="N", help="containers on the day (default 30)")
    p.add_argument("--seed", type=int, default=2026, help="the same seed gives the same day (default 2026)")
    p.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CommandError, ConfigError, KeyStoreError, SchemaTooNew) as exc:
        print(f"mrx: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
