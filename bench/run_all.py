"""Run every benchmark with its ceiling and write the report of record, ``bench/RESULTS.md``.

Run from the repository root (``--quick`` passes ``--quick`` to every benchmark: a smoke run):

    PYTHONPATH=.dev:. .venv/bin/python bench/run_all.py [--quick] [--only ingest,mqtt] [--repeat N] [--out FILE]

How it runs
-----------
Each benchmark of the earlier issues (``BENCHMARKS``: ingest, exchange,
decision, audit, mqtt) runs as its own subprocess, one after the other,
``sys.executable bench/NAME.py --json FILE [--quick]``, with its output
(stdout and stderr) written to a log file in ``bench/out/run_all-<time>/``
beside the JSON it writes. A benchmark that exits non-zero, writes no
readable JSON or outlives its timeout (its whole process group is then
stopped: the nodes, echo servers and brokers it started) is reported as
failed, and the others still run; the exit code is 1 if any run failed, 0
otherwise. A missed goal is not a failure: the benchmarks report, they do
not gate. ``--repeat N`` runs the whole set N times, round robin, so that a
spell of someone else's load on the shared machine does not fall on one
benchmark's every run.

How the figures are read
------------------------
The benchmarks already measure each figure beside its ceiling in the same
run; this script only reads their ``--json`` documents. One small function
per benchmark (``ingest_figures`` …) maps a document to figures, each read
by its path in the JSON: a key the document lacks makes that figure
``missing`` (and its path is listed in the report), never a crash, so a
benchmark whose JSON changes shape shows it. A figure is either a row of the
one table (a value, the ceiling it is compared with, their ratio, the
issue's goal and whether it is met) or an extra figure kept in that
benchmark's section (p50/p99, RSS, CPU per event, the ceiling's parts).

``ratio`` is value ÷ ceiling, as the benchmarks define it: for a rate, 1.0
is the ceiling and lower is further from it; for a time or a size the
"ceiling" is a floor (the least the work can take: ``floor p50``, the bare
aiohttp process's RSS), and above 1.0 is how far above it the node is.
Where a benchmark computes the ratio itself (``ratio`` in its JSON: the
median of per-repeat ratios, or a ratio of medians), that number is used.

With ``--repeat N``, each figure is the median over the runs that produced
it, with its range (lowest–highest) beside it; a ratio is the median of the
runs' ratios (each a figure over its own run's ceiling), and a goal is
judged on the median of what it judges.

The goals are the issues', written here once (``Goal``), because the verdict
must be taken on the medians over runs, and because not every benchmark's
JSON states its goal. Issue 4's "the cost does not grow with the containers
in transit" has no number; this report reads it as at most 1.20× from the
smaller phase to the larger, the tolerance issue 5 gives the audit log's
append cost.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import operator
import os
import platform
import re
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "bench" / "README.md"
DEFAULT_OUT = ROOT / "bench" / "RESULTS.md"
LOGS = ROOT / "bench" / "out"

Json = dict[str, Any]


# -- goals ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """An issue's goal: what it says, and the test of the number it judges."""

    text: str
    op: Literal["≥", "≤", "<"]
    bound: float
    shows: str | None = None  # how to print the judged number when it is neither the value nor the ratio

    def met(self, judged: float) -> bool:
        return _COMPARE[self.op](judged, self.bound)


_COMPARE: dict[str, Callable[[float, float], bool]] = {"≥": operator.ge, "≤": operator.le, "<": operator.lt}


INGEST_BATCH_1 = Goal("≥ 1,200 events/s", "≥", 1200)
INGEST_BATCH_100 = Goal("≥ 3,000 events/s (aim 5,000)", "≥", 3000)
INGEST_P99 = Goal("p99 < 50 ms", "<", 50)
INGEST_RSS = Goal("< 200 MB", "<", 200)
EXCHANGE_COST = Goal("forwarding costs ≤ 25 %", "≤", 0.25, shows="cost {:.0%}")
EXCHANGE_P99 = Goal("p99 < 200 ms", "<", 200)
DECISION_P99 = Goal("p99 < 50 ms", "<", 50)
DECISION_GROWTH = Goal("does not grow (ratio ≤ 1.20)", "≤", 1.20)
AUDIT_FLAT = Goal("≤ +20 % over the small log", "≤", 0.20, shows="{:+.1%}")
AUDIT_VERIFY = Goal("≥ 5,000 records/s", "≥", 5000)
MQTT_RATIO = Goal("ratio ≥ 0.80", "≥", 0.80)


# -- reading a benchmark's JSON -------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """A number read from a document, or None with the paths that were not there."""

    value: float | None
    missing: tuple[str, ...] = ()


