"""The corridor end to end (issue 7): ``mrx demo``'s day, checked from the outside.

The demo checks itself and exits non-zero when something does not check out;
these tests do not take its word for it. After a day played by four node
processes (the session's calm day, conftest.py), they read each node's
SQLite file read-only, as an auditor would, and check with their own code
(holdings.py) and with tools that are not mrx's:

- every border's latest decision on every container is the one the day's
  script requires, with the same reasons (decoded from the signed record);
  no decision is the same as the one before it, no alarm raised twice;
- every node agrees on every record: a record addressed to a node is held
  there, byte for byte, and no node holds a record twice; every record
  verifies, with joserfc, against its sender's JWKS;
- every outbox row is delivered and its receipt is a `Receipt` record signed
  by the partner it was sent to, for that record's digest;
- every node's last checkpoint carries its own signature and its three
  partners' cosignatures, verified with tlog-scales, and its root is the
  Merkle tree hash of every record the node holds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mrx.node import demo
from tests.demo import holdings


@pytest.fixture(scope="module")
def held(calm_day: tuple[Path, demo.DayResult]) -> dict[str, holdings.Holdings]:
    base, _ = calm_day
    return holdings.read(base)


def test_the_day_checks_out(calm_day: tuple[Path, demo.DayResult]) -> None:
    _, result = calm_day
    assert result.checks.failures == []
    assert len(result.arrivals) == len(result.day.journeys) * len(demo.BORDERS)
    assert all(a.seconds is not None for a in result.arrivals)


def test_every_border_decided_what_the_script_requires(
    calm_day: tuple[Path, demo.DayResult], held: dict[str, holdings.Holdings]
) -> None:
    _, result = calm_day
    assert not (failures := holdings.wrong_decisions(held, result.day)), holdings.failed(failures)
    outcomes = {(i, b): e.outcome for (i, b), e in result.day.expected.items()}
    assert demo.NOT_RECOGNISED in outcomes.values() and demo.RECOGNISED in outcomes.values()
    assert result.day.expected[(result.day.opened, "PLMAA")].outcome == demo.RECOGNISED  # the authorised opening
    assert "SEAL_CHAIN_BROKEN" in result.day.expected[(result.day.tampered, "KZDOS")].reasons


def test_no_decision_or_alarm_is_issued_twice(
    calm_day: tuple[Path, demo.DayResult], held: dict[str, holdings.Holdings]
) -> None:
    _, result = calm_day
    assert not (failures := holdings.reissued(held, result.day)), holdings.failed(failures)
    # The tamper: one alarm, raised by the node its lock's gateway reported it to (Chongqing's, or Alashankou's when
    # the train was in a radio dead zone), and each border's own on the broken chain it decided on.
    raised = holdings.alarms(held, result.day)
    assert [(i, n) for (_, kind, i), n in raised.items() if kind == "TAMPER"] == [(result.day.tampered, 1)], raised
    assert {(node_id, kind, i) for node_id, kind, i in raised if kind != "TAMPER"} == {
        (b.node_id, "SEAL_CHAIN_BROKEN", result.day.tampered) for b in demo.BORDERS
    }, raised


def test_every_node_holds_every_record_addressed_to_it_once_and_byte_for_byte(
    calm_day: tuple[Path, demo.DayResult], held: dict[str, holdings.Holdings]
) -> None:
    base, _ = calm_day
    failures = holdings.disagreements(held) + holdings.unverified(held, base)
    assert not failures, holdings.failed(failures)


def test_every_record_sent_is_delivered_with_the_partners_signed_receipt(held: dict[str, holdings.Holdings]) -> None:
    assert not (failures := holdings.unreceipted(held)), holdings.failed(failures)
    assert all(held[o.node_id].outbox for o in demo.OFFICES[:-1])  # every node but the last on the route sent


def test_every_checkpoint_is_cosigned_by_the_three_partners(
    calm_day: tuple[Path, demo.DayResult], held: dict[str, holdings.Holdings]
) -> None:
    base, result = calm_day
    assert not (failures := holdings.unwitnessed(held, result.checkpoints, base)), holdings.failed(failures)


def test_mrx_demo_is_the_readme_command_and_cleans_up_after_itself(tmp_path: Path) -> None:
    """The command itself, as a person runs it: a separate process, exit 0, its directory kept on request."""
    keep = tmp_path / "kept"
    run = subprocess.run(
        [sys.executable, "-m", "mrx.node.cli", "demo", "--containers", "3", "--keep", str(keep)],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert ", 0 failed" in run.stdout and "released without re-inspection" in run.stdout
    assert {p.name for p in keep.iterdir()} >= {o.node_id for o in demo.OFFICES}
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(keep) not in ps, "a node of the demo is still running"
    refused = subprocess.run(
        [sys.executable, "-m", "mrx.node.cli", "demo", "--keep", str(keep)], capture_output=True, text=True,
    )
    assert refused.returncode == 1 and "not empty" in refused.stderr
