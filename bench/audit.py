"""The audit log: append cost as the log grows, checkpoint time, proof latency, offline re-proving.

Run from the repository root (``--quick`` for a run of about a minute):

    PYTHONPATH=.dev .venv/bin/python bench/audit.py [--quick] [--leaves N] [--json FILE]
    PYTHONPATH=.dev .venv/bin/python bench/audit.py --bundle-only [--bundle N] [--repeats R]

What it measures
----------------
A node database (the real schema, `SqliteStore.open` migrates it) in a
temporary directory, driven directly through the store's own functions on
one ``sqlite3`` connection, as the writer thread drives them:

- **append cost per record** at two log sizes, 10⁴ and ``--leaves`` (10⁶ by
  default): batches of 100 records of 1,600 bytes (a seal event's JWS) are
  inserted, then `sqlite_log.append` runs in the same transaction, as in a
  group commit; the figure is the append's time per record, median over the
  batches. Between the two points the log is grown with records of 1,600
  bytes up to 100,000 leaves, then with small ones (200 bytes; the append
  cost does not depend on earlier records' size).
  Beside it, in the same batches, the cost of inserting the records
  themselves: the append should be a small fraction of storing a record, and
  flat in the log's size. Goal: at 10⁶ within 20 % of at 10⁴.
- **checkpoint**: the tree head (size and root, O(log n) reads) plus the
  Ed25519 note signature, at the large size.
- **inclusion proof latency**: p50/p99 of `auditlog.inclusion` for random
  leaves of the large log.
- **bundle verification** (``mrx verify BUNDLE``): ``--bundle`` (default
  100,000; ``--quick`` 10,000) real signed seal-event records in a node
  database of their own, an evidence bundle of all of them
  (`evidence.build`, written to a file as ``mrx evidence`` writes it), then
  `evidence.verify` on it as read from the file, ``--repeats`` times (3):
  records/s, one core, the median, by the clock and by the thread's CPU
  time (which the machine's other load changes least). Ceilings, measured
  between the repeats on the same records (the first 5,000): Ed25519
  verification alone (libsodium, as mrx verifies), and that plus parsing
  the XML and validating it against its XSD, the two things each record's
  integrity check must do, a chunk of records at a time as
  `records.check_records` does them (the same record by record, slower, is
  shown beside it). Goal: at least 5,000 records/s. Then the command itself, in a process of its
  own: ``mrx verify BUNDLE`` (the bundle read whole, every verdict printed
  to /dev/null), and `evidence.load` + `evidence.verify` (the records read
  from the file a chunk at a time): records/s by the clock, Python's start
  included, and each process's own peak RSS (``VmHWM``).
- **offline re-proving** (``mrx verify --log``): `auditlog.export_tiles` of the
  first 100,000 leaves (or all, if fewer), then `auditlog.reprove_tiles`; the
  figure is records/s. Its ceiling, measured in the same run: SHA-256 leaf
  hashes of the same entries, one core, nothing else. Goal (the issue's, for
  `mrx verify` on a bundle): at least 5,000 records/s; note that re-proving a
  log checks hashes, not each record's JWS signature.

Figures print with the machine's description; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mrx.keys import notes
    from mrx.keys.notes import Checkpoint, NoteSigner
    from mrx.node import auditlog
    from mrx.node.merkle import subtree_hash
    from mrx.node.storage import sqlite_log
    from mrx.node.storage.sqlite import SqliteStore
except ModuleNotFoundError as exc:  # pragma: no cover - a usage error, said plainly
    sys.exit(f"{exc}; run from the repository root as: PYTHONPATH=.dev .venv/bin/python bench/audit.py")

GOAL_FLAT = 0.20
GOAL_VERIFY = 5_000
BATCH = 100
RECORD_BYTES = 1_600
FILL_BYTES = 200
EXPORT_LEAVES = 100_000


def _record_rows(seq0: int, count: int, size: int) -> list[tuple[Any, ...]]:
    now = "2026-11-22T00:00:00.000000Z"
    return [
        (f"00000000-0000-4000-8000-{seq0 + i:012d}", "SealEventNotification", "CN-AKL", "KZ-DOS", now, "kid",
         b"\0" * 32, os.urandom(size), now)
        for i in range(count)
    ]


_INSERT = ("INSERT INTO records (message_id, message_type, sender, recipients, prepared_at, kid, digest, jws,"
           " stored_at) VALUES (?,?,?,?,?,?,?,?,?)")


class Log:
    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")  # the figures are CPU; fsync is the store's, measured elsewhere
        self.state: sqlite_log.LogState | None = None
        self.count = 0

    def batch(self, size: int) -> tuple[float, float]:
        """Insert one batch and append it to the log in one transaction: (insert s, append s)."""
        rows = _record_rows(self.count, BATCH, size)
        self.db.execute("BEGIN IMMEDIATE")
        started = time.perf_counter()
        self.db.executemany(_INSERT, rows)
        inserted = time.perf_counter()
        self.state = sqlite_log.append(self.db, self.state)
        appended = time.perf_counter()
        self.db.execute("COMMIT")
        self.count += BATCH
        return inserted - started, appended - inserted

    def grow_to(self, leaves: int, label: str) -> None:
        started = time.monotonic()
        while self.count < leaves:
            # The leaves the re-proving run exports are record-sized; beyond them, small ones fill faster.
            self.batch(RECORD_BYTES if self.count < EXPORT_LEAVES else FILL_BYTES)
            if self.count % 100_000 == 0:
                print(f"  {label}: {self.count:,} leaves ({time.monotonic() - started:.0f} s)", file=sys.stderr)

    def measure_append(self, batches: int) -> dict[str, float]:
        inserts, appends = [], []
        for _ in range(batches):
            insert, append = self.batch(RECORD_BYTES)
            inserts.append(insert / BATCH)
            appends.append(append / BATCH)
        return {"leaves": self.count, "append_us": statistics.median(appends) * 1e6,
                "insert_us": statistics.median(inserts) * 1e6}


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    path = workdir / "mrx.sqlite3"

    async def migrate() -> None:
        await (await SqliteStore.open(path)).close()

    asyncio.run(migrate())
    log = Log(path)
    small = 10_000
    log.grow_to(small - 2 * args.batches * BATCH, "fill")
    log.measure_append(args.batches)  # warm-up: the first batches of a fresh database run slow
    at_small = log.measure_append(args.batches)
    log.grow_to(args.leaves - args.batches * BATCH, "fill")
    at_large = log.measure_append(args.batches)

    signer = NoteSigner("mrx/BENCH", Ed25519PrivateKey.generate())
    times = []
    for _ in range(5):
        started = time.perf_counter()
        head = auditlog.tree_head(log.db)
        notes.sign_checkpoint(Checkpoint(signer.name, head.size, head.root), signer)
        times.append(time.perf_counter() - started)
    checkpoint_ms = statistics.median(times) * 1e3

    rng = random.Random(7)
    size = log.count
    proof_ms = []
    for _ in range(args.proofs):
        index = rng.randrange(size)
        started = time.perf_counter()
        auditlog.inclusion(log.db, index, size)
        proof_ms.append((time.perf_counter() - started) * 1e3)

    export_size = min(EXPORT_LEAVES, size)
    out = workdir / "tiles"
    head = auditlog.tree_head(log.db)  # of the whole log; export a checkpoint of the first export_size leaves
    root = subtree_hash(sqlite_log.SqliteHashSource(log.db), 0, export_size)
    note = str(notes.sign_checkpoint(Checkpoint(signer.name, export_size, root), signer))
    started = time.perf_counter()
    auditlog.export_tiles(log.db, export_size, note, out)
    export_s = time.perf_counter() - started
    started = time.perf_counter()
    auditlog.reprove_tiles(out, signer.verifier)
    reprove_s = time.perf_counter() - started
    entries = sqlite_log.entries(log.db, 0, min(20_000, export_size))
    started = time.perf_counter()
    for entry in entries:
        hashlib.sha256(b"\0" + entry).digest()
    ceiling = len(entries) / (time.perf_counter() - started)
    log.db.close()
    return {
        "head_size": head.size,
        "append": [at_small, at_large],
        "flatness": at_large["append_us"] / at_small["append_us"] - 1,
        "checkpoint_ms": checkpoint_ms,
        "proof_ms": {"p50": _percentile(proof_ms, 50), "p99": _percentile(proof_ms, 99)},
        "export": {"leaves": export_size, "seconds": export_s},
        "reprove": {"records_per_s": export_size / reprove_s, "ceiling_per_s": ceiling},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def bundle_benchmark(count: int, workdir: Path, repeats: int) -> dict[str, Any]:
    """Sign ``count`` records, store them, bundle them all, verify the bundle; and the ceilings."""
    from mrx.keys.keyring import KeyStore
    from mrx.node import evidence
    from mrx.node.inputs import SealEventIn
    from mrx.node.records import RecordSigner
    from mrx.node.storage.sqlite_rows import insert_records
    from tests import factories

    keys = KeyStore.create(workdir / "keys")
    signer = RecordSigner("CN-AKL", lambda: keys.signing_key)
    now = datetime.now(UTC)
    body = SealEventIn.model_validate(factories.seal_event()).to_domain("GW-1", now)
    records = [signer.sign(body) for _ in range(count)]
    path = workdir / "bundle.sqlite3"

    async def store() -> None:
        s = await SqliteStore.open(path)
        for start in range(0, count, 2000):
            chunk = records[start : start + 2000]
            await s.log_write(lambda db, chunk=chunk: insert_records(db, chunk, "2026-11-22T00:00:00Z", deliver=False))
        await s.close()

    asyncio.run(store())
    log_signer = NoteSigner("mrx/CN-AKL", Ed25519PrivateKey.generate())
    db = sqlite3.connect(path)
    head = auditlog.tree_head(db)
    note = str(notes.sign_checkpoint(Checkpoint(log_signer.name, head.size, head.root), log_signer))
    bundle = evidence.build(
        db, node_id="CN-AKL", log_key=log_signer.verifier, witness_keys=[], checkpoint=(head.size, note),
        key_statements={"CN-AKL": keys.statements()}, message_ids=[str(r.message_id) for r in records],
    )
    db.close()
    bundle_file = workdir / "bundle.json"
    bundle_file.write_text(json.dumps(bundle, indent=1) + "\n")  # as `mrx evidence` writes it
    bundle = json.loads(bundle_file.read_bytes())  # as read from the file

    verify: list[Rate] = []
    ceilings: dict[str, list[Rate]] = {"ed25519": [], "ed25519_xsd": [], "ed25519_xsd_interleaved": []}
    sample = [r.jws for r in records[: min(count, 5000)]]
    public = base64.urlsafe_b64decode(keys.signing_key.public_jwk()["x"] + "==")
    for _ in range(repeats):  # interleaved, so that the machine's load weighs on all figures alike
        verdicts, rates = _timed(count, lambda: evidence.verify(bundle, log_key=log_signer.verifier))
        if not all(v.ok for v in verdicts):
            raise SystemExit(f"the benchmark's own bundle did not verify: {next(v for v in verdicts if not v.ok)}")
        verify.append(rates)
        for name, run in _ceilings(sample, public, evidence.CHUNK).items():
            ceilings[name].append(_timed(len(sample), run)[1])

    def median(runs: list[Rate], cpu: bool = False) -> float:
        return statistics.median(r.cpu if cpu else r.wall for r in runs)

    return {
        "records": count, "repeats": repeats, "bundle_mb": bundle_file.stat().st_size / 1e6,
        "records_per_s": median(verify), "records_per_s_cpu": median(verify, cpu=True),
        "ed25519_per_s": median(ceilings["ed25519"]), "ed25519_per_s_cpu": median(ceilings["ed25519"], cpu=True),
        "ed25519_xsd_per_s": median(ceilings["ed25519_xsd"]),
        "ed25519_xsd_per_s_cpu": median(ceilings["ed25519_xsd"], cpu=True),
        "ed25519_xsd_interleaved_per_s": median(ceilings["ed25519_xsd_interleaved"]),
        "command": _child("command", bundle_file, str(log_signer.verifier), count),
        "load_and_verify": _child("load", bundle_file, str(log_signer.verifier), count),
    }


class Rate(NamedTuple):
    wall: float  # per second by the clock
    cpu: float  # per second of the measuring thread's CPU time: what others' load on the machine changes least


def _timed(count: int, run: Any) -> tuple[Any, Rate]:
    """``run()``'s result, and ``count`` ÷ its duration."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.thread_time()
    result = run()
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    return result, Rate(count / wall, count / cpu)


