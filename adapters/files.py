"""File exchange with a national system: a watched inbox of CSV and XML files, an outbox of XML files.

Layout, under the adapter's ``directory``::

    inbox/       the national system drops files here
    processed/   files whose every item the node accepted
    failed/      files with at least one refused item, each with NAME.report.json beside it
    outbox/      one XML file per outbound event, written atomically

**Inbound.** Every ``poll_seconds`` the adapter lists ``inbox/``. It reads only
names that do not start with ``.`` and end in ``.csv`` or ``.xml``, and only
once the file's size and modification time are unchanged since the previous
look and older than ``settle_seconds``: a file still being written is never
read. (Producers should still write under another name, e.g. ``.x.tmp``,
and rename: rename is atomic, a long copy is not.) Each file is processed
whole, then moved (``rename``, atomic) to ``processed/`` or ``failed/``.

- ``*.xml``: an NCTS-style CD018C or CC044C (`mrx.adapters.ncts`), one
  control result per file.
- ``*.csv``: UTF-8 with a header row; the file name's prefix says what the
  rows are (``control-results…``, ``itineraries…``, ``arrivals…``,
  ``unseal-requests…``); columns below. Each row is one item: the good rows
  are accepted, the bad ones reported with their line number, and the file
  goes to ``failed/`` so that someone looks. Lists inside a cell are
  space-separated; a consignment is ``TYPE:ID`` (``CIM:10-7080-702688``).

======================  =============================================================
file                    columns (``*`` required)
======================  =============================================================
control-results*.csv    control_id*, consignments*, control_type*, result*,
                        controlled_at*, officer*, office, container, seals_found,
                        seals_affixed, hs_codes, remarks
itineraries*.csv        consignment*, offices*, containers
arrivals*.csv           consignments*, arrived_at*, containers
unseal-requests*.csv    lock_id*, seal_id*, container*, valid_from*, valid_to*,
                        officer*, remarks
======================  =============================================================

Items go through the node's `NationalInbound` port, exactly as the HTTP API
takes them. A control result is idempotent by ``control_id`` and an
itinerary replaces the previous one, so a file processed again after a crash
(before its move) changes nothing; an arrival or an unseal request processed
twice is decided or authorised twice: move such files in with care.

**Outbound.** Each event becomes ``outbox/<seq>-<kind>-<message_id>.xml``:
written to a hidden temporary name, flushed to disk, renamed. The content is
the record's own XML message (valid against ``schemas/xsd``); the ``ncts``
kind writes partners' control results as NCTS-style CD018C instead.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import Field

from mrx.node.problems import Problem
from mrx.node.readmodel import iso
from mrx.schemas.messages import ControlResult

from . import ncts
from .interface import KINDS, AdapterConfigError, AdapterContext, DeliveryFailed, NationalInbound, Options, Outbound

log = logging.getLogger(__name__)

CSV_KINDS = ("control-results", "itineraries", "arrivals", "unseal-requests")


class FileOptions(Options):
    directory: str
    poll_seconds: float = Field(default=2.0, gt=0, le=3600)
    settle_seconds: float = Field(default=1.0, ge=0, le=3600)
    max_file_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    kinds: list[str] = sorted(set(KINDS.values()))


class NctsOptions(FileOptions):
    recipient: str = Field(default="NTA", pattern=r"^[A-Za-z0-9]{1,17}$")  # messageRecipient of CD018C files


@dataclass(frozen=True, slots=True)
class ItemError:
    line: int | None
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class FileReport:
    name: str
    accepted: tuple[int | None, ...]  # line numbers (None: the whole file was one item)
    errors: tuple[ItemError, ...]

    def json(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "processed_at": iso(datetime.now(timezone.utc).replace(microsecond=0)),
            "accepted": len(self.accepted),
            "accepted_lines": [n for n in self.accepted if n is not None],
            "errors": [{"line": e.line, "code": e.code, "detail": e.detail} for e in self.errors],
        }


Item = tuple[int | None, Callable[[], Awaitable[object]]]


def csv_items(name: str, text: str, inbound: NationalInbound) -> tuple[list[Item], list[ItemError]]:
    """The rows of one CSV file as calls on the inbound port, and the rows that are not even that."""
    kind = next((k for k in CSV_KINDS if name.lower().startswith(k)), None)
    if kind is None:
        return [], [ItemError(None, "file-kind-unknown",
                              f"{name!r}: a CSV file's name starts with what its rows are: one of {', '.join(CSV_KINDS)}")]
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    required = _REQUIRED[kind]
    missing = sorted(required - set(reader.fieldnames or ()))
    if missing:
        return [], [ItemError(1, "csv-header-invalid",
                              f"the header row lacks the column(s) {', '.join(missing)}; {kind} files have "
                              f"{', '.join(sorted(required))} (see docs/adapters.md)")]
    items: list[Item] = []
    errors: list[ItemError] = []
    build, call = _ROWS[kind], _CALLS[kind]
    try:
        for row in reader:
            line = reader.line_num
            if None in row or any(v is None for v in row.values()):
                errors.append(ItemError(line, "csv-row-invalid", "the row does not have as many cells as the header"))
                continue
            try:
                data = build({k: v.strip() for k, v in row.items()})
            except ValueError as exc:
                errors.append(ItemError(line, "csv-row-invalid", str(exc)))
                continue
            items.append((line, lambda data=data: call(inbound)(data)))
    except csv.Error as exc:
        errors.append(ItemError(reader.line_num, "csv-malformed", f"the CSV cannot be read past here: {exc}"))
    return items, errors


def _list(value: str) -> list[str]:
    return value.split()


def _refs(value: str) -> list[dict[str, str]]:
    refs = []
    for token in value.split():
        ref_type, sep, ref_id = token.partition(":")
        if not sep or not ref_id:
            raise ValueError(f"consignment {token!r} is not TYPE:ID, e.g. CIM:10-7080-702688")
        refs.append({"type": ref_type, "id": ref_id})
    return refs


def _optional(row: Mapping[str, str], name: str) -> dict[str, str]:
    value = row.get(name, "")
    return {name: value} if value else {}


def _control_result_row(row: Mapping[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "control_id": row["control_id"], "consignment_refs": _refs(row["consignments"]),
        "control_type": row["control_type"], "result": row["result"], "controlled_at": row["controlled_at"],
        "officer": row["officer"], **_optional(row, "office"), **_optional(row, "remarks"),
    }
    if row.get("container"):
        data["transport_equipment"] = [{
            "container": row["container"],
            "seals_found": [{"id": s} for s in _list(row.get("seals_found", ""))],
            "seals_affixed": [{"id": s} for s in _list(row.get("seals_affixed", ""))],
        }]
    if row.get("hs_codes"):
        data["hs_codes"] = _list(row["hs_codes"])
    return data


def _itinerary_row(row: Mapping[str, str]) -> dict[str, Any]:
    refs = _refs(row["consignment"])
    if len(refs) != 1:
        raise ValueError("an itinerary row names exactly one consignment")
    return {"consignment": refs[0], "offices": _list(row["offices"]), "containers": _list(row.get("containers", ""))}


def _arrival_row(row: Mapping[str, str]) -> dict[str, Any]:
    return {"consignments": _refs(row["consignments"]), "arrived_at": row["arrived_at"],
            "containers": _list(row.get("containers", ""))}


def _unseal_row(row: Mapping[str, str]) -> dict[str, Any]:
    return {name: row[name] for name in ("lock_id", "seal_id", "container", "valid_from", "valid_to", "officer")} | (
        _optional(row, "remarks"))


_REQUIRED: Mapping[str, frozenset[str]] = {
    "control-results": frozenset({"control_id", "consignments", "control_type", "result", "controlled_at", "officer"}),
    "itineraries": frozenset({"consignment", "offices"}),
    "arrivals": frozenset({"consignments", "arrived_at"}),
    "unseal-requests": frozenset({"lock_id", "seal_id", "container", "valid_from", "valid_to", "officer"}),
}
_ROWS: Mapping[str, Callable[[Mapping[str, str]], dict[str, Any]]] = {
    "control-results": _control_result_row, "itineraries": _itinerary_row,
    "arrivals": _arrival_row, "unseal-requests": _unseal_row,
}
_CALLS: Mapping[str, Callable[[NationalInbound], Callable[[Any], Awaitable[object]]]] = {
    "control-results": lambda port: port.control_result, "itineraries": lambda port: port.itinerary,
    "arrivals": lambda port: port.arrival, "unseal-requests": lambda port: port.unseal_request,
}


class FileExchange:
    """The ``files`` adapter: see the module docstring."""

    def __init__(self, name: str, directory: Path, options: FileOptions) -> None:
        self.name = name
        self.kinds = frozenset(options.kinds)
        self.directory = directory
        self._options = options
        self._seen: dict[str, tuple[int, int]] = {}
        self._task: asyncio.Task[None] | None = None
        self.inbox, self.processed, self.failed, self.outbox = (
            directory / "inbox", directory / "processed", directory / "failed", directory / "outbox"
        )

    options_model: type[FileOptions] = FileOptions

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any], context: AdapterContext) -> FileExchange:
        given = cls.options_model.read(name, options)
        unknown = sorted(set(given.kinds) - set(KINDS.values()))
        if unknown:
            raise AdapterConfigError(f"adapter {name!r}: kinds {unknown} are not events the node sends")
        return cls(name, (context.base_dir / given.directory).resolve(), given)

    async def start(self, inbound: NationalInbound) -> None:
        for folder in (self.inbox, self.processed, self.failed, self.outbox):
            folder.mkdir(parents=True, exist_ok=True)
        self._inbound = inbound
        self._task = asyncio.get_running_loop().create_task(self._watch(), name=f"adapter-{self.name}-inbox")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # -- inbound ----------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("adapter %s: the inbox poll failed; trying again", self.name)
            await asyncio.sleep(self._options.poll_seconds)

    async def poll(self) -> list[FileReport]:
        """Process every settled file in the inbox once; the reports of those processed."""
        reports = []
        for path in await asyncio.to_thread(self._settled):
            reports.append(await self.process(path))
        return reports

    def _settled(self) -> list[Path]:
        ready, seen = [], {}
        now = datetime.now(timezone.utc).timestamp()
        for entry in sorted(os.scandir(self.inbox), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            if not entry.name.lower().endswith((".csv", ".xml")):
                continue
            stat = entry.stat(follow_symlinks=False)
            shape = (stat.st_size, stat.st_mtime_ns)
            seen[entry.name] = shape
            if self._seen.get(entry.name) == shape and now - stat.st_mtime >= self._options.settle_seconds:
                ready.append(Path(entry.path))
        self._seen = seen
        return ready

    async def process(self, path: Path) -> FileReport:
        """One inbox file: every item submitted, then the file moved with its report."""
        name = path.name
        try:
            data = await asyncio.to_thread(self._read, path)
        except _FileRefused as refused:
            report = FileReport(name, (), (refused.error,))
        else:
            report = await self._submit(name, data)
        await asyncio.to_thread(self._file_away, path, report)
        if report.errors:
            log.warning("adapter %s: %s had %d refused item(s); see %s", self.name, name, len(report.errors),
                        self.failed / f"{name}.report.json")
        return report

    def _read(self, path: Path) -> bytes:
        size = path.stat().st_size
        if size > self._options.max_file_bytes:
            raise _FileRefused(ItemError(None, "file-too-large",
                                         f"the file is {size} bytes; this adapter takes at most "
                                         f"{self._options.max_file_bytes}: split it"))
        with path.open("rb") as fh:
            return fh.read(self._options.max_file_bytes + 1)

    async def _submit(self, name: str, data: bytes) -> FileReport:
        if name.lower().endswith(".xml"):
            try:
                control_result = ncts.decode(data)
            except ncts.NctsError as exc:
                return FileReport(name, (), (ItemError(exc.line, str(exc.code), exc.detail),))
            items: list[Item] = [(None, lambda: self._inbound.control_result(control_result))]
            errors: list[ItemError] = []
        else:
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                return FileReport(name, (), (ItemError(None, "file-not-utf8",
                                                       f"the file is not UTF-8 (byte {exc.start}); save it as UTF-8"),))
            items, errors = csv_items(name, text, self._inbound)
        accepted = []
        for line, call in items:
            try:
                await call()
            except Problem as problem:
                detail = problem.detail
                if problem.errors:
                    detail += "; " + "; ".join(f"{e.pointer}: {e.detail}" for e in problem.errors[:5])
                errors.append(ItemError(line, problem.code, detail))
            else:
                accepted.append(line)
        errors.sort(key=lambda e: e.line or 0)
        return FileReport(name, tuple(accepted), tuple(errors))

    def _file_away(self, path: Path, report: FileReport) -> None:
        folder = self.failed if report.errors else self.processed
        target = _free_name(folder, path.name)
        if report.errors:
            _write_atomically(folder / f"{target.name}.report.json",
                              json.dumps(report.json(), indent=2).encode("utf-8") + b"\n")
        os.replace(path, target)
        self._seen.pop(path.name, None)

    # -- outbound ---------------------------------------------------------------

    async def deliver(self, event: Outbound) -> None:
        content = self.render(event)
        name = f"{event.seq:012d}-{event.kind}-{event.message_id}.xml"
        try:
            await asyncio.to_thread(_write_atomically, self.outbox / name, content)
        except OSError as exc:
            raise DeliveryFailed(f"cannot write {self.outbox / name}: {exc.strerror}") from None

    def render(self, event: Outbound) -> bytes:
        return event.xml


class NctsFileExchange(FileExchange):
    """The ``ncts`` adapter: file exchange whose partners' control results go out as NCTS-style CD018C."""

    options_model = NctsOptions

    def render(self, event: Outbound) -> bytes:
        body = event.message.body
        if not isinstance(body, ControlResult):
            return event.xml
        assert isinstance(self._options, NctsOptions)
        try:
            return ncts.encode_control_result(body, event.message.header, self._options.recipient)
        except ncts.NctsError as exc:
            raise DeliveryFailed(f"the control result cannot be written as NCTS: {exc}", permanent=True) from None


class _FileRefused(Exception):
    def __init__(self, error: ItemError) -> None:
        super().__init__(error.detail)
        self.error = error


def _free_name(folder: Path, name: str) -> Path:
    target = folder / name
    if not target.exists():
        return target
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return folder / f"{name}.{stamp}"


def _write_atomically(path: Path, content: bytes) -> None:
    """Write to a hidden temporary name in the same folder, flush to disk, rename: all or nothing."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