def read(doc: Any, *path: str | int) -> Reading:
    """The number at ``path`` (keys and list indices), or a Reading that says which path is missing."""
    node = doc
    for key in path:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            node = None
            break
    if isinstance(node, bool) or not isinstance(node, int | float):
        return Reading(None, (".".join(map(str, path)),))
    return Reading(float(node))


def quotient(a: Reading, b: Reading) -> Reading:
    if a.value is None or b.value is None or b.value == 0:
        return Reading(None, a.missing + b.missing)
    return Reading(a.value / b.value)


@dataclass(frozen=True)
class Figure:
    """One figure of one run: a row of the table, or an extra figure of its benchmark's section."""

    benchmark: str
    name: str
    unit: str
    value: float | None
    ceiling: float | None = None
    ceiling_name: str = ""
    ratio: float | None = None
    goal: Goal | None = None
    judged: float | None = None
    missing: tuple[str, ...] = ()
    table: bool = True


class Figures:
    """The figures of one benchmark's document, in the order they are added."""

    def __init__(self, benchmark: str, doc: Json) -> None:
        self.benchmark, self.doc = benchmark, doc
        self.figures: list[Figure] = []

    def read(self, *path: str | int) -> Reading:
        return read(self.doc, *path)

    def row(
        self,
        name: str,
        unit: str,
        value: Reading,
        ceiling: Reading,
        ceiling_name: str,
        *,
        ratio: Reading | None = None,
        goal: Goal | None = None,
        judged: Reading | None = None,
    ) -> None:
        """A row of the table. ``ratio`` defaults to value ÷ ceiling, ``judged`` (what the goal tests) to the value."""
        ratio = ratio if ratio is not None else quotient(value, ceiling)
        judged = judged if judged is not None else value
        readings = (value, ceiling, ratio, judged) if goal else (value, ceiling, ratio)
        self._add(Figure(
            self.benchmark, name, unit, value.value, ceiling.value, ceiling_name, ratio.value, goal,
            judged.value if goal else None, _missing(*readings),
        ))  # fmt: skip

    def extra(self, name: str, unit: str, value: Reading) -> None:
        """A figure kept in the benchmark's section, outside the table."""
        self._add(Figure(self.benchmark, name, unit, value.value, missing=value.missing, table=False))

    def load_average(self) -> None:
        """The machine's load when the benchmark started, as it recorded it."""
        self.extra("load average when it started (1 min)", "", self.read("machine", "load_average_1m"))

    def _add(self, figure: Figure) -> None:
        # Runs are matched by name: two figures of one benchmark with the same name would be merged.
        if any(f.name == figure.name for f in self.figures):
            raise ValueError(f"{self.benchmark}: two figures named {figure.name!r}")
        self.figures.append(figure)

    def ceiling_parts(self) -> None:
        """The ceiling's parts, µs, as the benchmark names them (ingest, exchange, decision)."""
        parts = self.doc.get("ceiling_parts_us")
        if not isinstance(parts, dict):
            self.extra("ceiling parts", "µs", self.read("ceiling_parts_us"))
            return
        for key in parts:
            self.extra(f"ceiling part: {key}", "µs", self.read("ceiling_parts_us", key))


def _missing(*readings: Reading) -> tuple[str, ...]:
    return tuple(dict.fromkeys(path for r in readings for path in r.missing))


# -- one function per benchmark: its JSON → figures ----------------------------------------------


def ingest_figures(doc: Json) -> list[Figure]:
    f = Figures("ingest", doc)
    for key, label, goal in (("closed_batch_1", "closed loop, batch 1", INGEST_BATCH_1),
                             ("closed_batch_100", "closed loop, batch 100", INGEST_BATCH_100)):  # fmt: skip
        f.row(f"{label}: accepted", "events/s", f.read("loads", key, "node", "events_per_s"),
              f.read("loads", key, "ceiling_events_per_s"), "serial ceiling",
              ratio=f.read("loads", key, "ratio"), goal=goal)  # fmt: skip
    rate = f.read("loads", "open_batch_1", "offered_events_per_s").value
    offered = f"{rate:,.0f}/s" if rate is not None else "?/s"
    f.row(f"open loop {offered}, batch 1: p99", "ms", f.read("loads", "open_batch_1", "node", "p99_ms"),
          f.read("loads", "open_batch_1", "floor_p50_ms"), "floor p50", goal=INGEST_P99)  # fmt: skip
    f.row("node peak RSS", "MB", f.read("memory", "node_peak_rss_mb"), f.read("memory", "echo_peak_rss_mb"),
          "bare aiohttp echo", goal=INGEST_RSS)  # fmt: skip
    for key, label, quantiles in (("closed_batch_1", "closed loop, batch 1", ("p50", "p99")),
                                  ("closed_batch_100", "closed loop, batch 100", ("p50", "p99")),
                                  ("open_batch_1", f"open loop {offered}, batch 1", ("p50",))):  # fmt: skip
        for q in quantiles:
            f.extra(f"{label}: {q}", "ms", f.read("loads", key, "node", f"{q}_ms"))
        f.extra(f"{label}: node CPU per event", "µs", f.read("loads", key, "node", "server_cpu_us_per_event"))
        f.extra(f"{label}: other cores", "cores", f.read("loads", key, "node", "other_cores"))
    f.extra(f"open loop {offered}: echo p99", "ms", f.read("loads", "open_batch_1", "echo", "p99_ms"))
    f.extra("node idle RSS", "MB", f.read("memory", "node_idle_rss_mb"))
    f.ceiling_parts()
    f.load_average()
    return f.figures


