"""bench/run_all.py: the benchmarks' JSON → the report's rows, ratios and verdicts; running and stopping a benchmark.

The documents in ``data/`` are the JSON the five benchmarks wrote in one
``--quick`` run on the shared 2-core build machine (loaded: the figures are
low), kept whole, so the mapping is checked on the shapes the benchmarks
really write. No benchmark runs here.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench import run_all
from bench.run_all import BENCHMARKS, BY_NAME, Context, Run, summarise, table_rows

DATA = Path(__file__).parent / "data"
HEADER = ["benchmark", "figure", "value", "ceiling", "ratio", "goal", "met"]


def document(name: str) -> dict[str, Any]:
    return json.loads((DATA / f"{name}.json").read_text())


def rows_of(*documents: tuple[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """The table's rows, by figure name, as cells named after the table's columns."""
    runs = [BY_NAME[name].figures(doc) for name, doc in documents]
    return {row[1]: dict(zip(HEADER, row, strict=True)) for row in table_rows(summarise(runs), set())}


def test_ingest_rows_ratios_and_goals() -> None:
    rows = rows_of(("ingest", document("ingest")))
    assert list(rows) == [
        "closed loop, batch 1: accepted",
        "closed loop, batch 100: accepted",
        "open loop 500/s, batch 1: p99",
        "node peak RSS",
    ]
    assert rows["closed loop, batch 1: accepted"] == {
        "benchmark": "ingest", "figure": "closed loop, batch 1: accepted", "value": "456 events/s",
        "ceiling": "1,163 events/s (serial ceiling)", "ratio": "0.39", "goal": "≥ 1,200 events/s", "met": "**MISSED**",
    }  # fmt: skip
    batch_100 = rows["closed loop, batch 100: accepted"]
    assert (batch_100["value"], batch_100["ceiling"], batch_100["ratio"]) == (
        "667 events/s", "7,451 events/s (serial ceiling)", "0.09"
    )
    assert batch_100["met"] == "**MISSED**"
    p99 = rows["open loop 500/s, batch 1: p99"]
    assert (p99["value"], p99["ceiling"], p99["ratio"], p99["goal"], p99["met"]) == (
        "1,516 ms", "63.8 ms (floor p50)", "23.7", "p99 < 50 ms", "**MISSED**"
    )
    rss = rows["node peak RSS"]
    assert (rss["value"], rss["ceiling"], rss["ratio"], rss["goal"], rss["met"]) == (
        "175 MB", "72.6 MB (bare aiohttp echo)", "2.40", "< 200 MB", "met"
    )


def test_exchange_cost_is_judged_on_the_benchmarks_own_figure() -> None:
    rows = rows_of(("exchange", document("exchange")))
    cost = rows["forwarding vs single node: accepted"]
    # 800 accepted while forwarding ÷ 1,667 alone: forwarding costs 52 %, the goal is at most 25 %.
    assert (cost["value"], cost["ceiling"], cost["ratio"]) == ("800 events/s", "1,667 events/s (single node)", "0.48")
    assert (cost["goal"], cost["met"]) == ("forwarding costs ≤ 25 %", "**MISSED** (cost 52%)")
    assert rows["forwarding: accepted at CN-AKL"]["ratio"] == "0.20"  # the JSON's ratio: accepted ÷ serial ceiling
    assert rows["forwarding: accepted at CN-AKL"]["met"] == "—"
    e2e = rows["end to end at 500/s: p99"]
    assert (e2e["value"], e2e["ceiling"], e2e["met"]) == ("3,592 ms", "10.3 ms (floor p50)", "**MISSED**")


def test_decision_rows_per_phase_and_growth() -> None:
    rows = rows_of(("decision", document("decision")))
    # The quick run's phases: 100 and 1,000 containers in transit, named from the JSON.
    assert rows["1,000 in transit: gateway arrival → decision, p99"] == {
        "benchmark": "decision", "figure": "1,000 in transit: gateway arrival → decision, p99", "value": "47.2 ms",
        "ceiling": "1.20 ms (floor p50)", "ratio": "39.5", "goal": "p99 < 50 ms", "met": "met",
    }  # fmt: skip
    assert rows["100 in transit: national arrival → decision, p99"]["value"] == "15.6 ms"
    throughput = rows["1,000 in transit: decisions, closed loop"]
    assert (throughput["value"], throughput["ceiling"], throughput["ratio"]) == (
        "141 decisions/s", "1,437 decisions/s (serial ceiling)", "0.10"
    )
    growth = rows["national arrival p50, 1,000 in transit vs 100 in transit"]
    assert (growth["value"], growth["ceiling"], growth["ratio"], growth["met"]) == (
        "3.68 ms", "5.72 ms (100 in transit)", "0.64", "met"
    )
    assert rows["node CPU per decision, 1,000 in transit vs 100 in transit"]["ratio"] == "1.00"


def test_audit_flatness_and_verification() -> None:
    rows = rows_of(("audit", document("audit")))
    large = rows["append per record, 100,000 leaves"]
    assert (large["value"], large["ceiling"], large["ratio"]) == ("6.21 µs", "5.39 µs (storing the record)", "1.15")
    assert (large["goal"], large["met"]) == ("≤ +20 % over the small log", "met (+0.5%)")
    assert rows["append per record, 10,000 leaves"]["met"] == "—"
    bundle = rows["mrx verify BUNDLE of 10,000 records"]
    assert (bundle["value"], bundle["ceiling"], bundle["ratio"], bundle["met"]) == (
        "1,079 records/s", "1,925 records/s (Ed25519 + XSD)", "0.56", "**MISSED**"
    )
    assert rows["mrx verify --log (re-proving tiles)"]["met"] == "met"


def test_mqtt_ratio_is_the_benchmarks_median_of_repeats() -> None:
    doc = document("mqtt")
    doc["mqtt"]["ratio"] = 0.79  # differs from value ÷ ceiling (1.21): the benchmark's own figure is used
    row = rows_of(("mqtt", doc))["MQTT ingest"]
    assert (row["value"], row["ceiling"], row["ratio"]) == ("2,268 events/s", "1,867 events/s (HTTP batch 100)", "0.79")
    assert (row["goal"], row["met"]) == ("ratio ≥ 0.80", "**MISSED**")


def test_repeats_give_medians_their_range_and_a_verdict_on_the_median() -> None:
    runs = []
    for rate, ceiling in ((2_000.0, 8_000.0), (3_500.0, 7_000.0), (4_000.0, 5_000.0)):
        doc = document("ingest")
        load = doc["loads"]["closed_batch_100"]
        load["node"]["events_per_s"], load["ceiling_events_per_s"], load["ratio"] = rate, ceiling, rate / ceiling
        runs.append(("ingest", doc))
    row = rows_of(*runs)["closed loop, batch 100: accepted"]
    # One run missed 3,000 events/s; the median of the three meets it.
    assert row["value"] == "3,500 events/s (2,000–4,000 events/s)"
    assert row["ceiling"] == "7,000 events/s (serial ceiling)"
    assert row["ratio"] == "0.50 (0.25–0.80)"  # the median of the runs' own ratios, not 3,500 ÷ 7,000 by chance
    assert row["met"] == "met"


def test_a_missing_key_makes_its_figure_missing_and_is_listed() -> None:
    doc = document("ingest")
    del doc["loads"]["closed_batch_1"]["node"]
    del doc["memory"]
    rows = rows_of(("ingest", doc))
    batch_1 = rows["closed loop, batch 1: accepted"]
    assert (batch_1["value"], batch_1["ratio"], batch_1["met"]) == ("missing", "0.39", "missing")
    assert rows["node peak RSS"]["value"] == rows["node peak RSS"]["ceiling"] == "missing"
    assert rows["closed loop, batch 100: accepted"]["value"] == "667 events/s"
    summaries = summarise([BY_NAME["ingest"].figures(doc)])
    missing = {path for s in summaries for path in s.missing}
    assert {"loads.closed_batch_1.node.events_per_s", "memory.node_peak_rss_mb", "memory.echo_peak_rss_mb"} <= missing


@pytest.mark.parametrize("bench", BENCHMARKS, ids=lambda b: b.name)
def test_an_empty_document_gives_every_row_missing(bench: run_all.Benchmark) -> None:
    figures = bench.figures({})
    table = [f for f in figures if f.table]
    assert table
    assert all(f.value is None and f.missing for f in figures)
    assert all(row[2] == "missing" for row in table_rows(summarise([figures]), set()))


def context(quick: bool = True) -> Context:
    at = datetime(2026, 11, 22, 13, 0, tzinfo=UTC)
    return Context(at, at, "PYTHONPATH=.dev:. .venv/bin/python bench/run_all.py --quick", quick, 1,
                   "`d451a4a` (a commit); working tree clean", [("CPU", "AMD EPYC, 2 logical cores")], (0.5, 1.5))  # fmt: skip


def test_report_has_one_table_every_benchmark_and_says_what_failed(tmp_path: Path) -> None:
    runs = [Run("ingest", 1, "exited with 1", 3.0, tmp_path / "ingest-1.log")]
    runs += [Run(name, 1, "ok", 3.0, tmp_path / f"{name}-1.log", document(name)) for name in BY_NAME if name != "ingest"]
    report = run_all.render(context(), runs, BENCHMARKS, tmp_path / "RESULTS.md")
    assert report.count("| benchmark | figure | value | ceiling (same run) | ratio | goal | met |") == 1
    assert "| ingest | closed loop, batch 1: accepted | no result (run failed) | — | — | ≥ 1,200 events/s | no result |" in report
    assert "| mqtt | MQTT ingest | 2,268 events/s | 1,867 events/s (HTTP batch 100) | 1.21 | ratio ≥ 0.80 | met |" in report
    for bench in BENCHMARKS:
        assert f"## {bench.name}: {bench.subject} (issue {bench.issue})" in report
    assert "**No result**: run 1 exited with 1." in report
    assert "**Failed:** ingest" in report
    assert "`--quick`: a smoke run, not figures of record" in report
    assert "| CPU | AMD EPYC, 2 logical cores |" in report
    assert "- publish → commit at 500/s: p99: 3.95 ms" in report
    assert "Settings: not in its JSON." in report  # audit.py's JSON has no settings


def test_readme_sections_are_linked() -> None:
    assert run_all.readme_anchor("ingest", "# B\n\n## `ingest.py`: seal-event ingest\n") == "#ingestpy-seal-event-ingest"
    assert run_all.readme_anchor("mqtt", "## `ingest.py`: x\n") == ""
    readme = run_all.README.read_text()
    assert all(run_all.readme_anchor(name, readme) for name in [*BY_NAME, "run_all"])


def test_only_keeps_the_registry_order_and_refuses_unknown_names() -> None:
    assert [b.name for b in run_all.parse_args(["--only", "mqtt,ingest"]).benchmarks] == ["ingest", "mqtt"]
    with pytest.raises(SystemExit):
        run_all.parse_args(["--only", "ingest,nope"])


def test_a_benchmark_run_reads_its_json_and_logs_its_output(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    script = "import json, sys; print('measuring'); open(sys.argv[1], 'w').write(json.dumps({'figure': 1}))"
    run = run_all.run_command("x", 1, [sys.executable, "-c", script, str(out)], out, tmp_path / "x.log", 60)
    assert (run.ok, run.outcome, run.document) == (True, "ok", {"figure": 1})
    assert "measuring" in run.log.read_text()
    failing = run_all.run_command("x", 2, [sys.executable, "-c", "import sys; sys.exit('broken')"],
                                  tmp_path / "none.json", tmp_path / "x2.log", 60)  # fmt: skip
    assert (failing.ok, failing.outcome) == (False, "exited with 1")
    assert "broken" in failing.log.read_text()


def test_a_benchmark_past_its_timeout_is_stopped_with_what_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(600)\n"
    )
    run = run_all.run_command("x", 1, [sys.executable, "-c", script], tmp_path / "x.json", tmp_path / "x.log", 5)
    assert not run.ok and run.outcome.startswith("timed out after")
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 30
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child)


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting for its reparented reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_repeated_extra_figures_keep_their_unit_in_the_range(tmp_path: Path) -> None:
    runs = []
    for attempt, cost in enumerate((0.70, 0.75, 0.80), 1):
        doc = document("exchange")
        doc["throughput"]["forwarding_cost_delivered"] = cost
        runs.append(Run("exchange", attempt, "ok", 60.0, tmp_path / f"exchange-{attempt}.log", doc))
    report = run_all.render(context(), runs, [BY_NAME["exchange"]], tmp_path / "RESULTS.md")
    assert "- forwarding cost, end to end (1 − delivered ÷ single): 75.0% (70.0%–80.0%)" in report
    assert "- peak RSS: CN-AKL: 181 MB (181–181 MB)" in report  # the same in every run
