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
bundle's parsed JSON.
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mrx.keys.jws import JwsError
from mrx.keys.keyset import KeysetError, read_statement, trusted_keyring
from mrx.keys import notes
from mrx.keys.notes import Checkpoint, NoteError, VerifierKey, open_checkpoint
from mrx.schemas.xml import XmlError

from . import merkle
from .merkle import ProofError
from .records import RecordError, TrustedKey, check_record
from .storage import sqlite_audit
from .storage.sqlite_log import SqliteHashSource

FORMAT = "mrx-evidence/1"
Progress = Callable[[int, int], None]


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


def verify(
    bundle: Any, *, log_key: VerifierKey | None = None, witness_keys: Sequence[VerifierKey] | None = None,
    anchors: Mapping[str, Iterable[str]] | None = None, held: str | None = None, max_xml_bytes: int = 48_000,
    now: datetime | None = None, progress: Progress | None = None,
) -> list[Verdict]:
    """Every verdict on ``bundle`` (parsed JSON); a malformed bundle is one failing verdict."""
    try:
        shape = _Shape(bundle)
    except (ValueError, KeyError, TypeError) as exc:
        return [Verdict("bundle", "format", False, f"not an {FORMAT} bundle: {exc}")]
    now = now or datetime.now(UTC)
    verdicts: list[Verdict] = []

    # The log key and the checkpoint.
    pinned = log_key is not None
    key = log_key or shape.log_key
    witnesses = list(witness_keys) if witness_keys is not None else shape.witness_keys
    try:
        checkpoint, note, _ = open_checkpoint(shape.checkpoint, key)
    except NoteError as exc:
        return [*verdicts, Verdict("checkpoint", "signature", False, str(exc))]
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

    # The records.
    inclusion = merkle.InclusionVerifier(checkpoint.size, checkpoint.root)
    for done, (index, message_id, jws, proof) in enumerate(shape.records, 1):
        verdicts.extend(_record(index, message_id, jws, proof, keys, inclusion, max_xml_bytes))
        if progress is not None:
            progress(done, len(shape.records))
    return verdicts


class _Shape:
    """The bundle's parts, checked for type; `ValueError`/`KeyError`/`TypeError` if it is not one."""

    def __init__(self, bundle: Any) -> None:
        if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
            raise ValueError(f"its format is {bundle.get('format') if isinstance(bundle, dict) else None!r}")
        self.log_key = VerifierKey.parse(_str(bundle["log"]["verifier_key"]))
        self.witness_keys = [VerifierKey.parse(_str(k)) for k in bundle.get("witness_keys", [])]
        self.checkpoint = _str(bundle["checkpoint"])
        self.key_statements = {
            _str(owner): [_str(t).encode("ascii") for t in tokens] for owner, tokens in bundle["key_statements"].items()
        }
        self.records = [
            (int(r["leaf_index"]), _str(r["message_id"]), _str(r["jws"]).encode("ascii"),
             [_unb64(h) for h in r["inclusion"]])
            for r in bundle["records"]
        ]
        consistency = bundle.get("consistency")
        self.consistency = None if consistency is None else (
            int(consistency["from"]), [_unb64(h) for h in consistency["proof"]]
        )


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


def _record(index: int, message_id: str, jws: bytes, proof: list[bytes], keys: dict[str, TrustedKey],
            inclusion: merkle.InclusionVerifier, max_xml_bytes: int) -> list[Verdict]:
    out = []
    try:
        header, signer = check_record(jws, keys.get, max_xml_bytes=max_xml_bytes)
    except RecordError as exc:
        if exc.code == "record-key-not-valid":
            out += [Verdict(message_id, "integrity", True, "signature and XML valid"),
                    Verdict(message_id, "key valid", False, exc.detail)]
        else:
            out.append(Verdict(message_id, "integrity", False, f"{exc.code}: {exc.detail}"))
    except (JwsError, XmlError) as exc:
        out.append(Verdict(message_id, "integrity", False, f"{exc.code}: {exc.detail}"))
    else:
        if str(header.message_id) != message_id:
            out.append(Verdict(message_id, "integrity", False, f"the record is message {header.message_id}"))
        else:
            out += [Verdict(message_id, "integrity", True,
                            f"{header.message_type} by {header.sender}, signature and XML valid"),
                    Verdict(message_id, "key valid", True,
                            f"key {signer.key.kid} valid at {header.prepared_at.isoformat()}")]
    try:
        inclusion.verify(merkle.leaf_hash(jws), index, proof)
    except ProofError as exc:
        out.append(Verdict(message_id, "inclusion", False, f"leaf {index}: {exc}"))
    else:
        out.append(Verdict(message_id, "inclusion", True, f"leaf {index} of {inclusion.size}"))
    return out


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, found {type(value).__name__}")
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any) -> bytes:
    """A proof hash: standard base64, strictly (`binascii.Error` is a `ValueError`)."""
    return binascii.a2b_base64(_str(value), strict_mode=True)

