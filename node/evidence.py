"""Evidence bundles: one file that proves a set of records to an auditor, offline, without trusting the node.

A bundle (JSON, ``"format": "mrx-evidence/1"``) holds:

``records``
    each record's exact JWS, its leaf index in the node's log and its
    inclusion proof (RFC 9162) in the bundle's checkpoint; for a container,
    every record that speaks of it, and the receipts that answer them;
``checkpoint``
    the node's signed checkpoint (C2SP note) with its witnesses'
    cosignatures, and ``log`` (origin, verifier key) and ``witness_keys``;
``key_statements``
    for every signer, its chain of signed key-set statements
    (`mrx.keys.keyset`): the keys with their validity windows, each change
    signed by a key trusted before it;
``consistency``
    optionally, a consistency proof from the size of a checkpoint the
    auditor already holds (``mrx evidence --since FILE``).

`verify` reports a separate verdict per check, so that an auditor sees
what holds and what does not:

==================  =========================================================
check               holds when
==================  =========================================================
checkpoint          the note is signed by the log key (the one given with
                    ``--log-key``, else the bundle's own: said so)
cosignature         each witness key (``--witness-key``, else the bundle's)
                    cosigned the checkpoint
consistency         the checkpoint extends the one the auditor holds
keys                each signer's statement chain follows from its anchor
                    (``--anchor OWNER=THUMBPRINT``, else its first statement)
integrity           the record's JWS signature and XML (XSD) are valid and
                    its sender owns the key (`records.check_record`: the
                    body is schema-checked, not re-read into values)
key valid           the key was valid (window, not revoked) when the
                    record says it was prepared
inclusion           the record is the leaf its proof says, under the
                    checkpoint's root
==================  =========================================================

Pure apart from the clock: `build` takes what the node read, `verify` the
bundle's parsed JSON. `load` is the one reader of a bundle file: it parses
everything but the records, which `verify` then reads from the file
`CHUNK` at a time, so that memory does not grow with the bundle.

Cost. The records' integrity checks are `records.check_records`, run on
`CHUNK` records at a time (all signatures, then all the XML, then the
headers: each library stays in the CPU's caches), and an inclusion proof
climbs only until it meets a node another record's proof already proved
(`merkle.InclusionVerifier`). On the development machine a seal event
costs about 150 µs of CPU, against 220 µs record by record: 67 µs are the
Ed25519 signature (libsodium) and 37 µs the XML (parsing with the
hostile-input checks, the XSD), the two things no check can skip; the rest
is base64, the header, the JWS profile, the leaf hash and proof, and the
verdicts, a few µs each (``bench/README.md`` has the table;
``bench/audit.py`` measures records/s beside those two).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from mrx.keys.keyset import KeysetError, read_statement, trusted_keyring
from mrx.keys import notes
from mrx.keys.notes import Checkpoint, NoteError, VerifierKey, open_checkpoint
from mrx.schemas.messages import Header

from . import merkle
from .merkle import ProofError
from .records import Refusal, TrustedKey, check_records
from .storage import sqlite_audit
from .storage.sqlite_log import SqliteHashSource

FORMAT = "mrx-evidence/1"
Progress = Callable[[int, int], None]
_T = TypeVar("_T")


def build(
    db: sqlite3.Connection, *, node_id: str, log_key: VerifierKey, witness_keys: Sequence[VerifierKey],
    checkpoint: tuple[int, str], key_statements: Mapping[str, Sequence[bytes]], message_ids: Iterable[str],
    since_size: int | None = None,
) -> dict[str, Any]:
    """The bundle of ``message_ids`` (with the receipts answering them) against ``checkpoint`` (size, note)."""
    size, note = checkpoint
    source = SqliteHashSource(db)
    ids = list(message_ids)
    ids += sqlite_audit.receipts_of(db, ids)
    records = [(i, m, sender, jws) for i, m, sender, jws in sqlite_audit.logged(db, ids) if i < size]
    signers = {sender for _, _, sender, _ in records}
    bundle: dict[str, Any] = {
        "format": FORMAT,
        "made_by": node_id,
        "made_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "log": {"origin": log_key.name, "verifier_key": str(log_key)},
        "witness_keys": [str(k) for k in witness_keys],
        "checkpoint": note,
        "key_statements": {
            owner: [t.decode("ascii") for t in key_statements.get(owner, ())] for owner in sorted(signers)
        },
        "records": [
            {"leaf_index": index, "message_id": message_id, "jws": jws.decode("ascii"),
             "inclusion": [_b64(h) for h in merkle.inclusion_proof(source, index, size)]}
            for index, message_id, _, jws in records
        ],
    }
    if since_size is not None:
        bundle["consistency"] = {"from": since_size,
                                 "proof": [_b64(h) for h in merkle.consistency_proof(source, since_size, size)]}
    return bundle


@dataclass(frozen=True, slots=True)
class Verdict:
    subject: str  # "checkpoint", a witness or signer name, or a record's message ID
    check: str
    ok: bool
    detail: str


CHUNK = 256
"""Records checked together (`records.check_records`): enough to keep each library hot in the caches, few in memory."""


def verify(
    bundle: Any, *, log_key: VerifierKey | None = None, witness_keys: Sequence[VerifierKey] | None = None,
    anchors: Mapping[str, Iterable[str]] | None = None, held: str | None = None, max_xml_bytes: int = 48_000,
    now: datetime | None = None, progress: Progress | None = None,
) -> list[Verdict]:
    """Every verdict on ``bundle`` (parsed JSON, or `load`); a malformed bundle is one failing verdict.

    The records are read, checked and given their verdicts `CHUNK` at a
    time, so the decoded records in memory are never more than one chunk's.
    """
    try:
        shape = _Shape(bundle)
    except (ValueError, KeyError, TypeError) as exc:
        return [_malformed(exc)]
    clock = datetime.now(UTC)
    now = now or clock
    verdicts: list[Verdict] = []

    # The log key and the checkpoint.
    pinned = log_key is not None
    key = log_key or shape.log_key
    witnesses = list(witness_keys) if witness_keys is not None else shape.witness_keys
    try:
        checkpoint, note, _ = open_checkpoint(shape.checkpoint, key)
    except NoteError as exc:
        fault = shape.malformed_record()  # a malformed bundle is said before any other fault
        return [_malformed(fault) if fault else Verdict("checkpoint", "signature", False, str(exc))]
    source = "the key you gave" if pinned else "the bundle's own key: pin it with --log-key"
    verdicts.append(Verdict("checkpoint", "signature", True,
                            f"{checkpoint.origin}, {checkpoint.size} records, signed by {key.name} ({source})"))
    for witness in witnesses:
        try:
            cosigned = witness in notes.verify(note, [witness])
            detail = "cosigned the checkpoint" if cosigned else "no valid cosignature"
        except NoteError as exc:
            cosigned, detail = False, str(exc)
        verdicts.append(Verdict(witness.name, "cosignature", cosigned, detail))
    if held is not None:
        verdicts.append(_consistency(held, key, checkpoint, shape.consistency))

    # The signers' keys.
    keys: dict[str, TrustedKey] = {}
    for owner, statements in shape.key_statements.items():
        verdicts.append(_keys(owner, statements, (anchors or {}).get(owner), now, keys))

    # The records, a chunk at a time; the verdicts in the records' order.
    inclusion = merkle.InclusionVerifier(checkpoint.size, checkpoint.root)
    done = 0
    for chunk in _chunks(shape.records, CHUNK):
        try:
            records = [_Record.read(r) for r in chunk]
        except (ValueError, KeyError, TypeError) as exc:
            return [_malformed(exc)]
        checked = check_records([r.jws for r in records], keys.get, max_xml_bytes=max_xml_bytes, now=clock)
        included = [_inclusion(record, inclusion) for record in records]
        for record, result, included_verdict in zip(records, checked, included, strict=True):
            _integrity(record.message_id, result, verdicts)
            verdicts.append(included_verdict)
        done += len(records)
        if progress is not None:
            progress(done, shape.record_count)
    return verdicts


def _malformed(exc: Exception) -> Verdict:
    return Verdict("bundle", "format", False, f"not an {FORMAT} bundle: {exc}")


class _Shape:
    """The bundle's parts, checked for type; `ValueError`/`KeyError`/`TypeError` if it is not one.

    The records are kept as they are, and read one by one (`_Record.read`)
    when they are checked.
    """

    def __init__(self, bundle: Any) -> None:
        if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
            raise ValueError(f"its format is {bundle.get('format') if isinstance(bundle, dict) else None!r}")
        self.log_key = VerifierKey.parse(_str(bundle["log"]["verifier_key"]))
        self.witness_keys = [VerifierKey.parse(_str(k)) for k in bundle.get("witness_keys", [])]
        self.checkpoint = _str(bundle["checkpoint"])
        self.key_statements = {
            _str(owner): [_str(t).encode("ascii") for t in tokens] for owner, tokens in bundle["key_statements"].items()
        }
        records = bundle["records"]
        iter(records)  # TypeError unless it is iterable, said as reading it would say it
        self.records: Iterable[Any] = records
        self.record_count = len(records)
        consistency = bundle.get("consistency")
        self.consistency = None if consistency is None else (
            int(consistency["from"]), _hashes(consistency["proof"])
        )

    def malformed_record(self) -> Exception | None:
        """The first record's fault that makes the bundle malformed, if any."""
        try:
            for r in self.records:
                _Record.read(r)
        except (ValueError, KeyError, TypeError) as exc:
            return exc
        return None