def exchange_figures(doc: Json) -> list[Figure]:
    f = Figures("exchange", doc)
    single, forwarding = ("throughput", "single"), ("throughput", "forwarding")
    accepted_single = f.read(*single, "accepted_events_per_s")
    accepted = f.read(*forwarding, "accepted_events_per_s")
    f.row("single node: accepted", "events/s", accepted_single, f.read(*single, "ceiling_events_per_s"),
          "serial ceiling", ratio=f.read(*single, "ratio"))  # fmt: skip
    f.row("forwarding: accepted at CN-AKL", "events/s", accepted, f.read(*forwarding, "ceiling_events_per_s"),
          "serial ceiling", ratio=f.read(*forwarding, "ratio"))  # fmt: skip
    f.row("forwarding vs single node: accepted", "events/s", accepted, accepted_single, "single node",
          goal=EXCHANGE_COST, judged=f.read("throughput", "forwarding_cost"))  # fmt: skip
    f.row("forwarding: delivered with verified receipts", "records/s", f.read(*forwarding, "delivered_records_per_s"),
          f.read(*forwarding, "ceiling_events_per_s"), "serial ceiling",
          ratio=f.read(*forwarding, "delivered_ratio"))  # fmt: skip
    rate = f.read("latency", "offered_events_per_s").value
    offered = f"{rate:,.0f}/s" if rate is not None else "?/s"
    f.row(f"end to end at {offered}: p99", "ms", f.read("latency", "stored_at_partner_ms", "p99"),
          f.read("latency", "floor_ms", "end_to_end"), "floor p50", goal=EXCHANGE_P99)  # fmt: skip
    f.extra("forwarding cost, end to end (1 − delivered ÷ single)", "%", f.read("throughput", "forwarding_cost_delivered"))
    f.extra("forwarding cost by CPU (1 − single ÷ CN-AKL CPU per event)", "%", f.read("throughput", "forwarding_cost_cpu"))
    f.extra("forwarding cost by CPU, apart (1 − single ÷ (ingest + delivery))", "%",
            f.read("throughput", "apart", "forwarding_cost_cpu"))
    f.extra("CPU per event: single node", "µs", f.read(*single, "cpu_us_per_event"))
    for node in ("CN-AKL", "KZ-DOS"):
        f.extra(f"CPU per event: {node}", "µs", f.read(*forwarding, "cpu_us_per_event", node))
    f.extra("delivered inside the window", "records/s", f.read(*forwarding, "in_window_delivered_records_per_s"))
    f.extra("backlog when the window closed", "records", f.read(*forwarding, "backlog_at_window_end"))
    f.extra("drained at", "records/s", f.read(*forwarding, "drain_delivered_records_per_s"))
    for key, label in (("stored_at_partner_ms", "stored at KZ-DOS"), ("receipt_at_sender_ms", "receipt verified at CN-AKL"),
                       ("ack_ms", "CN-AKL's answer")):  # fmt: skip
        for q in ("p50", "p99"):
            f.extra(f"{offered} → {label}: {q}", "ms", f.read("latency", key, q))
    for node in ("CN-AKL", "KZ-DOS", "single", "echo"):
        f.extra(f"peak RSS: {node}", "MB", f.read("memory", "peak_rss_mb", node))
    f.ceiling_parts()
    f.load_average()
    return f.figures