def _ceilings(tokens: list[bytes], public: bytes, chunk: int) -> dict[str, Any]:
    """What every record's check must do and nothing else: the Ed25519 signature, and that plus the XML and its XSD.

    "ed25519_xsd" runs them a chunk of records at a time, as `records.check_records`
    does, which is faster than record by record ("ed25519_xsd_interleaved"):
    each library keeps its code and tables in the CPU's caches.
    """
    import nacl.bindings

    from mrx.keys.jws import parse_compact
    from mrx.schemas import xml

    parsed = [parse_compact(token) for token in tokens]

    def ed25519() -> None:
        for jws in parsed:
            nacl.bindings.crypto_sign_open(jws.signature + jws.signing_input, public)

    def ed25519_xsd() -> None:
        for start in range(0, len(parsed), chunk):
            part = parsed[start : start + chunk]
            for jws in part:
                nacl.bindings.crypto_sign_open(jws.signature + jws.signing_input, public)
            for root in [xml.parse(jws.payload) for jws in part]:
                xml.validate(root)

    def ed25519_xsd_interleaved() -> None:
        for jws in parsed:
            nacl.bindings.crypto_sign_open(jws.signature + jws.signing_input, public)
            xml.validate(xml.parse(jws.payload))

    return {"ed25519": ed25519, "ed25519_xsd": ed25519_xsd, "ed25519_xsd_interleaved": ed25519_xsd_interleaved}


