"""Signed notes, checkpoints and cosignatures: the C2SP formats auditors check with their own tools.

Pure: text and keys in, text out. Three specifications, all Ed25519:

``c2sp.org/signed-note``
    A note is UTF-8 text ending in a newline, a blank line, then one line per
    signature::

        <text lines>\\n
        \\n
        — <key name> base64(key ID (4 bytes) || signature)\\n

    A key is named by a string without spaces or ``+``; its 4-byte ID is the
    start of SHA-256(name || 0x0A || type || public key), type 0x01 for a plain
    Ed25519 signature over the text. The public key is published as a
    *verifier key*: ``name+hex(key ID)+base64(type || public key)``.

``c2sp.org/tlog-checkpoint``
    The text of the note a log signs: its origin, its size in decimal and
    its root hash in base64, one per line (mrx adds no extension lines). The
    log's key name is the origin.

``c2sp.org/tlog-cosignature`` v1
    A witness's signature on a checkpoint, type 0x04: the signature field is
    an 8-byte big-endian UNIX time followed by the Ed25519 signature of
    ``"cosignature/v1\\ntime <time>\\n" || checkpoint text``.

Parsing reads hostile input: a note of more than `MAX_NOTE_BYTES` or with
more than `MAX_SIGNATURES` lines is refused before any signature is checked,
and every refusal is a `NoteError` saying what is wrong. A signature by a key
the verifier does not know is ignored, as the specification requires;
one that names a known key but does not verify is an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

MAX_NOTE_BYTES = 1 << 16
MAX_SIGNATURES = 100
ED25519 = 0x01
COSIGNATURE_V1 = 0x04
_DASH = "\u2014"
_NAME = re.compile(r"[^\s+]+")
DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
"""A tree size or index as the C2SP formats write it: ASCII decimal, no leading zeros."""
_TYPES = {ED25519: "Ed25519", COSIGNATURE_V1: "Ed25519 cosignature/v1"}


class NoteError(ValueError):
    """A note, checkpoint or key that cannot be used; the message says why."""


def key_id(name: str, kind: int, public: bytes) -> bytes:
    """The 4-byte ID of a note key."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + public).digest()[:4]


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A note signer's public key: its name, type (0x01 log, 0x04 witness) and Ed25519 key."""

    name: str
    kind: int
    public: bytes  # raw Ed25519 public key, 32 bytes

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise NoteError(f"key name {self.name!r} is empty or has a space or '+'")
        if self.kind not in _TYPES:
            raise NoteError(f"key type 0x{self.kind:02x} is not one mrx uses (0x01 Ed25519, 0x04 cosignature/v1)")
        if len(self.public) != 32:
            raise NoteError(f"an Ed25519 public key is 32 bytes, not {len(self.public)}")

    @property
    def id(self) -> bytes:
        return key_id(self.name, self.kind, self.public)

    def cosigning(self) -> VerifierKey:
        """The same Ed25519 key as a witness's cosigning key (type 0x04) under the same name.

        An mrx node witnesses with its log key, so a partner's log key also names its witness key."""
        return VerifierKey(self.name, COSIGNATURE_V1, self.public)

    def __str__(self) -> str:
        """The verifier key string, ``name+hex ID+base64(type || key)``."""
        return f"{self.name}+{self.id.hex()}+{base64.b64encode(bytes([self.kind]) + self.public).decode()}"

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """The key a verifier key string describes; `NoteError` if it is malformed or its ID does not match."""
        parts = text.strip().split("+", 2)  # the name has no "+"; base64 may
        if len(parts) != 3:
            raise NoteError(f"{text!r} is not a verifier key (name+keyid+base64)")
        name, hex_id, encoded = parts
        try:
            raw = base64.b64decode(encoded, validate=True)
            claimed = bytes.fromhex(hex_id)
        except (binascii.Error, ValueError):
            raise NoteError(f"verifier key {text!r} has a key ID or key that is not hex / base64") from None
        if not raw:
            raise NoteError(f"verifier key {text!r} has no key")
        key = cls(name, raw[0], raw[1:])
        if claimed != key.id:
            raise NoteError(f"verifier key {text!r} claims key ID {hex_id}, but its name and key give {key.id.hex()}")
        return key