@dataclass(frozen=True, slots=True)
class _Record:
    """One of the bundle's records, read: its leaf index, message ID, JWS and inclusion proof."""

    index: int
    message_id: str
    jws: bytes
    proof: list[bytes]

    @classmethod
    def read(cls, r: Any) -> _Record:
        return cls(int(r["leaf_index"]), _str(r["message_id"]), _str(r["jws"]).encode("ascii"), _hashes(r["inclusion"]))


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _consistency(held_note: str, key: VerifierKey, checkpoint: Checkpoint,
                 proof: tuple[int, list[bytes]] | None) -> Verdict:
    try:
        held, _, _ = open_checkpoint(held_note, key)
    except NoteError as exc:
        return Verdict("checkpoint", "consistency", False, f"the checkpoint you hold does not verify: {exc}")
    if held.size > checkpoint.size:
        return Verdict("checkpoint", "consistency", False,
                       f"the bundle's checkpoint ({checkpoint.size}) is older than the one you hold ({held.size})")
    if proof is None or proof[0] != held.size:
        if held.size == checkpoint.size and held.root == checkpoint.root:
            return Verdict("checkpoint", "consistency", True, "the same checkpoint as the one you hold")
        return Verdict("checkpoint", "consistency", False,
                       f"the bundle has no consistency proof from size {held.size}; make it with --since")
    try:
        merkle.verify_consistency(held.size, checkpoint.size, proof[1], held.root, checkpoint.root)
    except ProofError as exc:
        return Verdict("checkpoint", "consistency", False, str(exc))
    return Verdict("checkpoint", "consistency", True,
                   f"extends the checkpoint of size {held.size} you hold: nothing before it was rewritten")


