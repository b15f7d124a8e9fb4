"""Checkpoints and cosignatures as C2SP signed notes, checked by tlog-scales as well as by mrx."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mrx.keys import notes
from mrx.keys.notes import (
    COSIGNATURE_V1,
    Checkpoint,
    NoteError,
    NoteSigner,
    VerifierKey,
)
from tlog_scales.signing import Vkey, VkeySet
from tlog_scales.tlog import Checkpoint as ScalesCheckpoint

ORIGIN = "customs.example.cn/mrx/CN-AKL"
ROOT = hashlib.sha256(b"root").digest()


@pytest.fixture(scope="module")
def log_signer() -> NoteSigner:
    return NoteSigner(ORIGIN, Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def witness() -> NoteSigner:
    return NoteSigner("customs.example.kz/mrx/KZ-DOS", Ed25519PrivateKey.generate(), COSIGNATURE_V1)


def test_a_checkpoint_verifies_with_tlog_scales(log_signer: NoteSigner) -> None:
    note = notes.sign_checkpoint(Checkpoint(ORIGIN, 1234, ROOT), log_signer)
    theirs = ScalesCheckpoint.from_text(str(note))
    assert (theirs.origin, theirs.size, theirs.root_hash) == (ORIGIN, 1234, ROOT)
    vkey = Vkey.from_string(str(log_signer.verifier))
    assert vkey.serialize() == str(log_signer.verifier)
    theirs.verify(vkey)  # raises if the signature is wrong


def test_a_cosignature_verifies_with_tlog_scales(log_signer: NoteSigner, witness: NoteSigner) -> None:
    note = notes.sign_checkpoint(Checkpoint(ORIGIN, 7, ROOT), log_signer)
    cosigned = note.with_lines([witness.cosign(note.text, 1_764_000_000)])
    theirs = ScalesCheckpoint.from_text(str(cosigned))
    valid = VkeySet(Vkey.from_string(str(log_signer.verifier)), Vkey.from_string(str(witness.verifier)))
    assert len(valid.verify(theirs.signatures, theirs)) == 2
    checkpoint, _, cosigners = notes.open_checkpoint(str(cosigned), log_signer.verifier, [witness.verifier])
    assert checkpoint == Checkpoint(ORIGIN, 7, ROOT) and cosigners == [witness.verifier]
    assert notes.cosignature_time(cosigned, witness.verifier) == 1_764_000_000


def test_verifier_keys_round_trip_and_refuse_a_wrong_id(log_signer: NoteSigner) -> None:
    for _ in range(64):  # some keys' base64 has a "+", which also separates the string's parts
        key = NoteSigner(ORIGIN, Ed25519PrivateKey.generate()).verifier
        assert VerifierKey.parse(str(key)) == key
    text = str(log_signer.verifier)
    assert VerifierKey.parse(text) == log_signer.verifier
    name, _, key = text.split("+", 2)
    with pytest.raises(NoteError, match="claims key ID"):
        VerifierKey.parse(f"{name}+{'0' * 8}+{key}")
    with pytest.raises(NoteError, match="not a verifier key"):
        VerifierKey.parse(name)


def test_an_altered_checkpoint_is_refused(log_signer: NoteSigner) -> None:
    note = str(notes.sign_checkpoint(Checkpoint(ORIGIN, 10, ROOT), log_signer))
    forged = note.replace("\n10\n", "\n11\n")
    with pytest.raises(NoteError, match="does not verify"):
        notes.open_checkpoint(forged, log_signer.verifier)


def test_another_logs_checkpoint_is_refused(log_signer: NoteSigner) -> None:
    other = NoteSigner("customs.example.pl/mrx/PL-MAA", Ed25519PrivateKey.generate())
    note = str(notes.sign_checkpoint(Checkpoint(other.name, 1, ROOT), other))
    with pytest.raises(NoteError, match="not 'customs.example.cn"):
        notes.open_checkpoint(note, log_signer.verifier)


def test_a_checkpoint_only_a_stranger_signed_is_refused(log_signer: NoteSigner) -> None:
    stranger = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())  # same name, another key
    note = str(notes.sign_checkpoint(Checkpoint(ORIGIN, 1, ROOT), stranger))
    with pytest.raises(NoteError, match="no signature by the log key"):
        notes.open_checkpoint(note, log_signer.verifier)


@pytest.mark.parametrize(
    "text,match",
    [
        ("no blank line\n— a AAAA\n", "no blank line"),
        (f"{ORIGIN}\n1\n{base64.b64encode(ROOT).decode()}\n\n— a !!!!\n", "not base64"),
        (f"{ORIGIN}\n1\n{base64.b64encode(ROOT).decode()}\n\n- a AAAAAAA=\n", "not a signature line"),
        (f"{ORIGIN}\n1\n{base64.b64encode(ROOT).decode()}\n\n— a AAAAAAA=", "does not end with a newline"),
        (f"{ORIGIN}\x00\n1\nAA==\n\n— a AAAAAAA=\n", "control characters"),
        ("x" * (notes.MAX_NOTE_BYTES + 1), "at most"),
        (f"{ORIGIN}\n1\nroot\n\n" + "— a AAAAAAA=\n" * (notes.MAX_SIGNATURES + 1), "at most 100"),
    ],
)
def test_malformed_notes_are_refused_with_a_reason(text: str, match: str) -> None:
    with pytest.raises(NoteError, match=match):
        notes.parse(text)


@pytest.mark.parametrize(
    "text,match",
    [
        (f"{ORIGIN}\n01\n{base64.b64encode(ROOT).decode()}\n", "leading zeros"),
        (f"{ORIGIN}\n1\nAAAA\n", "32 bytes"),
        (f"{ORIGIN}\n1\n{base64.b64encode(ROOT).decode()}\nextension\n", "extension lines"),
        (f"{ORIGIN}\n1\n", "three lines"),
    ],
)
def test_malformed_checkpoints_are_refused(text: str, match: str) -> None:
    with pytest.raises(NoteError, match=match):
        Checkpoint.from_text(text)
