"""A node's own signing keys on disk (`KeyStore`), and the public keyring they publish.

The public side, `PublicKey` and `Keyring`, is pure and lives in `mrx.keys.jwks`;
it is re-exported here so that ``mrx.keys.keyring`` is the one import for key
management.

Layout::

    <store>/            0700  created by KeyStore.create
      jwks.json         0600  every key the node ever signed with, public half
                              only, with status and times: exactly the JWKS the
                              node publishes (format in `mrx.keys.jwks`)
      statements.json   0600  the key-set statements, a JSON list of compact
                              JWS, oldest first (format and rules in
                              `mrx.keys.keyset`); the last one's keys are
                              exactly jwks.json's
      <kid>.pem         0600  PKCS#8 private key of the active key; no other
                              private key is kept
      log.key           0600  PKCS#8 Ed25519 key that signs the audit log's
                              checkpoints and the node's cosignatures as a
                              witness (`KeyStore.note_key`); made on first use,
                              never rotated: it is the log's identity
      .lock             0600  flock'd while a change is made

Invariants, checked by `KeyStore.open` (refusals are `KeyStoreError` with a
sentence naming the fix):

* the directory and every ``*.pem`` in it give no permission to group or
  others, and no ``*.pem`` is a symbolic link;
* ``jwks.json`` is a valid key set with at most one active key;
* ``statements.json`` holds statements numbered 1, 2, ..., the last one's keys
  being ``jwks.json``'s (a store made before statements existed has none; its
  chain starts at its next change).

The active key's private file is read at open too, but a missing or wrong one
only stops signing (`KeyStore.signing_key` says why) so that the operator can
still revoke and rotate through this class.

Writing:

* A private key file is created with ``os.open(O_CREAT | O_EXCL | O_WRONLY |
  O_NOFOLLOW, 0o600)``: it is never readable by others, not even for the
  moment between creating and chmod-ing, it never replaces an existing file,
  and it is fsync'd before the index names it.
* ``statements.json`` and then ``jwks.json`` are replaced atomically: each is
  written to a temporary file, fsync'd, renamed over the old one, directory
  fsync'd. ``jwks.json`` is the commit point. After a crash it is the old one
  or the new one; a private key file it does not name as active is swept by
  the next change, and statements after the last one with its keys (at most
  the two a change writes) were never committed: open ignores them and the
  next change writes the file without them.
* Changes (`rotate`, `revoke`) hold an exclusive ``flock`` on ``.lock`` and
  re-read the store under it, so the node and an operator's command cannot
  lose each other's changes; `open` and `reload` read under a shared one, so
  they never see the statements of a change without its index.

Life cycle (semantics of the times in `mrx.keys.jwks`):

* ``create``: the first key, active from now. Statement 1, signed by it.
* ``rotate``: a new key is active from now; the previous active key becomes
  retired with ``valid_to`` the same instant, so the two windows meet exactly.
  Its public half stays in the JWKS and every record it signed still verifies.
  It signs the statement that introduces the new key, and only then is its
  private file deleted, so it never signs again; the new key signs a second
  statement with the same keys (proof of possession).
* ``revoke(kid, at)``: the key is revoked as of ``at`` (default now; earlier if
  the key is believed stolen since then; never in the future). Records signed
  before ``at`` stay valid. Revoking again with an earlier time moves
  ``revoked_at`` earlier; a later time changes nothing. The active key signs
  the statement, also when it revokes itself. Revoking the active key deletes
  its private file and stops signing until ``rotate``: it fails closed.
* With no key to sign a statement (the active key revoked, or its private
  file missing), ``revoke`` is refused and ``rotate`` needs
  ``new_anchor=True``: the new key signs the statement itself, and partners
  must be given its thumbprint out of band. Every change is a statement, so
  what partners verify and the JWKS never differ.

A `KeyStore` object shows the directory as of `open`, its own last change, or
its last `reload`. Changes made by another process (the operator's ``mrx keys
rotate`` while the node runs) are seen at the next `reload`, which costs one
``stat`` when nothing changed (it compares the index file's device, inode,
size, mtime and ctime), cheap enough to call before every signature. Until
then the node signs with a key whose window has closed; see docs/keys.md.

Deleting a file does not erase it from an SSD or a copy-on-write file system;
disk encryption is the defence for that (docs/keys.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from . import jwk, keyset, strictjson
from .jwks import Keyring, KeyringError, PublicKey
from .jws import SigningKey
from .keyset import KeysetError, Statement

INDEX = "jwks.json"
STATEMENTS = "statements.json"
LOCK = ".lock"
PRIVATE_SUFFIX = ".pem"
NOTE_KEY = "log.key"

__all__ = ["KeyStore", "KeyStoreError", "Keyring", "KeyringError", "PublicKey"]

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class KeyStoreError(Exception):
    """The key store cannot do what was asked; the message says why and what to do."""


@dataclass(frozen=True)
class _State:
    """What was loaded from disk, replaced whole so that readers never see half of a reload."""

    keyring: Keyring
    signing_key: SigningKey | None
    why_no_signing_key: str
    index_identity: tuple[int, ...]
    chain: tuple[Statement, ...]  # the committed key-set statements; empty for a store made before them


class KeyStore:
    """The signing keys of this node in a directory. Use `create` once, then `open`."""

    def __init__(self, path: Path, clock: Clock) -> None:
        """Use `KeyStore.open`."""
        self.path = path
        self._index_file = os.fspath(path / INDEX)  # reload() runs per signed batch: no Path work there
        self._clock = clock
        self._state = self._load_shared()

    @classmethod
    def create(cls, path: str | os.PathLike[str], alg: str = jwk.DEFAULT_ALG, *, clock: Clock = utc_now) -> KeyStore:
        """A new key store at ``path`` (a new or empty directory) with one active ``alg`` key."""
        path = Path(path)
        try:
            jwk.key_type_for_alg(alg)
        except ValueError as error:
            raise KeyStoreError(f"Cannot create a key store: {error}.") from None
        if (path / INDEX).exists():
            raise KeyStoreError(f"A key store already exists at {path}; open it instead, or choose another directory.")
        key = SigningKey.generate(alg)
        now = _aware(clock())
        try:
            path.mkdir(mode=0o700)
            _fsync_directory(path.parent)
        except FileExistsError:
            if not path.is_dir() or any(path.iterdir()):
                raise KeyStoreError(
                    f"{path} exists and is not an empty directory; a key store needs a new or empty one. "
                    f"(A create that was interrupted leaves a directory without {INDEX}: remove it and create again.)"
                ) from None
        except OSError as error:
            raise KeyStoreError(f"Cannot create the key store directory {path}: {error.strerror}.") from None
        try:
            os.chmod(path, 0o700)  # mkdir's mode passes through the umask; an existing directory keeps its own
            # Claiming .lock exclusively makes two concurrent creates in one directory fail instead of mixing keys.
            os.close(os.open(path / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
        except FileExistsError:
            raise KeyStoreError(f"Another key store is being created at {path}; use that one.") from None
        except OSError as error:
            raise KeyStoreError(f"Cannot prepare the key store directory {path}: {error.strerror}.") from None
        keyring = Keyring([PublicKey(key.kid, key.alg, key.public_jwk(), valid_from=now)])
        statement = _next_statement((), keyring, key, now, new_anchor=False)
        _write_private_key(path, key)
        _commit(path, [statement.token], keyring)
        return cls(path, clock)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, clock: Clock = utc_now) -> KeyStore:
        """The key store at ``path``; `KeyStoreError` if it is missing, unsafe or damaged."""
        return cls(Path(path), clock)

    @property
    def signing_key(self) -> SigningKey:
        """The active key, ready to sign; `KeyStoreError` if there is none (revoked, or its file is missing)."""
        state = self._state
        if state.signing_key is None:
            raise KeyStoreError(state.why_no_signing_key)
        return state.signing_key

    def keys(self) -> list[PublicKey]:
        """Every key of the store, oldest first, with status and times."""
        return list(self._state.keyring)

    def keyring(self) -> Keyring:
        """The public keys, as a lookup for `mrx.keys.jws.verify_compact` (``store.keyring().get``)."""
        return self._state.keyring

    def jwks(self) -> dict[str, Any]:
        """The JWKS this node publishes: every key, public half, with status and times."""
        return self._state.keyring.to_jwks()

    def statements(self) -> list[bytes]:
        """The key-set statements (compact JWS), oldest first: what partners verify with `keyset.trusted_keyring`.

        The last one's keys are exactly `jwks`. Empty for a store made before
        statements existed, until its next change.
        """
        return [statement.token for statement in self._state.chain]

    def reload(self) -> bool:
        """Re-read the store if another process changed it; True if the signing key is now another (or none).

        One ``stat`` when nothing changed. `KeyStoreError` if the changed store
        is unsafe or damaged; the previous state is kept.
        """
        before = self._state.signing_key
        try:
            identity = _identity(os.stat(self._index_file))
        except OSError as error:
            raise KeyStoreError(f"Cannot read the key index {self._index_file}: {error.strerror}.") from None
        if identity != self._state.index_identity:
            self._state = self._load_shared()
        after = self._state.signing_key
        return (before.kid if before else None) != (after.kid if after else None)

    def rotate(self, alg: str | None = None, *, new_anchor: bool = False) -> PublicKey:
        """Make a new active key (``alg``, default that of the current one) and retire the current one now.

        The current key signs the statement that introduces the new one, and the
        new key signs a second one (proof of possession). When no key can sign
        (the active key was revoked, or its private file is lost), the chain
        breaks: pass ``new_anchor=True`` to acknowledge that partners must be
        given the new key's thumbprint out of band; the new key then signs.
        """
        with self._changing() as state:
            now = _aware(self._clock())
            current = next((key for key in state.keyring if key.status == "active"), None)
            signer = state.signing_key
            if signer is None and not new_anchor:
                raise KeyStoreError(
                    f"Cannot rotate: no key can sign the statement that tells partners about the new key. "
                    f"{state.why_no_signing_key} Rotating now breaks the chain partners follow: rotate with "
                    "new_anchor=True (mrx keys rotate --new-anchor), then give each partner the new key's thumbprint "
                    "out of band to add to its anchors for this node."
                )
            if signer is not None and new_anchor:
                raise KeyStoreError(
                    f"Cannot rotate with new_anchor: key {signer.kid} can still sign the rotation, so partners will "
                    "follow it without a new anchor. Rotate without new_anchor. (If that key must no longer be "
                    "trusted, revoke it first.)"
                )
            try:
                key = SigningKey.generate(alg or (current.alg if current else jwk.DEFAULT_ALG))
            except ValueError as error:
                raise KeyStoreError(f"Cannot rotate: {error}.") from None
            new = PublicKey(key.kid, key.alg, key.public_jwk(), valid_from=now)
            if current is not None and now < current.valid_from:
                raise KeyStoreError(
                    f"Cannot rotate: the clock says {now.isoformat()}, before key {current.kid} became valid "
                    f"({current.valid_from.isoformat()}). Fix the system clock first."
                )
            keyring = Keyring([*(k.retired(now) if k is current else k for k in state.keyring), new])
            # The old key signs before its private file is swept; the new key then proves it holds its own.
            introduced = _next_statement(state.chain, keyring, signer or key, now, new_anchor=new_anchor)
            chain = [*state.chain, introduced]
            if signer is not None:
                chain.append(_next_statement(tuple(chain), keyring, key, now, new_anchor=False))
            _write_private_key(self.path, key)
            _commit(self.path, [s.token for s in chain], keyring)
            _sweep_private_keys(self.path, keep=key.kid)
        return new

    def revoke(self, kid: str, at: datetime | None = None) -> PublicKey:
        """Revoke key ``kid`` as of ``at`` (default now): records it signed from then on are invalid."""
        with self._changing() as state:
            now = _aware(self._clock())
            at = now if at is None else _aware(at)
            if at > now:
                raise KeyStoreError(
                    f"Cannot revoke as of {at.isoformat()}: that is in the future. Revoke now, or as of when "
                    "the key is believed to have been compromised."
                )
            key = state.keyring.get(kid)
            if key is None:
                known = ", ".join(k.kid for k in state.keyring)
                raise KeyStoreError(f"There is no key {kid!r} in the key store at {self.path}; its keys are {known}.")
            if key.revoked_at is not None and key.revoked_at <= at:
                return key
            signer = state.signing_key
            if signer is None:
                raise KeyStoreError(
                    f"Cannot revoke key {kid}: no key can sign the statement that tells partners. "
                    f"{state.why_no_signing_key} Rotate with new_anchor=True (mrx keys rotate --new-anchor) and give "
                    f"partners the new key's thumbprint out of band; then revoke {kid}, and the new key signs it."
                )
            revoked = key.revoked(at)
            keyring = Keyring(revoked if k is key else k for k in state.keyring)
            # The active key signs, also its own revocation: it is still valid at this instant.
            statement = _next_statement(state.chain, keyring, signer, now, new_anchor=False)
            _commit(self.path, [*(s.token for s in state.chain), statement.token], keyring)
            active = next((k.kid for k in state.keyring if k.status == "active" and k is not key), None)
            _sweep_private_keys(self.path, keep=active)
        return revoked

    def note_key(self) -> Ed25519PrivateKey:
        """The Ed25519 key of the node's audit log and witness (``log.key``), made on first use.

        Not a JWS key: it signs C2SP notes (`mrx.keys.notes`), is published as a
        note verifier key, and is never rotated, because a log's key is its identity.
        """
        path = self.path / NOTE_KEY
        with self._changing():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                key = Ed25519PrivateKey.generate()
                pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                _write_and_sync(fd, path, pem)
                _fsync_directory(self.path)
                return key
            except OSError as error:
                raise KeyStoreError(f"Cannot read the log key {path}: {error.strerror}.") from None
            with os.fdopen(fd, "rb") as file:
                pem = file.read()
        try:
            key = load_pem_private_key(pem, password=None)
        except (TypeError, ValueError, UnsupportedAlgorithm) as error:
            raise KeyStoreError(f"The log key {path} cannot be used ({error}); restore it from backup.") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyStoreError(f"The log key {path} is not an Ed25519 key; restore it from backup.")
        return key

    def __repr__(self) -> str:
        signing = self._state.signing_key
        return f"KeyStore({str(self.path)!r}, active={signing.kid if signing else None!r})"

    @contextlib.contextmanager
    def _changing(self) -> Iterator[_State]:
        """Hold the store's lock, yield its latest state, reload after the change."""
        try:
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise KeyStoreError(f"Cannot lock the key store at {self.path}: {error.strerror}.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._state = self._load()
            try:
                yield self._state
            except KeyringError as error:  # a change that would break the key set's rules
                raise KeyStoreError(f"The change was not made: {error.detail}") from None
            except OSError as error:
                raise KeyStoreError(f"The change was not made: {error.strerror} ({error.filename}).") from None
            self._state = self._load()
        finally:
            os.close(fd)  # releases the flock

    def _load_shared(self) -> _State:
        """`_load` under a shared lock, so that a change in progress (two files) is seen whole or not at all."""
        try:
            fd = os.open(self.path / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return self._load()  # no lock file: not a key store, and _load says what is wrong
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return self._load()
        finally:
            os.close(fd)

    def _load(self) -> _State:
        _check_permissions(self.path)
        index = self.path / INDEX
        try:
            with open(index, "rb") as file:
                identity = _identity(os.fstat(file.fileno()))
                data = file.read()
        except FileNotFoundError:
            raise KeyStoreError(
                f"There is no key store at {self.path} ({INDEX} is missing). Create one with KeyStore.create."
            ) from None
        except OSError as error:
            raise KeyStoreError(f"Cannot read the key index {index}: {error.strerror}.") from None
        try:
            keyring = Keyring.from_json(data)
        except KeyringError as error:
            raise KeyStoreError(f"The key index {index} is damaged: {error.detail} Restore it from backup.") from None
        active = [key for key in keyring if key.status == "active"]
        if len(active) > 1:
            kids = ", ".join(key.kid for key in active)
            raise KeyStoreError(f"The key index {index} has {len(active)} active keys ({kids}); it must have one.")
        chain = _read_chain(self.path, keyring)
        if not active:
            last = max(keyring, key=lambda key: key.valid_from, default=None)
            why = f"The key store at {self.path} has no active key"
            if last is not None and last.revoked_at is not None:
                why += f" (key {last.kid} was revoked as of {last.revoked_at.isoformat()})"
            why += ". Rotate to make a new one; with no key to sign for it, that takes new_anchor=True."
            return _State(keyring, None, why, identity, chain)
        signing_key, why = _read_private_key(self.path, active[0])
        return _State(keyring, signing_key, why, identity, chain)


def _check_permissions(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise KeyStoreError(f"There is no key store at {path}: the directory does not exist.") from None
    except OSError as error:
        raise KeyStoreError(f"Cannot read the key store directory {path}: {error.strerror}.") from None
    if not stat.S_ISDIR(mode):
        raise KeyStoreError(f"{path} is not a directory, so it is not a key store.")
    if mode & 0o077:
        raise KeyStoreError(
            f"The key store directory {path} has mode {stat.S_IMODE(mode):04o}; it must be accessible by its "
            f"owner only. Check who could have read it, then run: chmod 700 {path}"
        )
    with os.scandir(path) as entries:
        for entry in entries:
            if not entry.name.endswith(PRIVATE_SUFFIX) and entry.name != NOTE_KEY:
                continue
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode):
                raise KeyStoreError(
                    f"{entry.path} is not a regular file; private keys must be plain files in the store."
                )
            if info.st_mode & 0o077:
                raise KeyStoreError(
                    f"The private key file {entry.path} has mode {stat.S_IMODE(info.st_mode):04o}; it must be "
                    f"readable by its owner only. If others could have read it, rotate, then revoke that key; "
                    f"then run: chmod 600 {entry.path}"
                )


def _read_private_key(directory: Path, key: PublicKey) -> tuple[SigningKey | None, str]:
    """The active key's private half, or None and why it cannot be used."""
    path = directory / f"{key.kid}{PRIVATE_SUFFIX}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, (
            f"The private key file of the active key {key.kid} is missing ({path}). Restore it from backup, "
            "or rotate with new_anchor=True (no key can sign the rotation) and then revoke the key."
        )
    with os.fdopen(fd, "rb") as file:
        pem = file.read()
    try:
        signing_key = SigningKey.from_pem(pem)
    except ValueError as error:
        return None, (
            f"The private key file {path} cannot be used: {error}. Restore it from backup, "
            "or rotate with new_anchor=True."
        )
    if signing_key.kid != key.kid:
        return None, (
            f"The private key file {path} holds key {signing_key.kid}, not {key.kid}: the store was altered. "
            "Restore it from backup, or rotate with new_anchor=True and then revoke the key."
        )
    return signing_key, ""


def _write_private_key(directory: Path, key: SigningKey) -> None:
    path = directory / f"{key.kid}{PRIVATE_SUFFIX}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    _write_and_sync(fd, path, key.to_pem())
    _fsync_directory(directory)


def _read_chain(directory: Path, keyring: Keyring) -> tuple[Statement, ...]:
    """The committed statements: numbered 1, 2, ..., the last one's keys being the index's."""
    path = directory / STATEMENTS
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return ()  # a store made before statements existed: its chain starts at its next change
    except OSError as error:
        raise KeyStoreError(f"Cannot read the key-set statements {path}: {error.strerror}.") from None
    try:
        tokens = strictjson.loads(data)
        if not isinstance(tokens, list) or not all(isinstance(token, str) and token.isascii() for token in tokens):
            raise ValueError("it is not a JSON list of compact JWS strings")
        chain = tuple(keyset.read_statement(token.encode("ascii")) for token in tokens)
    except (ValueError, KeysetError) as error:
        detail = error.detail if isinstance(error, KeysetError) else str(error)
        raise KeyStoreError(f"The key-set statements {path} are damaged: {detail} Restore them from backup.") from None
    # A change writes its statements (at most two) before the index, the commit point. If it crashed in
    # between, the statements after the last one whose keys are the index's were never committed, and never
    # given to anyone (readers hold the lock). They are dropped; the next change writes the file without them.
    # Such a statement comes after the index, so it lists every key of the index; an old one would not.
    committed = next((n for n in range(len(chain), 0, -1) if chain[n - 1].keyring == keyring), 0)
    uncommitted = chain[committed:]
    if (
        [statement.sequence for statement in chain] != list(range(1, len(chain) + 1))
        or len(uncommitted) > 2
        or any(key.kid not in statement.keyring for statement in uncommitted for key in keyring)
    ):
        raise KeyStoreError(
            f"The key-set statements {path} do not match the key index {directory / INDEX}: they are not numbered "
            "1, 2, ..., or they end before the index's keys. Restore both from the same backup."
        )
    return chain[:committed]


def _next_statement(
    chain: tuple[Statement, ...], keyring: Keyring, signer: SigningKey, now: datetime, *, new_anchor: bool
) -> Statement:
    """The statement after ``chain`` that ``keyring`` is the key set as of ``now``, checked as partners will."""
    last = chain[-1] if chain else None
    if last is not None and now < last.issued_at:
        raise KeyStoreError(
            f"Cannot change the keys: the clock says {now.isoformat()}, before the last key-set statement "
            f"({last.issued_at.isoformat()}). Fix the system clock first."
        )
    token = keyset.sign_statement(signer, last.sequence + 1 if last else 1, now, keyring)
    # Walk [last, new] as a partner that trusts the last statement's signer, and the new key for a new anchor.
    anchors = {signer.kid} if new_anchor or last is None else set()
    if last is not None:
        anchors.add(last.signer)
    try:
        statement = keyset.read_statement(token)
        result = keyset.trusted_keyring([*([last.token] if last else []), token], anchors, now=now)
    except KeysetError as error:
        raise KeyStoreError(f"The change was not made: partners would refuse it. {error.detail}") from None
    if result.sequence != statement.sequence:
        refusals = " ".join(refusal.detail for refusal in result.refused)
        raise KeyStoreError(f"The change was not made: partners would refuse it. {refusals}")
    return statement


def _commit(directory: Path, statements: list[bytes], keyring: Keyring) -> None:
    """Write the statements, then the index: the commit point (see `_read_chain`)."""
    tokens = [token.decode("ascii") for token in statements]
    _replace_file(directory, STATEMENTS, json.dumps(tokens, indent=2).encode("ascii") + b"\n")
    _replace_file(directory, INDEX, json.dumps(keyring.to_jwks(), indent=2).encode("ascii") + b"\n")


def _replace_file(directory: Path, name: str, data: bytes) -> None:
    """Replace ``directory/name`` with ``data`` atomically: temporary file, fsync, rename, fsync the directory."""
    temporary = directory / f".{name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    _write_and_sync(fd, temporary, data)
    try:
        os.replace(temporary, directory / name)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)


def _write_and_sync(fd: int, path: Path, data: bytes) -> None:
    """Write ``data`` to the new file open at ``fd`` and fsync it; on failure leave no partial file."""
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _sweep_private_keys(directory: Path, keep: str | None) -> None:
    """Delete every private key file but that of ``keep``: retired and revoked keys never sign again."""
    kept = None if keep is None else f"{keep}{PRIVATE_SUFFIX}"
    for path in directory.glob(f"*{PRIVATE_SUFFIX}"):
        if path.name != kept:
            path.unlink(missing_ok=True)
    _fsync_directory(directory)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _identity(info: os.stat_result) -> tuple[int, ...]:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _aware(t: datetime) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise KeyStoreError(f"The time {t.isoformat()} has no time zone; key times must be timezone-aware.")
    return t.astimezone(UTC)
