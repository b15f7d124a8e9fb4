"""The `mrx` command as an operator uses it: separate processes, real files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mrx.node.config import ConfigError, load_config


def mrx(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mrx.node.cli", *args],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=60,
    )


def test_init_creates_a_node_and_refuses_to_overwrite_it(tmp_path: Path) -> None:
    done = mrx("init", "--node-id", "KZ-DOS", "--office", "KZDOS", "--dir", str(tmp_path / "n"), "--port", "9001")
    assert done.returncode == 0, done.stderr
    config = load_config(tmp_path / "n" / "mrx.toml")
    assert (config.node_id, config.office, config.port) == ("KZ-DOS", "KZDOS", 9001)
    keys = list(config.keys_path.glob("*.pem"))
    assert len(keys) == 1 and stat.S_IMODE(keys[0].stat().st_mode) == 0o600
    assert config.database_path.exists()
    before = (tmp_path / "n" / "mrx.toml").read_bytes(), keys[0].read_bytes()

    again = mrx("init", "--node-id", "KZ-ALA", "--office", "KZALA", "--dir", str(tmp_path / "n"))
    assert again.returncode == 1 and "already initialised" in again.stderr
    assert ((tmp_path / "n" / "mrx.toml").read_bytes(), keys[0].read_bytes()) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--node-id", "cn-akl", "--office", "CNAKL"], "node_id"),
        (["--node-id", "CN-AKL", "--office", "CN1KL"], "office"),
    ],
)
def test_init_refuses_bad_identities(tmp_path: Path, args: list[str], message: str) -> None:
    done = mrx("init", *args, "--dir", str(tmp_path / "n"))
    assert done.returncode != 0 and message in done.stderr
    assert not (tmp_path / "n" / "mrx.toml").exists()


def test_gateway_add_prints_the_credential_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    mrx("init", "--node-id", "CN-AKL", "--office", "CNAKL", "--dir", str(tmp_path))
    done = mrx("gateway", "add", "GW-AKL-01", "--locks", "LK-AKL-*", "--locks", "LK-CQ-1,LK-CQ-2",
               "--config", str(tmp_path / "mrx.toml"))
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("GW-AKL-01.") and len(token) > 40 and "\n" not in token
    with sqlite3.connect(tmp_path / "data" / "mrx.sqlite3") as db:
        row = db.execute("SELECT lock_patterns, secret_hash FROM credentials WHERE name = 'GW-AKL-01'").fetchone()
    assert row[0].split("\n") == ["LK-AKL-*", "LK-CQ-1", "LK-CQ-2"]
    assert token.split(".", 1)[1].encode() not in row[1]

    again = mrx("gateway", "add", "GW-AKL-01", "--locks", "X", "--config", str(tmp_path / "mrx.toml"))
    assert again.returncode == 1 and "exists already" in again.stderr


def test_keys_list_rotate_jwks(tmp_path: Path) -> None:
    mrx("init", "--node-id", "CN-AKL", "--office", "CNAKL", "--dir", str(tmp_path))
    cfg = ["--config", str(tmp_path / "mrx.toml")]
    first = json.loads(mrx("keys", "jwks", *cfg).stdout)["keys"]
    assert len(first) == 1 and first[0]["status"] == "active" and "d" not in first[0]
    rotated = mrx("keys", "rotate", *cfg)
    assert rotated.returncode == 0, rotated.stderr
    keys = json.loads(mrx("keys", "jwks", *cfg).stdout)["keys"]
    by_status = {k["status"]: k for k in keys}
    assert set(by_status) == {"active", "retired"}
    assert by_status["retired"]["kid"] == first[0]["kid"]
    assert by_status["retired"]["valid_to"] == by_status["active"]["valid_from"]
    listing = mrx("keys", "list", *cfg).stdout
    assert first[0]["kid"] in listing and "retired" in listing


def test_config_errors_name_the_key_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "mrx.toml"
    path.write_text('node_id = "CN-AKL"\noffice = "CNAKL"\nprot = 8470\n[limits]\nmax_body_bytes = "big"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "prot: unknown key" in text and "limits.max_body_bytes" in text
    path.write_text("node_id = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="mrx init"):
        load_config(tmp_path / "missing.toml")
    done = mrx("serve", "--config", str(path))
    assert done.returncode == 1 and "not valid TOML" in done.stderr


_PARTNER = (
    '[[partners]]\nnode_id = "CN-AKL"\nurl = "http://127.0.0.1:9"\nanchors = ["' + "A" * 43 + '"]\n'
    'offices = ["CNAKL"]\n'
)


@pytest.mark.parametrize(
    ("agreement", "expected"),
    [
        ('id = "A-1"\npartner = "CN-AKL"\ncontrol_types = ["physical"]\nresult_codes = ["A1"]\nmax_age = 3\n',
         "agreements.0.max_age: unknown key"),
        ('id = "A-1"\npartner = "CN-AKL"\ncontrol_types = ["x-ray"]\nresult_codes = ["A1"]\n',
         "agreements.0.control_types.0"),
        ('id = "A-1"\npartner = "CN-AKL"\ncontrol_types = ["physical"]\nresult_codes = ["C9"]\n',
         "agreements.0.result_codes.0"),
        ('id = "A-1"\npartner = "MN-ZAM"\ncontrol_types = ["physical"]\nresult_codes = ["A1"]\n',
         "agreement A-1 is with MN-ZAM, which is not a listed partner"),
        ('id = "A-1"\npartner = "CN-AKL"\nresult_codes = ["A1"]\n', "agreements.0.control_types"),
    ],
    ids=["unknown term", "unknown control type", "unknown result code", "not a partner", "term missing"],
)
def test_agreement_terms_are_checked_never_ignored(tmp_path: Path, agreement: str, expected: str) -> None:
    path = tmp_path / "mrx.toml"
    path.write_text('node_id = "KZ-DOS"\noffice = "KZDOS"\n' + _PARTNER + "[[agreements]]\n" + agreement)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert expected in str(err.value)


def test_a_valid_agreement_loads_as_a_policy(tmp_path: Path) -> None:
    from mrx.node.deciding import agreements_of

    path = tmp_path / "mrx.toml"
    path.write_text(
        'node_id = "KZ-DOS"\noffice = "KZDOS"\n' + _PARTNER + '[[agreements]]\nid = "KZ-CN-1"\npartner = "CN-AKL"\n'
        'control_types = ["physical", "non-intrusive"]\nresult_codes = ["A1", "A2"]\nmax_age_hours = 72\n'
        'unseal_offices = ["KZDOS"]\n'
    )
    (terms,) = agreements_of(load_config(path)).values()
    assert terms.agreement_id == "KZ-CN-1" and terms.unseal_offices == {"KZDOS"}


def test_serve_refuses_a_node_without_keys(tmp_path: Path) -> None:
    (tmp_path / "mrx.toml").write_text('node_id = "CN-AKL"\noffice = "CNAKL"\nport = 0\n')
    done = mrx("serve", "--config", str(tmp_path / "mrx.toml"))
    assert done.returncode == 1
    assert "key" in done.stderr and "Traceback" not in done.stderr


def test_serve_without_config_creates_a_default_node_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MRX_CONFIG"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mrx.node.cli", "serve", "--port", "0"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert "creating a default one" in proc.stdout.readline()
        listening = proc.stdout.readline()
        assert "listening on http://" in listening, proc.stderr.read() if proc.stderr else ""
        url = listening.rsplit(" ", 1)[1].strip()
        with urllib.request.urlopen(url + "/readyz", timeout=10) as resp:
            assert json.loads(resp.read())["node_id"] == "CN-CQI"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    config = load_config(tmp_path / "mrx-data" / "mrx.toml")
    assert (config.node_id, config.office, config.port) == ("CN-CQI", "CNCQI", 8470)


def test_init_writes_the_listen_address_it_is_given(tmp_path: Path) -> None:
    done = mrx("init", "--node-id", "KZ-DOS", "--office", "KZDOS", "--dir", str(tmp_path / "c"), "--host", "0.0.0.0")
    assert done.returncode == 0, done.stderr
    assert load_config(tmp_path / "c" / "mrx.toml").host == "0.0.0.0"
    mrx("init", "--node-id", "KZ-DOS", "--office", "KZDOS", "--dir", str(tmp_path / "d"))
    assert load_config(tmp_path / "d" / "mrx.toml").host == "127.0.0.1"  # the default: this host only


def test_every_command_refuses_a_database_a_newer_mrx_migrated_and_leaves_it_as_it_was(tmp_path: Path) -> None:
    mrx("init", "--node-id", "CN-AKL", "--office", "CNAKL", "--dir", str(tmp_path), "--port", "0")
    database = tmp_path / "data" / "mrx.sqlite3"
    db = sqlite3.connect(database)
    (latest,) = db.execute("PRAGMA user_version").fetchone()
    db.execute(f"PRAGMA user_version = {latest + 1}")
    db.close()  # the last connection: its WAL is checkpointed into the file
    before = database.read_bytes()
    cfg = ["--config", str(tmp_path / "mrx.toml")]
    for command in (["serve", *cfg], ["gateway", "add", "GW-1", "--locks", "LK-*", *cfg], ["outbox", "list", *cfg],
                    ["log", "checkpoint", *cfg]):
        done = mrx(*command)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert f"schema version {latest + 1}" in done.stderr and f"up to {latest}" in done.stderr, done.stderr
        assert "restore the database backup taken before the upgrade" in done.stderr and "Traceback" not in done.stderr
        assert database.read_bytes() == before, command


def _cosigned_bundle(directory: Path) -> tuple[Path, str, str]:
    """An evidence bundle of one CN-AKL record whose checkpoint KZ-DOS cosigned; CN-AKL's and KZ-DOS's log keys."""
    import asyncio
    from datetime import datetime, timezone

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mrx.keys import notes
    from mrx.keys.keyring import KeyStore
    from mrx.node import auditlog, evidence
    from mrx.node.inputs import SealEventIn
    from mrx.node.records import RecordSigner
    from mrx.node.storage.sqlite import SqliteStore
    from mrx.node.storage.sqlite_rows import insert_records
    from tests import factories

    keys = KeyStore.create(directory / "keys")
    record = RecordSigner("CN-AKL", lambda: keys.signing_key).sign(
        SealEventIn.model_validate(factories.seal_event(seq=1)).to_domain("GW-1", datetime.now(timezone.utc))
    )

    async def store() -> None:
        s = await SqliteStore.open(directory / "mrx.sqlite3")
        await s.log_write(lambda db: insert_records(db, [record], "2026-11-22T00:00:00Z", deliver=False))
        await s.close()

    asyncio.run(store())
    log = notes.NoteSigner("mrx/CN-AKL", Ed25519PrivateKey.generate())
    dos_key = Ed25519PrivateKey.generate()
    witness = notes.NoteSigner("mrx/KZ-DOS", dos_key, notes.COSIGNATURE_V1)
    with sqlite3.connect(directory / "mrx.sqlite3") as db:
        head = auditlog.tree_head(db)
        checkpoint = notes.sign_checkpoint(notes.Checkpoint(log.name, head.size, head.root), log)
        cosigned = checkpoint.with_lines([witness.cosign(checkpoint.text, 1_795_000_000)])
        bundle = evidence.build(db, node_id="CN-AKL", log_key=log.verifier, witness_keys=[],
                                checkpoint=(head.size, str(cosigned)), key_statements={"CN-AKL": keys.statements()},
                                message_ids=[str(record.message_id)])
    path = directory / "bundle.json"
    path.write_text(json.dumps(bundle))
    return path, str(log.verifier), str(notes.NoteSigner("mrx/KZ-DOS", dos_key).verifier)


def test_verify_takes_a_witness_key_as_its_operator_gives_it(tmp_path: Path) -> None:
    from mrx.keys.notes import VerifierKey

    bundle, log_key, dos_log_key = _cosigned_bundle(tmp_path)
    assert VerifierKey.parse(dos_log_key).kind == 0x01  # what `mrx log key` prints on KZ-DOS
    for given in (dos_log_key, str(VerifierKey.parse(dos_log_key).cosigning())):
        done = mrx("verify", str(bundle), "--log-key", log_key, "--witness-key", given)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "ok    mrx/KZ-DOS: cosignature" in done.stdout, done.stdout
    stranger = mrx("log", "key", "--config", str(_node(tmp_path / "stranger")))
    done = mrx("verify", str(bundle), "--log-key", log_key, "--witness-key", stranger.stdout.strip())
    assert done.returncode == 1 and "FAIL" in done.stdout


def _node(directory: Path) -> Path:
    mrx("init", "--node-id", "KZ-ALA", "--office", "KZALA", "--dir", str(directory))
    return directory / "mrx.toml"