def _keys(owner: str, statements: list[bytes], anchors: Iterable[str] | None, now: datetime,
          keys: dict[str, TrustedKey]) -> Verdict:
    try:
        first = read_statement(statements[0]).signer if statements else None
        trusted = trusted_keyring(statements, set(anchors) if anchors else ({first} if first else set()), now=now)
    except KeysetError as exc:
        return Verdict(owner, "keys", False, exc.detail)
    for key in trusted.keyring:
        keys[key.kid] = TrustedKey(owner, key)
    source = "from the anchor you gave" if anchors else "anchored on its own first statement: pin it with --anchor"
    return Verdict(owner, "keys", True, f"{len(list(trusted.keyring))} keys, statement {trusted.sequence}, {source}")


def _integrity(message_id: str, result: tuple[Header, TrustedKey] | Refusal, verdicts: list[Verdict]) -> None:
    """The record's ``integrity`` verdict and, if its signature and XML hold, its ``key valid`` verdict."""
    if isinstance(result, Refusal):
        if result.code == "record-key-not-valid":
            verdicts += [Verdict(message_id, "integrity", True, "signature and XML valid"),
                         Verdict(message_id, "key valid", False, result.detail)]
        else:
            verdicts.append(Verdict(message_id, "integrity", False, f"{result.code}: {result.detail}"))
        return
    header, signer = result
    if str(header.message_id) != message_id:
        verdicts.append(Verdict(message_id, "integrity", False, f"the record is message {header.message_id}"))
    else:
        verdicts += [Verdict(message_id, "integrity", True,
                             f"{header.message_type} by {header.sender}, signature and XML valid"),
                     Verdict(message_id, "key valid", True,
                             f"key {signer.key.kid} valid at {header.prepared_at.isoformat()}")]


def _inclusion(record: _Record, inclusion: merkle.InclusionVerifier) -> Verdict:
    try:
        inclusion.verify(merkle.leaf_hash(record.jws), record.index, record.proof)
    except ProofError as exc:
        return Verdict(record.message_id, "inclusion", False, f"leaf {record.index}: {exc}")
    return Verdict(record.message_id, "inclusion", True, f"leaf {record.index} of {inclusion.size}")


# -- reading a bundle file ------------------------------------------------------


def load(path: Path) -> Any:
    """The bundle in the file ``path``, for `verify`: what `json.load` would read, but ``records`` stays in the file.

    ``records`` is then a collection whose length is known and whose
    iteration reads the records from the file again, one at a time, so
    that `verify` holds one `CHUNK` of them. A bundle of 100,000 seal
    events is 260 MB of JSON: ``mrx verify`` peaks at 700 MB of memory
    when it reads it whole with `json.load`, at 170 MB with `load` (most of
    that the verdicts). The whole file is read once here, so a file that is
    not JSON in UTF-8 is refused at once, as by `json.load`: `ValueError`
    (a `json.JSONDecodeError` or `UnicodeDecodeError`), or `OSError`.
    """
    with path.open("rb") as file:
        reader = _JsonReader(file)
        if reader.peek() != "{":  # not a bundle: verify says so
            value = reader.value()
            reader.end()
            return value
        bundle: dict[str, Any] = {}
        arrays = 0
        for key in reader.members():
            if key == "records" and reader.peek() == "[":
                arrays += 1
                bundle[key] = _RecordsInFile(path, arrays, sum(1 for _ in reader.elements()))
            else:
                bundle[key] = reader.value()
        reader.end()
    return bundle