def decision_figures(doc: Json) -> list[Figure]:
    f = Figures("decision", doc)
    phases = doc.get("phases")
    count = len(phases) if isinstance(phases, list) and phases else 2  # the benchmark's two phases, even if absent
    labels = []
    for i in range(count):
        containers = f.read("phases", i, "containers_in_transit").value
        labels.append(f"{containers:,.0f} in transit" if containers is not None else f"phase {i + 1}")
    for i, label in enumerate(labels):
        floor = f.read("phases", i, "national", "floor_p50_ms")
        f.row(f"{label}: national arrival → decision, p99", "ms", f.read("phases", i, "national", "p99_ms"),
              floor, "floor p50", goal=DECISION_P99)  # fmt: skip
        f.row(f"{label}: gateway arrival → decision, p99", "ms", f.read("phases", i, "gateway", "p99_ms"),
              floor, "floor p50", goal=DECISION_P99)  # fmt: skip
        f.row(f"{label}: decisions, closed loop", "decisions/s", f.read("phases", i, "throughput", "decisions_per_s"),
              f.read("phases", i, "throughput", "ceiling_decisions_per_s"), "serial ceiling",
              ratio=f.read("phases", i, "throughput", "ratio"))  # fmt: skip
    small, large = 0, count - 1
    for key, growth, label, unit in (
        (("national", "p50_ms"), "national_p50", "national arrival p50", "ms"),
        (("throughput", "node_cpu_us_per_decision"), "node_cpu_us_per_decision", "node CPU per decision", "µs"),
    ):
        f.row(f"{label}, {labels[large]} vs {labels[small]}", unit, f.read("phases", large, *key),
              f.read("phases", small, *key), labels[small], ratio=f.read("growth", growth),
              goal=DECISION_GROWTH, judged=f.read("growth", growth))  # fmt: skip
    for i, label in enumerate(labels):
        for path, name in (("national", "national p50"), ("gateway", "gateway p50")):
            f.extra(f"{label}: {name}", "ms", f.read("phases", i, path, "p50_ms"))
        f.extra(f"{label}: gateway → decision's commit start, p99", "ms",
                f.read("phases", i, "gateway", "commit_started", "p99_ms"))  # fmt: skip
        f.extra(f"{label}: the gateway's answer, p99", "ms", f.read("phases", i, "gateway", "gateway_answer", "p99_ms"))
        f.extra(f"{label}: p99 under load", "ms", f.read("phases", i, "throughput", "p99_ms"))
        f.extra(f"{label}: node CPU per decision", "µs", f.read("phases", i, "throughput", "node_cpu_us_per_decision"))
        f.extra(f"{label}: own decision time, mean", "ms", f.read("phases", i, "national", "node_decision_ms_mean"))
        f.extra(f"{label}: other cores", "cores", f.read("phases", i, "throughput", "other_cores"))
        f.extra(f"{label}: node peak RSS", "MB", f.read("phases", i, "memory", "node_peak_rss_mb"))
        f.extra(f"{label}: records stored", "records", f.read("phases", i, "stored", "records"))
        f.extra(f"{label}: database", "MB", f.read("phases", i, "stored", "database_mb"))
    growth = doc.get("growth")
    for key in growth if isinstance(growth, dict) else ():
        f.extra(f"growth {labels[large]} ÷ {labels[small]}: {key}", "", f.read("growth", key))
    f.ceiling_parts()
    f.load_average()
    return f.figures


def audit_figures(doc: Json) -> list[Figure]:
    f = Figures("audit", doc)
    labels = []
    for i in (0, 1):
        leaves = f.read("append", i, "leaves").value
        labels.append(f"{leaves:,.0f} leaves" if leaves is not None else ("the small log", "the large log")[i])
    f.row(f"append per record, {labels[0]}", "µs", f.read("append", 0, "append_us"), f.read("append", 0, "insert_us"),
          "storing the record")  # fmt: skip
    f.row(f"append per record, {labels[1]}", "µs", f.read("append", 1, "append_us"), f.read("append", 1, "insert_us"),
          "storing the record", goal=AUDIT_FLAT, judged=f.read("flatness"))  # fmt: skip
    records = f.read("bundle", "records").value
    size = f" of {records:,.0f} records" if records is not None else ""
    f.row(f"mrx verify BUNDLE{size}", "records/s", f.read("bundle", "records_per_s"), f.read("bundle", "ed25519_xsd_per_s"),
          "Ed25519 + XSD", goal=AUDIT_VERIFY)  # fmt: skip
    f.row("mrx verify --log (re-proving tiles)", "records/s", f.read("reprove", "records_per_s"),
          f.read("reprove", "ceiling_per_s"), "SHA-256 of each entry", goal=AUDIT_VERIFY)  # fmt: skip
    f.extra("bundle: Ed25519 verification alone", "records/s", f.read("bundle", "ed25519_per_s"))
    f.extra("bundle size", "MB", f.read("bundle", "bundle_mb"))
    f.extra("checkpoint (tree head + note)", "ms", f.read("checkpoint_ms"))
    for q in ("p50", "p99"):
        f.extra(f"inclusion proof, {labels[1]}: {q}", "ms", f.read("proof_ms", q))
    f.extra("tiles export", "s", f.read("export", "seconds"))
    f.extra("peak RSS (the benchmark's process)", "MB", f.read("peak_rss_mb"))
    return f.figures