_VERIFY_IN_A_CHILD = """
import atexit, runpy, sys
from pathlib import Path

def peak():  # this process's own high-water mark: ru_maxrss would count the parent it was forked from
    with open("/proc/self/status") as status:
        print(next(line.split()[1] for line in status if line.startswith("VmHWM:")), file=sys.stderr)

atexit.register(peak)
how, bundle, key = sys.argv[1:]
if how == "command":
    sys.argv = ["mrx", "verify", bundle, "--log-key", key]
    runpy.run_module("mrx.node.cli", run_name="__main__")
else:
    from mrx.keys.notes import VerifierKey
    from mrx.node import evidence
    verdicts = evidence.verify(evidence.load(Path(bundle)), log_key=VerifierKey.parse(key))
    sys.exit(0 if all(v.ok for v in verdicts) else 1)
"""


def _child(how: str, bundle: Path, key: str, count: int) -> dict[str, float]:
    """Verify ``bundle`` in a new process (output discarded): records/s by the clock, its CPU time and peak RSS.

    ``how``: "command" runs ``mrx verify BUNDLE``, which reads the bundle whole;
    "load" runs `evidence.load` and `evidence.verify`, which read the records from the file a chunk at a time.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _VERIFY_IN_A_CHILD, how, str(bundle), key],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"verifying the benchmark's own bundle ({how}) failed: {done.stderr}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"records_per_s": count / seconds, "cpu_s": cpu, "peak_rss_mb": int(done.stderr.split()[-1]) / 1024}


def render(r: dict[str, Any]) -> str:
    lines = [
        f"mrx audit-log benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  {os.cpu_count()} CPUs  "
        f"Python {platform.python_version()}  SQLite {sqlite3.sqlite_version}",
        "",
    ]
    if "append" in r:
        lines += _render_log(r)
    if "bundle" in r:
        lines += _render_bundle(r["bundle"])
    lines.append(f"Peak RSS: {r['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def _render_log(r: dict[str, Any]) -> list[str]:
    small, large = r["append"]
    reprove = r["reprove"]
    lines = [
        "Append, per record, batches of 100 records of 1,600 bytes (median over batches)",
        "                              leaves   append µs   storing the record µs   append ÷ store",
    ]
    for point in (small, large):
        lines.append(f"  log of {point['leaves']:>12,}            {point['append_us']:8.1f}   "
                     f"{point['insert_us']:20.1f}   {point['append_us'] / point['insert_us']:14.2f}")
    ok = "met" if r["flatness"] <= GOAL_FLAT else "MISSED"  # growth is the risk; faster at 10⁶ is noise
    return lines + [
        f"  append at {large['leaves']:,} vs {small['leaves']:,}: {r['flatness']:+.0%}   goal at most +20%: {ok}",
        "",
        f"Checkpoint (tree head + Ed25519 note) at {r['head_size']:,} leaves: {r['checkpoint_ms']:.2f} ms",
        f"Inclusion proof at {r['head_size']:,} leaves: p50 {r['proof_ms']['p50']:.2f} ms, "
        f"p99 {r['proof_ms']['p99']:.2f} ms",
        "",
        f"Tiles export of {r['export']['leaves']:,} records: {r['export']['seconds']:.1f} s",
        f"Re-proving it offline (mrx verify --log): {reprove['records_per_s']:,.0f} records/s; "
        f"ceiling (SHA-256 of each entry, nothing else) {reprove['ceiling_per_s']:,.0f}/s; "
        f"ratio {reprove['records_per_s'] / reprove['ceiling_per_s']:.2f}   "
        f"goal ≥ {GOAL_VERIFY:,}/s: {'met' if reprove['records_per_s'] >= GOAL_VERIFY else 'MISSED'}",
        "",
    ]


def _render_bundle(b: dict[str, Any]) -> list[str]:
    rate = b["records_per_s"]
    command, streamed = b["command"], b["load_and_verify"]
    return [
        f"Verifying an evidence bundle of {b['records']:,} records ({b['bundle_mb']:.0f} MB), "
        f"median of {b['repeats']}, one core",
        f"  evidence.verify:  {rate:,.0f} records/s   goal ≥ {GOAL_VERIFY:,}/s: "
        f"{'met' if rate >= GOAL_VERIFY else 'MISSED'}   (by CPU time {b['records_per_s_cpu']:,.0f}/s)",
        f"  ceilings, same records: Ed25519 alone {b['ed25519_per_s']:,.0f}/s (ratio {rate / b['ed25519_per_s']:.2f}); "
        f"Ed25519 + XML parsed and XSD-validated {b['ed25519_xsd_per_s']:,.0f}/s (ratio "
        f"{rate / b['ed25519_xsd_per_s']:.2f}; by CPU time "
        f"{b['records_per_s_cpu'] / b['ed25519_xsd_per_s_cpu']:.2f}); the same record by record "
        f"{b['ed25519_xsd_interleaved_per_s']:,.0f}/s",
        f"  mrx verify BUNDLE, the command (bundle read whole, every verdict printed to /dev/null): "
        f"{command['records_per_s']:,.0f} records/s, peak RSS {command['peak_rss_mb']:.0f} MB",
        f"  evidence.load + verify in a process of its own (records read from the file a chunk at a time): "
        f"{streamed['records_per_s']:,.0f} records/s, peak RSS {streamed['peak_rss_mb']:.0f} MB",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10⁵ leaves instead of 10⁶")
    parser.add_argument("--leaves", type=int, help="the large log size (default 1,000,000; --quick 100,000)")
    parser.add_argument("--batches", type=int, default=30, help="batches of 100 measured at each size (30)")
    parser.add_argument("--proofs", type=int, default=500, help="inclusion proofs timed (500)")
    parser.add_argument("--bundle", type=int, help="records in the verified bundle (default 100,000; --quick 10,000)")
    parser.add_argument("--repeats", type=int, default=3, help="times the bundle is verified, the median kept (3)")
    parser.add_argument("--bundle-only", action="store_true", help="only the bundle verification, not the log")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    args.leaves = args.leaves or (100_000 if args.quick else 1_000_000)
    args.bundle = args.bundle or (10_000 if args.quick else 100_000)
    if args.leaves < 20_000:
        parser.error("--leaves must be at least 20,000")
    workdir = Path(tempfile.mkdtemp(prefix="mrx-bench-audit-"))
    try:
        result = {} if args.bundle_only else benchmark(args, workdir)
        result["bundle"] = bundle_benchmark(args.bundle, workdir, args.repeats)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
