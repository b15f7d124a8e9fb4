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