class NoteSigner:
    """An Ed25519 private key that signs notes under ``name``: a log's key (0x01) or a witness's (0x04)."""

    def __init__(self, name: str, private: Ed25519PrivateKey, kind: int = ED25519) -> None:
        self._private = private
        self.verifier = VerifierKey(name, kind, private.public_key().public_bytes_raw())

    @property
    def name(self) -> str:
        return self.verifier.name

    def sign(self, text: str) -> str:
        """A plain signature line over the note ``text``."""
        if self.verifier.kind != ED25519:
            raise NoteError("a cosigning key signs with cosign(), not sign()")
        return self._line(self._private.sign(_checked_text(text).encode()))

    def cosign(self, checkpoint_text: str, timestamp: int) -> str:
        """A ``cosignature/v1`` line over a checkpoint's text, made at UNIX time ``timestamp``."""
        if self.verifier.kind != COSIGNATURE_V1:
            raise NoteError("a log key signs with sign(), not cosign()")
        stamp = timestamp.to_bytes(8, "big")
        return self._line(stamp + self._private.sign(_cosigned_message(_checked_text(checkpoint_text), timestamp)))

    def _line(self, signature: bytes) -> str:
        return f"{_DASH} {self.name} {base64.b64encode(self.verifier.id + signature).decode()}\n"


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: who claims to have signed, the key ID, and the signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    @property
    def line(self) -> str:
        return f"{_DASH} {self.name} {base64.b64encode(self.key_id + self.signature).decode()}\n"


