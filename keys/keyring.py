"""A node's own signing keys on disk (`KeyStore`), and the public keyring they publish.

The public side, `PublicKey` and `Keyring`, is pure and lives in `mrx.keys.jwks`;
it is re-exported here so that ``mrx.keys.keyring`` is the one import for key
management.

Layout::

    <store>/            0700  created by KeyStore.create
      jwks.json         0600  every key the node ever signed with, public half
                              only, with status and times: exactly the JWKS the
                              node publishes (format in `mrx.keys.jwks`)
      <kid>.pem         0600  PKCS#8 private key of the active key; no other
                              private key is kept
      .lock             0600  flock'd while a change is made

Invariants, checked by `KeyStore.open` (refusals are `KeyStoreError` with a
sentence naming the fix):

* the directory and every ``*.pem`` in it give no permission to group or
  others, and no ``*.pem`` is a symbolic link;
* ``jwks.json`` is a valid key set with at most one active key.

The active key's private file is read at open too, but a missing or wrong one
only stops signing (`KeyStore.signing_key` says why) so that the operator can
still revoke and rotate through this class.

Writing:

* A private key file is created with ``os.open(O_CREAT | O_EXCL | O_WRONLY |
  O_NOFOLLOW, 0o600)``: it is never readable by others, not even for the
  moment between creating and chmod-ing, it never replaces an existing file,
  and it is fsync'd before the index names it.
* ``jwks.json`` is replaced atomically: written to a temporary file, fsync'd,
  renamed over the old one, directory fsync'd. After a crash the index is the
  old one or the new one, and it is the commit point: a private key file it
  does not name as active is swept by the next change.
* Changes (`rotate`, `revoke`) hold an exclusive ``flock`` on ``.lock`` and
  re-read the index under it, so the node and an operator's command cannot
  lose each other's changes.

Life cycle (semantics of the times in `mrx.keys.jwks`):

* ``create``: the first key, active from now.
* ``rotate``: a new key is active from now; the previous active key becomes
  retired with ``valid_to`` the same instant, so the two windows meet exactly.
  Its public half stays in the JWKS and every record it signed still verifies;
  its private file is deleted, so it never signs again.
* ``revoke(kid, at)``: the key is revoked as of ``at`` (default now; earlier if
  the key is believed stolen since then; never in the future). Records signed
  before ``at`` stay valid. Revoking again with an earlier time moves
  ``revoked_at`` earlier; a later time changes nothing. Revoking the active key
  deletes its private file and stops signing until ``rotate``: it fails closed.

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

from . import jwk
from .jwks import Keyring, KeyringError, PublicKey
from .jws import SigningKey

INDEX = "jwks.json"
LOCK = ".lock"
PRIVATE_SUFFIX = ".pem"

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


class KeyStore:
    """The signing keys of this node in a directory. Use `create` once, then `open`."""

    def __init__(self, path: Path, clock: Clock) -> None:
        """Use `KeyStore.open`."""
        self.path = path
        self._clock = clock
        self._state = self._load()

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
        _write_private_key(path, key)
        _write_index(path, Keyring([PublicKey(key.kid, key.alg, key.public_jwk(), valid_from=now)]))
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

    def reload(self) -> bool:
        """Re-read the store if another process changed it; True if the signing key is now another (or none).

        One ``stat`` when nothing changed. `KeyStoreError` if the changed store
        is unsafe or damaged; the previous state is kept.
        """
        before = self._state.signing_key
        try:
            identity = _identity(os.stat(self.path / INDEX))
        except OSError as error:
            raise KeyStoreError(f"Cannot read the key index {self.path / INDEX}: {error.strerror}.") from None
        if identity != self._state.index_identity:
            self._state = self._load()
        after = self._state.signing_key
        return (before.kid if before else None) != (after.kid if after else None)

    def rotate(self, alg: str | None = None) -> PublicKey:
        """Make a new active key (``alg``, default that of the current one) and retire the current one now."""
        with self._changing() as state:
            now = _aware(self._clock())
            current = next((key for key in state.keyring if key.status == "active"), None)
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
            keys = [k.retired(now) if k is current else k for k in state.keyring]
            _write_private_key(self.path, key)
            _write_index(self.path, Keyring([*keys, new]))
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
            revoked = key.revoked(at)
            _write_index(self.path, Keyring(revoked if k is key else k for k in state.keyring))
            active = next((k.kid for k in state.keyring if k.status == "active" and k is not key), None)
            _sweep_private_keys(self.path, keep=active)
        return revoked

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
        if not active:
            last = max(keyring, key=lambda key: key.valid_from, default=None)
            why = f"The key store at {self.path} has no active key"
            if last is not None and last.revoked_at is not None:
                why += f" (key {last.kid} was revoked as of {last.revoked_at.isoformat()})"
            return _State(keyring, None, why + ". Rotate to make a new one.", identity)
        signing_key, why = _read_private_key(self.path, active[0])
        return _State(keyring, signing_key, why, identity)


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
            if not entry.name.endswith(PRIVATE_SUFFIX):
                continue
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode):
                raise KeyStoreError(
                    f"{entry.path} is not a regular file; private keys must be plain files in the store."
                )
            if info.st_mode & 0o077:
                raise KeyStoreError(
                    f"The private key file {entry.path} has mode {stat.S_IMODE(info.st_mode):04o}; it must be "
                    f"readable by its owner only. If others could have read it, revoke the key and rotate; "
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
            f"or revoke the key and rotate."
        )
    with os.fdopen(fd, "rb") as file:
        pem = file.read()
    try:
        signing_key = SigningKey.from_pem(pem)
    except ValueError as error:
        return None, f"The private key file {path} cannot be used: {error}. Restore it from backup, or rotate."
    if signing_key.kid != key.kid:
        return None, (
            f"The private key file {path} holds key {signing_key.kid}, not {key.kid}: the store was altered. "
            "Restore it from backup, or revoke the key and rotate."
        )
    return signing_key, ""


def _write_private_key(directory: Path, key: SigningKey) -> None:
    path = directory / f"{key.kid}{PRIVATE_SUFFIX}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    _write_and_sync(fd, path, key.to_pem())
    _fsync_directory(directory)


def _write_index(directory: Path, keyring: Keyring) -> None:
    data = json.dumps(keyring.to_jwks(), indent=2).encode("ascii") + b"\n"
    temporary = directory / f".{INDEX}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    _write_and_sync(fd, temporary, data)
    try:
        os.replace(temporary, directory / INDEX)
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