def mqtt_figures(doc: Json) -> list[Figure]:
    f = Figures("mqtt", doc)
    f.row("MQTT ingest", "events/s", f.read("mqtt", "events_per_s"), f.read("http_batch_100", "events_per_s"),
          "HTTP batch 100", ratio=f.read("mqtt", "ratio"), goal=MQTT_RATIO, judged=f.read("mqtt", "ratio"))  # fmt: skip
    f.extra("ratio by the node's CPU per event (HTTP ÷ MQTT)", "", f.read("mqtt", "ratio_by_cpu"))
    f.extra("node CPU per event: MQTT", "µs", f.read("mqtt", "node_cpu_us_per_event"))
    f.extra("node CPU per event: HTTP batch 100", "µs", f.read("http_batch_100", "node_cpu_us_per_event"))
    f.extra("broker CPU per event", "µs", f.read("mqtt", "broker_cpu_us_per_event"))
    rate = f.read("latency", "offered_events_per_s").value
    offered = f"{rate:,.0f}/s" if rate is not None else "?/s"
    for q in ("p50", "p99", "max"):
        f.extra(f"publish → commit at {offered}: {q}", "ms", f.read("latency", f"{q}_ms"))
    f.extra("HTTP batch 100: p99", "ms", f.read("http_batch_100", "p99_ms"))
    memory = doc.get("memory")
    for key in memory if isinstance(memory, dict) else ("node_peak_rss_mb",):
        f.extra(f"memory: {key}", "MB" if key.endswith("_mb") else "", f.read("memory", key))
    f.load_average()
    return f.figures


@dataclass(frozen=True)
class Benchmark:
    name: str
    issue: int
    subject: str
    figures: Callable[[Json], list[Figure]]
    timeout_s: float  # a full run; generous, the machine is shared
    quick_timeout_s: float

    def command(self, json_path: Path, quick: bool) -> list[str]:
        script = ROOT / "bench" / f"{self.name}.py"
        return [sys.executable, str(script), "--json", str(json_path), *(["--quick"] if quick else [])]


BENCHMARKS = (
    Benchmark("ingest", 2, "seal-event ingest", ingest_figures, 1800, 600),
    Benchmark("exchange", 3, "forwarding records to a partner", exchange_figures, 2700, 900),
    Benchmark("decision", 4, "recognition decisions at the border", decision_figures, 2700, 900),
    Benchmark("audit", 5, "the audit log", audit_figures, 3600, 900),
    Benchmark("mqtt", 6, "seal events through the MQTT lock listener", mqtt_figures, 1800, 600),
)
BY_NAME = {b.name: b for b in BENCHMARKS}


# -- several runs → one figure each ---------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """A figure over the runs that produced it: medians, and the range of the value and the ratio."""

    figure: Figure  # the first run's: names, unit, goal
    runs: int
    value: float | None
    value_range: tuple[float, float] | None
    ceiling: float | None
    ratio: float | None
    ratio_range: tuple[float, float] | None
    judged: float | None
    missing: tuple[str, ...]

    @property
    def met(self) -> bool | None:
        goal = self.figure.goal
        return None if goal is None or self.judged is None else goal.met(self.judged)


def summarise(runs: Sequence[Sequence[Figure]]) -> list[Summary]:
    """One Summary per figure (benchmark and name), in the order the figures first appear."""
    groups: dict[tuple[str, str], list[Figure]] = {}
    for figures in runs:
        for fig in figures:
            groups.setdefault((fig.benchmark, fig.name), []).append(fig)
    out = []
    for group in groups.values():
        values = [g.value for g in group if g.value is not None]
        ratios = [g.ratio for g in group if g.ratio is not None]
        out.append(Summary(
            group[0], len(values), _median([g.value for g in group]), _range(values),
            _median([g.ceiling for g in group]), _median([g.ratio for g in group]), _range(ratios),
            _median([g.judged for g in group]), _missing(*(Reading(None, g.missing) for g in group)),
        ))  # fmt: skip
    return out


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _range(values: Sequence[float]) -> tuple[float, float] | None:
    return (min(values), max(values)) if len(values) > 1 else None


