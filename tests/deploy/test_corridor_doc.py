"""docs/corridor.md works: every shell block after the install, run in order in one shell.

The page promises a newcomer that its steps, in order, give a two-node
corridor: a record delivered with a receipt, a recognition decision, a
cosigned checkpoint and an evidence bundle that ``mrx verify`` accepts. This
test is that newcomer: it runs the page's ``sh`` blocks (all but the install,
which the test environment has done) with bash in a new directory, with the
page's ports swapped for free ones, and fails if any step fails.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.corridor import free_port
from tests.deploy.conftest import REPO

PAGE = REPO / "docs" / "corridor.md"
PORTS = ("8471", "8472")  # the page's ports
TIMEOUT = 300


def shell_blocks(page: str) -> list[str]:
    """The page's ``sh`` blocks, in order, leaving out the install section's."""
    blocks = []
    for section in re.split(r"^## ", page, flags=re.MULTILINE)[1:]:
        if section.startswith("1. Install"):
            continue
        blocks += re.findall(r"^```sh\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)
    return blocks


@pytest.mark.slow
def test_the_corridor_walkthrough_runs_as_written(tmp_path: Path, operator_env: dict[str, str]) -> None:
    missing = [tool for tool in ("bash", "curl", "jq") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"docs/corridor.md needs {', '.join(missing)}, which this machine lacks")
    blocks = shell_blocks(PAGE.read_text())
    assert len(blocks) >= 10, "the page lost its steps"
    script = "\n".join(blocks)
    for port in PORTS:
        assert port in script
        script = script.replace(port, str(free_port()))
    prologue = "set -euo pipefail\ntrap 'kill ${AKL_PID:-} ${DOS_PID:-} 2>/dev/null || true' EXIT\n"
    run = subprocess.Popen(
        ["bash", "-c", prologue + script], cwd=tmp_path, env={**operator_env, "HOME": str(tmp_path)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        output, _ = run.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)  # the shell and the two nodes it started
        output, _ = run.communicate()
        pytest.fail(f"docs/corridor.md did not finish within {TIMEOUT}s:\n{output}")
    logs = "".join(f"\n--- {log.name}\n{log.read_text()}" for log in sorted(tmp_path.glob("corridor/*.log")))
    assert run.returncode == 0, output + logs

    # What the page says the steps show.
    assert '{"offices":["CNAKL","KZDOS"],"recipients":["KZ-DOS"]}' in output
    assert '"state":"delivered"' in output and "<StatusCode>ACCEPTED</StatusCode>" in output
    assert '"outcome": "RECOGNISED"' in output and '"seal_chain_verdict": "INTACT"' in output
    assert "ok    mrx/KZ-DOS: cosignature: cosigned the checkpoint" in output
    assert output.rstrip().endswith("6 records, 22 checks, 0 failed"), output