class _RecordsInFile:
    """A bundle file's ``records`` (its ``occurrence``-th, should the key repeat): their number, and each of them."""

    def __init__(self, path: Path, occurrence: int, count: int) -> None:
        self._path, self._occurrence, self._count = path, occurrence, count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Any]:
        with self._path.open("rb") as file:
            reader = _JsonReader(file)
            arrays = 0
            for key in reader.members():
                if key == "records" and reader.peek() == "[":
                    arrays += 1
                    if arrays == self._occurrence:
                        yield from reader.elements()
                        return
                    for _ in reader.elements():
                        pass
                else:
                    reader.value()


class _JsonReader:
    """A JSON text read from a binary file a block at a time: an object's members or an array's elements one by one.

    Each value is parsed by `json.JSONDecoder.raw_decode` from a text buffer
    that holds the rest of the current block; one that does not end in the
    buffer is parsed again once more of the file is read (as much again
    each time, so even a huge value is parsed only a few times).
    """

    _BLOCK = 1 << 20
    _SPACE = re.compile(r"[ \t\n\r]*")
    _DECODER = json.JSONDecoder()

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._utf8 = codecs.getincrementaldecoder("utf-8-sig")()  # json.load(bytes) also skips a BOM
        self._text = ""
        self._at = 0  # in _text
        self._dropped = 0  # characters of the file before _text
        self._eof = False

    def _read(self, size: int) -> bool:
        """Add up to ``size`` more bytes of the file to the buffer (dropping what was taken); False at its end."""
        block = b"" if self._eof else self._file.read(size)
        if not block:
            if not self._eof:
                self._eof = True
                self._utf8.decode(b"", final=True)  # UnicodeDecodeError if the file ends inside a character
            return False
        self._dropped += self._at
        self._text = self._text[self._at :] + self._utf8.decode(block)
        self._at = 0
        return True

    def peek(self) -> str:
        """The next character that is not whitespace, not taken; "" at the end of the file."""
        while True:
            self._at = self._SPACE.match(self._text, self._at).end()  # type: ignore[union-attr]  # always matches
            if self._at < len(self._text) or not self._read(self._BLOCK):
                return self._text[self._at : self._at + 1]

    def _take(self, expected: str) -> None:
        if self.peek() != expected:
            raise self._error(f"Expecting {expected!r}", self._dropped + self._at)
        self._at += 1

    def value(self) -> Any:
        """The next value."""
        self.peek()
        size = self._BLOCK
        while True:
            try:
                value, end = self._DECODER.raw_decode(self._text, self._at)
            except json.JSONDecodeError as exc:
                if self._read(size):
                    size *= 2
                    continue
                raise self._error(exc.msg, self._dropped + exc.pos) from None
            if end < len(self._text) or not self._read(size):  # else a number may go on in the next block
                self._at = end
                return value

    def members(self) -> Iterator[str]:
        """The keys of the object that comes next; the caller reads each one's value before asking for the next key."""
        return self._items("{", "}", self._key)

    def elements(self) -> Iterator[Any]:
        """The elements of the array that comes next."""
        return self._items("[", "]", self.value)

    def _items(self, opening: str, closing: str, item: Callable[[], _T]) -> Iterator[_T]:
        self._take(opening)
        if self.peek() == closing:
            self._at += 1
            return
        while True:
            yield item()
            if self.peek() != ",":
                self._take(closing)
                return
            self._at += 1

    def _key(self) -> str:
        at = self._dropped + self._at
        key = self.value()
        if not isinstance(key, str):
            raise self._error("Expecting property name enclosed in double quotes", at)
        self._take(":")
        return key

    def end(self) -> None:
        """`ValueError` unless only whitespace is left."""
        if self.peek():
            raise self._error("Extra data", self._dropped + self._at)

    @staticmethod
    def _error(message: str, position: int) -> ValueError:
        return ValueError(f"{message}: character {position} of the file")


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, found {type(value).__name__}")
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _hashes(values: Any) -> list[bytes]:
    """Proof hashes: each a string of standard base64, decoded strictly (`binascii.Error` is a `ValueError`)."""
    return [binascii.a2b_base64(v if type(v) is str else _str(v), strict_mode=True) for v in values]