# -- running them ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One benchmark run: how it ended, and its document if it wrote a readable one."""

    benchmark: str
    attempt: int
    outcome: str  # "ok", or why it failed
    seconds: float
    log: Path
    document: Json | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.document is not None


def run_benchmark(bench: Benchmark, attempt: int, quick: bool, timeout_s: float, logs: Path) -> Run:
    """Run ``bench`` once; its output goes to ``logs/NAME-ATTEMPT.log``, its JSON beside it."""
    json_path, log = logs / f"{bench.name}-{attempt}.json", logs / f"{bench.name}-{attempt}.log"
    return run_command(bench.name, attempt, bench.command(json_path, quick), json_path, log, timeout_s)


def run_command(name: str, attempt: int, command: list[str], json_path: Path, log: Path, timeout_s: float) -> Run:
    """Run a benchmark's command in its own process group, its output to ``log``; read the JSON it wrote."""
    started = time.monotonic()
    with log.open("w") as out:
        out.write(f"$ {shlex.join(command)}\n")
        out.flush()
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            return Run(name, attempt, f"timed out after {timeout_s:,.0f} s", time.monotonic() - started, log)
        except BaseException:  # Ctrl-C: leave no node, echo server or broker behind
            _stop_group(proc)
            raise
    seconds = time.monotonic() - started
    if code != 0:
        return Run(name, attempt, f"exited with {code}", seconds, log)
    try:
        document = json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        return Run(name, attempt, f"no readable JSON ({exc})", seconds, log)
    if not isinstance(document, dict):
        return Run(name, attempt, "its JSON is not an object", seconds, log)
    return Run(name, attempt, "ok", seconds, log, document)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the benchmark's process group (it started it: nodes, echo servers, a broker), then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 15.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


# -- the machine and the tree ---------------------------------------------------------------------


def describe_machine() -> list[tuple[str, str]]:
    """What the figures were measured on, as (label, text) lines."""
    cpu = _first_match(_read_text("/proc/cpuinfo"), r"^model name\s*:\s*(.+)$") or platform.processor() or "unknown"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem_kib = _first_match(_read_text("/proc/meminfo"), r"^MemTotal:\s*(\d+) kB")
    ram = f"{int(mem_kib) / 2**20:.1f} GiB" if mem_kib else "unknown"
    os_name = _first_match(_read_text("/etc/os-release"), r'^PRETTY_NAME="?([^"\n]+)"?') or platform.system()
    packages = ", ".join(f"{name} {_version(name)}" for name in ("lxml", "cryptography", "PyNaCl", "aiohttp", "paho-mqtt"))
    return [
        ("CPU", f"{cpu}, {os.cpu_count()} logical cores ({usable} usable)"),
        ("RAM", ram),
        ("OS", f"{os_name}, Linux {platform.release()} {platform.machine()}"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()} ({_display_path(Path(sys.executable))})"),
        ("SQLite", sqlite3.sqlite_version),
        ("packages", packages),
    ]


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _first_match(text: str, pattern: str) -> str | None:
    match = re.search(pattern, text, re.MULTILINE)
    return match.group(1).strip() if match else None


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe_tree() -> str:
    """The git commit, and whether the working tree differs from it (read-only git commands)."""
    def git(*args: str) -> str:
        command = ["git", "--no-optional-locks", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False).stdout.strip()

    try:
        commit = git("log", "-1", "--format=%h %s")
        changed = [line for line in git("status", "--porcelain").splitlines() if line]
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    if not commit:
        return "unknown (not a git checkout)"
    dirty = f"dirty: {len(changed)} paths modified or untracked" if changed else "clean"
    return f"`{commit.split(' ', 1)[0]}` ({commit.split(' ', 1)[-1][:80]}); working tree {dirty}"


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def describe_command(argv: Sequence[str]) -> str:
    """The command line that produced the report, as one could type it again from the repository root."""
    env = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    return env + shlex.join([_display_path(Path(sys.executable)), "bench/run_all.py", *argv])


# -- the report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """Everything the report says besides the figures."""

    started_at: datetime
    finished_at: datetime
    command: str
    quick: bool
    repeat: int
    tree: str
    machine: list[tuple[str, str]]
    load_average: tuple[float, float]  # 1-minute load average at the start and at the end


def number(value: float | None, unit: str = "") -> str:
    """A figure as the report prints it: three significant digits or whole units, its unit after it."""
    if value is None:
        return "missing"
    if math.isinf(value):
        return "∞"
    if unit == "%":
        return f"{value:.1%}"
    size = abs(value)
    text = f"{value:,.0f}" if size >= 100 else f"{value:.1f}" if size >= 10 else f"{value:.2f}"
    return f"{text} {unit}" if unit else text


