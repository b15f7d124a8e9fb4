"""The audit log: append cost as the log grows, checkpoint time, proof latency, offline re-proving.

Run from the repository root (``--quick`` for a run of about half a minute):

    PYTHONPATH=.dev .venv/bin/python bench/audit.py [--quick] [--leaves N] [--json FILE]

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
  (`evidence.build`), then `evidence.verify` on it: records/s, one core.
  Ceilings, measured in the same run on the same records: Ed25519
  verification alone (libsodium, as mrx verifies), and that plus parsing the
  XML and validating it against its XSD, the two things each record's
  integrity check must do. Goal: at least 5,000 records/s.
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
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


def bundle_benchmark(count: int, workdir: Path) -> dict[str, Any]:
    """Sign ``count`` records, store them, bundle them all, verify the bundle; and the ceilings."""
    import nacl.bindings

    from mrx.keys.jws import parse_compact
    from mrx.keys.keyring import KeyStore
    from mrx.node import evidence
    from mrx.node.inputs import SealEventIn
    from mrx.node.records import RecordSigner
    from mrx.node.storage.sqlite_rows import insert_records
    from mrx.schemas import xml
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
    bundle = json.loads(json.dumps(bundle))  # as read from the file
    started = time.perf_counter()
    verdicts = evidence.verify(bundle, log_key=log_signer.verifier)
    seconds = time.perf_counter() - started
    if not all(v.ok for v in verdicts):
        raise SystemExit(f"the benchmark's own bundle did not verify: {next(v for v in verdicts if not v.ok)}")

    sample = records[: min(count, 5000)]
    public = base64.urlsafe_b64decode(keys.signing_key.public_jwk()["x"] + "==")
    parsed = [parse_compact(r.jws) for r in sample]
    started = time.perf_counter()
    for jws in parsed:
        nacl.bindings.crypto_sign_open(jws.signature + jws.signing_input, public)
    ed25519 = len(sample) / (time.perf_counter() - started)
    started = time.perf_counter()
    for jws in parsed:
        nacl.bindings.crypto_sign_open(jws.signature + jws.signing_input, public)
        xml.validate(xml.parse(jws.payload))
    with_xml = len(sample) / (time.perf_counter() - started)
    return {"records": count, "records_per_s": count / seconds, "ed25519_per_s": ed25519,
            "ed25519_xsd_per_s": with_xml, "bundle_mb": len(json.dumps(bundle)) / 1e6}


def render(r: dict[str, Any]) -> str:
    small, large = r["append"]
    reprove = r["reprove"]
    lines = [
        f"mrx audit-log benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  {os.cpu_count()} CPUs  "
        f"Python {platform.python_version()}  SQLite {sqlite3.sqlite_version}",
        "",
        "Append, per record, batches of 100 records of 1,600 bytes (median over batches)",
        "                              leaves   append µs   storing the record µs   append ÷ store",
    ]
    for point in (small, large):
        lines.append(f"  log of {point['leaves']:>12,}            {point['append_us']:8.1f}   "
                     f"{point['insert_us']:20.1f}   {point['append_us'] / point['insert_us']:14.2f}")
    ok = "met" if r["flatness"] <= GOAL_FLAT else "MISSED"  # growth is the risk; faster at 10⁶ is noise
    lines += [
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
    ]
    b = r.get("bundle")
    if b is not None:
        lines += [
            f"Verifying an evidence bundle of {b['records']:,} records ({b['bundle_mb']:.0f} MB; mrx verify BUNDLE): "
            f"{b['records_per_s']:,.0f} records/s, one core   goal ≥ {GOAL_VERIFY:,}/s: "
            f"{'met' if b['records_per_s'] >= GOAL_VERIFY else 'MISSED'}",
            f"  ceilings: Ed25519 verification alone {b['ed25519_per_s']:,.0f}/s (ratio "
            f"{b['records_per_s'] / b['ed25519_per_s']:.2f}); with the XML parsed against its XSD "
            f"{b['ed25519_xsd_per_s']:,.0f}/s (ratio {b['records_per_s'] / b['ed25519_xsd_per_s']:.2f})",
        ]
    lines.append(f"Peak RSS: {r['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10⁵ leaves instead of 10⁶")
    parser.add_argument("--leaves", type=int, help="the large log size (default 1,000,000; --quick 100,000)")
    parser.add_argument("--batches", type=int, default=30, help="batches of 100 measured at each size (30)")
    parser.add_argument("--proofs", type=int, default=500, help="inclusion proofs timed (500)")
    parser.add_argument("--bundle", type=int, help="records in the verified bundle (default 100,000; --quick 10,000)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    args.leaves = args.leaves or (100_000 if args.quick else 1_000_000)
    args.bundle = args.bundle or (10_000 if args.quick else 100_000)
    if args.leaves < 20_000:
        parser.error("--leaves must be at least 20,000")
    workdir = Path(tempfile.mkdtemp(prefix="mrx-bench-audit-"))
    try:
        result = benchmark(args, workdir)
        result["bundle"] = bundle_benchmark(args.bundle, workdir)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