@dataclass(frozen=True, slots=True)
class Note:
    """A parsed signed note: its text (ending in a newline) and its signature lines, unverified."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def __str__(self) -> str:
        return self.text + "\n" + "".join(s.line for s in self.signatures)

    def with_lines(self, lines: Iterable[str]) -> Note:
        """This note with more signature lines (a witness's cosignature, say), parsed from ``lines``."""
        extra = parse(self.text + "\n" + "".join(lines)).signatures
        return Note(self.text, self.signatures + extra)


def parse(note: str | bytes) -> Note:
    """Split a signed note into text and signatures; `NoteError` if it is not one."""
    if isinstance(note, bytes):
        if len(note) > MAX_NOTE_BYTES:
            raise NoteError(f"the note is {len(note)} bytes; a checkpoint is a few hundred, at most {MAX_NOTE_BYTES}")
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("the note is not UTF-8 text") from None
    if len(note) > MAX_NOTE_BYTES:
        raise NoteError(f"the note is {len(note)} characters; at most {MAX_NOTE_BYTES}")
    text, blank, signed = note.partition("\n\n")
    if not blank:
        raise NoteError("the note has no blank line between its text and its signatures")
    text += "\n"
    _checked_text(text)
    if not signed.endswith("\n"):
        raise NoteError("the note's last signature line does not end with a newline")
    lines = signed[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"the note has {len(lines)} signature lines; at most {MAX_SIGNATURES} are read")
    signatures = []
    for line in lines:
        dash, _, rest = line.partition(" ")
        name, _, encoded = rest.partition(" ")
        if dash != _DASH or not _NAME.fullmatch(name) or not encoded:
            raise NoteError(f"{line[:80]!r} is not a signature line ('— name base64')")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise NoteError(f"the signature of {name!r} is not base64") from None
        if len(raw) < 5:
            raise NoteError(f"the signature of {name!r} is too short to hold a key ID and a signature")
        signatures.append(NoteSignature(name, raw[:4], raw[4:]))
    return Note(text, tuple(signatures))


def verify(note: Note, keys: Iterable[VerifierKey]) -> list[VerifierKey]:
    """The keys among ``keys`` that signed ``note``; `NoteError` if a known key's signature fails.

    Cosignatures (0x04) come back with their times: see `cosignature_time`.
    """
    by_id = {(k.name, k.id): k for k in keys}
    signed = []
    for sig in note.signatures:
        key = by_id.get((sig.name, sig.key_id))
        if key is None:
            continue  # someone else's signature: not for us to judge
        public = Ed25519PublicKey.from_public_bytes(key.public)
        try:
            if key.kind == ED25519:
                public.verify(sig.signature, note.text.encode())
            else:
                if len(sig.signature) != 8 + 64:
                    raise InvalidSignature
                timestamp = int.from_bytes(sig.signature[:8], "big")
                public.verify(sig.signature[8:], _cosigned_message(note.text, timestamp))
        except InvalidSignature:
            raise NoteError(f"the {_TYPES[key.kind]} signature of {key.name} does not verify: "
                            "the note was altered after signing or the signature is forged") from None
        signed.append(key)
    return signed


def cosignature_time(note: Note, key: VerifierKey) -> int | None:
    """The UNIX time in ``key``'s cosignature on ``note`` (unverified: call `verify` first), or None."""
    for sig in note.signatures:
        if (sig.name, sig.key_id) == (key.name, key.id) and len(sig.signature) == 72:
            return int.from_bytes(sig.signature[:8], "big")
    return None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's claim: its origin, its size, its root hash (c2sp.org/tlog-checkpoint)."""

    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("a checkpoint's text is three lines: origin, size, root hash")
        if len(lines) > 4:
            raise NoteError("the checkpoint has extension lines; mrx checkpoints have none")
        origin, size_text, root_text = lines[:3]
        if not origin:
            raise NoteError("the checkpoint's origin line is empty")
        if not DECIMAL.fullmatch(size_text):
            raise NoteError(f"the checkpoint's size {size_text[:40]!r} is not a decimal without leading zeros")
        try:
            root = base64.b64decode(root_text, validate=True)
        except binascii.Error:
            root = b""
        if len(root) != 32:
            raise NoteError("the checkpoint's root hash line is not the base64 of 32 bytes")
        return cls(origin, int(size_text), root)


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> Note:
    """The checkpoint as a note signed by the log's key, whose name must be the origin."""
    if signer.name != checkpoint.origin:
        raise NoteError(f"the log key is named {signer.name!r}; a checkpoint's key is named by its origin "
                        f"{checkpoint.origin!r}")
    return parse(checkpoint.text() + "\n" + signer.sign(checkpoint.text()))


def open_checkpoint(note: str | bytes, log_key: VerifierKey, witnesses: Sequence[VerifierKey] = ()) -> tuple[
    Checkpoint, Note, list[VerifierKey]
]:
    """A checkpoint verified under ``log_key``, its note, and which of ``witnesses`` cosigned it."""
    parsed = parse(note)
    checkpoint = Checkpoint.from_text(parsed.text)
    if checkpoint.origin != log_key.name:
        raise NoteError(f"the checkpoint is from log {checkpoint.origin!r}, not {log_key.name!r}")
    signed = verify(parsed, [log_key, *witnesses])
    if log_key not in signed:
        raise NoteError(f"the checkpoint carries no signature by the log key {log_key}")
    return checkpoint, parsed, [k for k in signed if k != log_key]


def _checked_text(text: str) -> str:
    if not text.endswith("\n"):
        raise NoteError("a note's text ends with a newline")
    if re.search(r"[\x00-\x09\x0b-\x1f\x7f]", text):
        raise NoteError("a note's text has control characters other than newline")
    if "\n\n" in text or text.startswith("\n"):
        raise NoteError("a note's text has an empty line")
    return text


def _cosigned_message(text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode()