def _spread(text: str, span: tuple[float, float] | None, unit: str = "") -> str:
    if span is None:
        return text
    low = number(span[0], unit).removesuffix(f" {unit}")
    return f"{text} ({low}–{number(span[1], unit)})"


def verdict(s: Summary) -> str:
    goal = s.figure.goal
    if goal is None:
        return ""
    if s.met is None:
        return "missing"
    shown = f" ({goal.shows.format(s.judged)})" if goal.shows and s.judged is not None else ""
    return ("met" if s.met else "**MISSED**") + shown


def table_rows(summaries: Sequence[Summary], no_result: set[str]) -> list[list[str]]:
    """The cells of the one table: benchmark, figure, value, ceiling, ratio, goal, met.

    ``no_result``: the benchmarks none of whose runs gave a readable document.
    """
    rows = []
    for s in summaries:
        fig = s.figure
        if not fig.table:
            continue
        goal = fig.goal.text if fig.goal else "—"
        if fig.benchmark in no_result:
            rows.append([fig.benchmark, fig.name, "no result (run failed)", "—", "—", goal, "no result"])
            continue
        value = _spread(number(s.value, fig.unit), s.value_range, fig.unit)
        ceiling = f"{number(s.ceiling, fig.unit)} ({fig.ceiling_name})" if s.ceiling is not None else "missing"
        ratio = _spread(number(s.ratio), s.ratio_range)
        rows.append([fig.benchmark, fig.name, value, ceiling, ratio, goal, verdict(s) or "—"])
    return rows


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(r) for r in rows)]


def readme_anchor(name: str, readme_text: str) -> str:
    """The GitHub anchor of bench/README.md's section on ``name.py`` (empty if it has none)."""
    heading = _first_match(readme_text, rf"^##\s+(`{re.escape(name)}\.py`.*)$")
    if heading is None:
        return ""
    slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
    return f"#{slug}"


def render(context: Context, runs: Sequence[Run], benchmarks: Sequence[Benchmark], out: Path) -> str:
    """The report: header, the one table, a section per benchmark, the runs."""
    summaries = summarise([BY_NAME[r.benchmark].figures(r.document) for r in runs if r.document is not None])
    # A benchmark with no readable run still gets its rows, all missing.
    done = {s.figure.benchmark for s in summaries}
    summaries += summarise([b.figures({}) for b in benchmarks if b.name not in done])
    order = [b.name for b in benchmarks]
    summaries.sort(key=lambda s: order.index(s.figure.benchmark))
    failed = {r.benchmark for r in runs if not r.ok}
    no_result = {b.name for b in benchmarks} - {r.benchmark for r in runs if r.ok}
    readme = os.path.relpath(README, out.resolve().parent)
    readme_text = _read_text(str(README))
    mode = "`--quick`: a smoke run, not figures of record" if context.quick else "full"
    lines = [
        "# Benchmark results",
        "",
        (
            f"Written by `bench/run_all.py`: every benchmark of issues 2–6, each figure beside its ceiling measured"
            f" in the same run. What each figure means: [bench/README.md]({readme}); how this report is made:"
            f" [run_all.py]({readme}{readme_anchor('run_all', readme_text)})."
        ),
        "",
        *_markdown_table(["", ""], [
            ["date", f"{context.started_at:%Y-%m-%d %H:%M} – {context.finished_at:%H:%M} UTC"],
            ["commit", context.tree],
            ["command", f"`{context.command}`"],
            ["mode", f"{mode}; each benchmark run {context.repeat} time(s)"
                     + (", figures are medians (lowest–highest)" if context.repeat > 1 else "")],
            *([label, text] for label, text in context.machine),
            ["load average", (f"{context.load_average[0]:.2f} at the start, {context.load_average[1]:.2f} at the"
                              " end (1 min; the machine is shared: compare ratios, not absolute figures)")],
        ]),
        "",
        "## Figures",
        "",
        (
            "`ratio` = value ÷ ceiling. For a rate the ceiling is what the machine could do for the same work in"
            " that run, and lower is further from it; for a time or a size it is a floor, and above 1.0 is how far"
            " above it."
        ),
        "",
        *_markdown_table(["benchmark", "figure", "value", "ceiling (same run)", "ratio", "goal", "met"],
                         table_rows(summaries, no_result)),
    ]
    for bench in benchmarks:
        lines += _section(bench, summaries, [r for r in runs if r.benchmark == bench.name], readme, readme_text)
    lines += ["", "## Runs", ""]
    lines += _markdown_table(
        ["benchmark", "run", "result", "seconds", "log"],
        [[r.benchmark, str(r.attempt), r.outcome if r.ok else f"**{r.outcome}**", f"{r.seconds:,.0f}",
          f"`{_display_path(r.log)}`"] for r in runs],
    )
    if failed:
        lines += ["", f"**Failed:** {', '.join(sorted(failed))} (see the logs)."]
    return "\n".join(lines) + "\n"


