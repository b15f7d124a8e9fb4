"""A schema-driven fuzzer (schemathesis) finds no response that contradicts /openapi.json.

schemathesis generates requests from the document the node serves, sends
them to a real node process, and checks every response: no 5xx, a documented
status code, content type and body schema, an ``Allow`` header on 405, and no
schema-violating request accepted.

Two things are left out, each for a reason:
- ``positive_data_acceptance``: it expects every schema-valid request to be
  accepted, but check digits (ISO 6346, UIC, CIM) and opaque cursors cannot be
  expressed in JSON Schema, so a schema-valid container number is still
  refused one time in ten. The refusal is a documented 422/400.
- ``POST /v1/verify``: its body is a compact JWS (``application/jose``), which
  schemathesis cannot generate; ``test_verify_http.py`` covers it.

The CLI is used because the pytest plugin does not support pytest 9 yet.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nodeproc import NodeDir, NodeProcess

SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize(
    ("credential", "scope"),
    [("GW-1", ["--include-path", "/v1/seal-events"]),
     ("NCS", ["--exclude-path", "/v1/seal-events", "--exclude-path", "/v1/verify"])],
    ids=["gateway", "national"],
)
def test_api_conforms_to_its_document(
    node: NodeProcess, node_dir: NodeDir, credential: str, scope: list[str], tmp_path: Path
) -> None:
    assert SCHEMATHESIS, "schemathesis is a test dependency: pip install '.[test]'"
    done = subprocess.run(
        [
            SCHEMATHESIS, "run", node.url + "/openapi.json",
            "-H", f"Authorization: Bearer {node_dir.tokens[credential]}",
            "--checks", "all", "--exclude-checks", "positive_data_acceptance",
            "--max-examples", "25", "--seed", "20261122", "--no-color", *scope,
        ],
        capture_output=True, text=True, timeout=300,
        cwd=tmp_path,  # schemathesis keeps a cache in its working directory
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