def _section(bench: Benchmark, summaries: Sequence[Summary], runs: Sequence[Run], readme: str, readme_text: str) -> list[str]:
    mine = [s for s in summaries if s.figure.benchmark == bench.name]
    lines = ["", f"## {bench.name}: {bench.subject} (issue {bench.issue})", ""]
    lines.append(f"`bench/{bench.name}.py`; what each figure means: [bench/README.md]({readme}"
                 f"{readme_anchor(bench.name, readme_text)}).")  # fmt: skip
    documents = [r.document for r in runs if r.document is not None]
    extras = [s for s in mine if not s.figure.table] if documents else []
    if extras:
        lines.append("")
        for s in extras:
            text = _spread(number(s.value, s.figure.unit), s.value_range, s.figure.unit)
            lines.append(f"- {s.figure.name}: {text}")
    if documents:
        lines += ["", f"Settings: {_settings(documents[0])}."]
    missing = [path for s in mine for path in s.missing] if documents else []
    if missing:
        lines += ["", "Missing from its JSON: " + ", ".join(f"`{p}`" for p in dict.fromkeys(missing)) + "."]
    failures = [f"run {r.attempt} {r.outcome}" for r in runs if not r.ok]
    if failures:
        lines += ["", ("**Failed runs**: " if documents else "**No result**: ") + "; ".join(failures) + "."]
    return lines


def _settings(document: Json) -> str:
    settings = document.get("settings")
    if not isinstance(settings, dict):
        return "not in its JSON"
    items = []
    for key, value in settings.items():
        if key == "dir":  # a temporary directory, gone
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
        items.append(f"{key} {value}")
    return "; ".join(items)


# -- the command ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark: a smoke run")
    parser.add_argument("--only", metavar="NAME[,NAME]",
                        help=f"run only these benchmarks (of {', '.join(BY_NAME)})")  # fmt: skip
    parser.add_argument("--out", metavar="FILE", type=Path, default=DEFAULT_OUT,
                        help="the report to write (default bench/RESULTS.md)")  # fmt: skip
    parser.add_argument("--repeat", metavar="N", type=int, default=1,
                        help="run each benchmark N times; figures are medians, with their range (1)")  # fmt: skip
    parser.add_argument("--timeout", metavar="SECONDS", type=float,
                        help="per benchmark run (default: each benchmark's own, from 10 to 60 minutes)")  # fmt: skip
    args = parser.parse_args(argv)
    names = [n.strip() for n in (args.only or ",".join(BY_NAME)).split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        parser.error(f"--only: unknown benchmark {', '.join(unknown) or '(none given)'}; known: {', '.join(BY_NAME)}")
    args.benchmarks = [b for b in BENCHMARKS if b.name in names]
    if args.repeat < 1 or (args.timeout is not None and args.timeout <= 0):
        parser.error("--repeat must be at least 1 and --timeout positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started_at, load_start = datetime.now(UTC), os.getloadavg()[0]
    logs = LOGS / f"run_all-{started_at:%Y%m%dT%H%M%SZ}"
    logs.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    for attempt in range(1, args.repeat + 1):
        for bench in args.benchmarks:
            timeout = args.timeout or (bench.quick_timeout_s if args.quick else bench.timeout_s)
            print(f"{bench.name} ({attempt}/{args.repeat}): running, log {_display_path(logs)}/{bench.name}-{attempt}.log",
                  file=sys.stderr, flush=True)  # fmt: skip
            run = run_benchmark(bench, attempt, args.quick, timeout, logs)
            runs.append(run)
            print(f"{bench.name} ({attempt}/{args.repeat}): {run.outcome} in {run.seconds:,.0f} s", file=sys.stderr)
            if not run.ok:
                tail = _read_text(str(run.log)).splitlines()[-15:]
                print("\n".join(f"  | {line}" for line in tail), file=sys.stderr)
    context = Context(
        started_at, datetime.now(UTC), describe_command(argv), args.quick, args.repeat, describe_tree(),
        describe_machine(), (load_start, os.getloadavg()[0]),
    )  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(context, runs, args.benchmarks, args.out))
    failed = sorted({r.benchmark for r in runs if not r.ok})
    print(f"wrote {args.out}" + (f"; FAILED: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
