"""mrx.keys.keyring: the node's key store on disk."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from mrx.keys import keyring as keyring_module
from mrx.keys.jws import verify_compact
from mrx.keys.keyring import Keyring, KeyStore, KeyStoreError
from mrx.keys.keyset import read_statement, trusted_keyring
from tests.keys.support import TYP, Clock

RECORD = b"<SealEventNotification>...</SealEventNotification>"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def private_key_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("*.pem"))


@contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> KeyStore:
    return KeyStore.create(tmp_path / "keys", clock=clock)


# Creating


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_create_makes_one_active_key_that_signs(alg: str, tmp_path: Path, clock: Clock) -> None:
    store = KeyStore.create(tmp_path / "keys", alg, clock=clock)

    (key,) = store.keys()
    token = store.signing_key.sign(RECORD, TYP)

    assert (key.alg, key.status, key.valid_from, key.valid_to) == (alg, "active", clock.now, None)
    assert store.signing_key.kid == key.kid
    assert verify_compact(token, store.keyring().get).payload == RECORD


def test_create_makes_owner_only_files_whatever_the_umask(tmp_path: Path, clock: Clock) -> None:
    with umask(0):
        store = KeyStore.create(tmp_path / "keys", clock=clock)

    assert mode(store.path) == 0o700
    assert mode(store.path / f"{store.signing_key.kid}.pem") == 0o600
    assert mode(store.path / "jwks.json") == 0o600


def test_the_private_key_file_is_pkcs8_pem(store: KeyStore) -> None:
    pem = (store.path / f"{store.signing_key.kid}.pem").read_bytes()

    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")


def test_the_index_holds_no_private_material(store: KeyStore) -> None:
    index = json.loads((store.path / "jwks.json").read_text())

    assert index == store.jwks()
    assert store.signing_key.private_jwk["d"] not in (store.path / "jwks.json").read_text()


def test_create_refuses_an_existing_store(store: KeyStore) -> None:
    before = store.jwks()

    with pytest.raises(KeyStoreError, match="already exists"):
        KeyStore.create(store.path)

    assert KeyStore.open(store.path).jwks() == before


def test_create_refuses_a_directory_with_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a key store")

    with pytest.raises(KeyStoreError, match="not an empty directory"):
        KeyStore.create(tmp_path)


def test_create_accepts_an_empty_directory_and_makes_it_owner_only(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o755)

    KeyStore.create(directory)

    assert mode(directory) == 0o700


def test_create_refuses_an_algorithm_mrx_does_not_sign_with(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="RS256"):
        KeyStore.create(tmp_path / "keys", "RS256")

    assert not (tmp_path / "keys").exists()


# Opening


def test_open_reads_what_create_wrote(store: KeyStore) -> None:
    again = KeyStore.open(store.path)

    assert again.keys() == store.keys()
    assert again.signing_key.kid == store.signing_key.kid


def test_open_refuses_a_directory_without_a_store(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match=r"jwks\.json is missing"):
        KeyStore.open(tmp_path)
    with pytest.raises(KeyStoreError, match="does not exist"):
        KeyStore.open(tmp_path / "nowhere")


@pytest.mark.parametrize("file_mode", [0o640, 0o604, 0o660, 0o620])
def test_open_refuses_a_private_key_others_can_access(file_mode: int, store: KeyStore) -> None:
    key_file = store.path / f"{store.signing_key.kid}.pem"
    os.chmod(key_file, file_mode)

    with pytest.raises(KeyStoreError, match=rf"mode {file_mode:04o}.*chmod 600"):
        KeyStore.open(store.path)


def test_open_refuses_a_directory_others_can_access(store: KeyStore) -> None:
    os.chmod(store.path, 0o750)

    with pytest.raises(KeyStoreError, match="chmod 700"):
        KeyStore.open(store.path)


def test_open_refuses_a_private_key_that_is_a_symbolic_link(store: KeyStore, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.pem"
    elsewhere.write_bytes(b"")
    (store.path / "planted.pem").symlink_to(elsewhere)

    with pytest.raises(KeyStoreError, match="not a regular file"):
        KeyStore.open(store.path)


def test_open_refuses_a_damaged_index(store: KeyStore) -> None:
    index = store.path / "jwks.json"
    doc = json.loads(index.read_text())
    doc["keys"][0]["kid"] = "forged"
    index.write_text(json.dumps(doc))

    with pytest.raises(KeyStoreError, match=r"damaged.*thumbprint"):
        KeyStore.open(store.path)


def test_a_missing_private_key_stops_signing_but_not_rotation_with_a_new_anchor(store: KeyStore) -> None:
    lost = store.signing_key.kid
    (store.path / f"{lost}.pem").unlink()

    reopened = KeyStore.open(store.path)
    with pytest.raises(KeyStoreError, match=r"missing.*new_anchor=True.*revoke the key"):
        _ = reopened.signing_key
    with pytest.raises(KeyStoreError, match="no key can sign"):
        reopened.revoke(lost)  # the lost key cannot sign its own revocation
    with pytest.raises(KeyStoreError, match="new_anchor=True"):
        reopened.rotate()
    new = reopened.rotate(new_anchor=True)
    revoked = reopened.revoke(lost)  # signed by the new key

    assert reopened.signing_key.kid == new.kid
    assert revoked.status == "revoked"


def test_a_private_key_file_holding_another_key_stops_signing(store: KeyStore, tmp_path: Path) -> None:
    other = KeyStore.create(tmp_path / "other")
    planted = (other.path / f"{other.signing_key.kid}.pem").read_bytes()
    target = store.path / f"{store.signing_key.kid}.pem"
    target.unlink()
    fd = os.open(target, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, planted)
    os.close(fd)

    with pytest.raises(KeyStoreError, match="store was altered"):
        _ = KeyStore.open(store.path).signing_key


# Rotating


def test_rotation_retires_the_old_key_at_the_instant_the_new_one_starts(store: KeyStore, clock: Clock) -> None:
    old = store.signing_key.kid
    at = clock.advance(days=90)

    new = store.rotate()

    retired = store.keyring().get(old)
    assert retired is not None
    assert (retired.status, retired.valid_to) == ("retired", at)
    assert (new.status, new.valid_from) == ("active", at)
    assert store.signing_key.kid == new.kid != old


def test_rotation_keeps_old_records_verifiable(store: KeyStore, clock: Clock) -> None:
    signed_at = clock.now
    old_record = store.signing_key.sign(RECORD, TYP)
    clock.advance(days=30)
    store.rotate()
    clock.advance(days=30)
    store.rotate("ES256")

    published = Keyring.from_jwks(json.loads(json.dumps(store.jwks())))  # as a partner receives it
    verified = verify_compact(old_record, published.get)

    assert verified.payload == RECORD
    assert verified.key.valid_at(signed_at)
    assert [k.status for k in published] == ["retired", "retired", "active"]
    assert store.signing_key.alg == "ES256"


def test_rotation_deletes_the_retired_private_key(store: KeyStore) -> None:
    new = store.rotate()

    assert private_key_files(store.path) == [f"{new.kid}.pem"]
    assert mode(store.path / f"{new.kid}.pem") == 0o600


def test_rotation_keeps_the_algorithm_unless_told(tmp_path: Path) -> None:
    store = KeyStore.create(tmp_path / "keys", "ES256")

    assert store.rotate().alg == "ES256"
    assert store.rotate("EdDSA").alg == "EdDSA"


def test_rotation_refuses_a_clock_that_went_back(store: KeyStore, clock: Clock) -> None:
    clock.advance(hours=-1)

    with pytest.raises(KeyStoreError, match="Fix the system clock"):
        store.rotate()

    assert len(store.keys()) == 1


def test_another_process_sees_a_rotation_at_its_next_reload(store: KeyStore) -> None:
    node = KeyStore.open(store.path)  # the running node; `store` plays the operator's command
    signing_before = node.signing_key.kid

    assert node.reload() is False  # nothing changed: one stat
    new = store.rotate()

    assert node.signing_key.kid == signing_before  # a snapshot until reloaded
    assert node.reload() is True
    assert node.signing_key.kid == new.kid
    assert node.reload() is False


def test_changes_from_two_stale_handles_are_not_lost(store: KeyStore) -> None:
    other = KeyStore.open(store.path)

    first = store.rotate()
    second = other.rotate()  # `other` never saw `first`: it re-reads under the lock

    statuses = {k.kid: k.status for k in KeyStore.open(store.path).keys()}
    assert statuses[first.kid] == "retired" and statuses[second.kid] == "active"
    assert list(statuses.values()).count("active") == 1
    assert len(statuses) == 3


# Revoking


def test_revocation_keeps_records_signed_before_it(store: KeyStore, clock: Clock) -> None:
    kid, signed_at = store.signing_key.kid, clock.now
    record = store.signing_key.sign(RECORD, TYP)
    compromised_since = clock.advance(days=10)
    clock.advance(days=2)  # the theft is discovered later
    store.rotate()

    revoked = store.revoke(kid, at=compromised_since)

    verified = verify_compact(record, store.keyring().get)  # the signature itself still verifies
    assert verified.key == revoked
    assert (revoked.status, revoked.revoked_at) == ("revoked", compromised_since)
    assert verified.key.valid_at(signed_at)  # signed before the compromise: still valid
    assert not verified.key.valid_at(compromised_since + timedelta(seconds=1))  # what the thief signs: not


def test_revoking_the_active_key_stops_signing_until_rotation_with_a_new_anchor(store: KeyStore) -> None:
    kid = store.signing_key.kid

    store.revoke(kid)

    assert private_key_files(store.path) == []
    with pytest.raises(KeyStoreError, match=rf"no active key.*{kid}.*Rotate.*new_anchor=True"):
        _ = store.signing_key
    with pytest.raises(KeyStoreError, match="no active key"):
        _ = KeyStore.open(store.path).signing_key
    with pytest.raises(KeyStoreError, match=r"breaks the chain.*new_anchor=True.*thumbprint"):
        store.rotate()
    new = store.rotate(new_anchor=True)
    assert store.signing_key.kid == new.kid


def test_revocation_can_move_earlier_but_not_later(store: KeyStore, clock: Clock) -> None:
    kid = store.signing_key.kid
    clock.advance(days=5)
    store.rotate()  # the new active key signs each revocation of the old one
    first = store.revoke(kid, at=clock.now - timedelta(days=1))

    later = store.revoke(kid)
    earlier = store.revoke(kid, at=clock.now - timedelta(days=3))

    assert later.revoked_at == first.revoked_at
    assert earlier.revoked_at == clock.now - timedelta(days=3)


def test_revocation_in_the_future_is_refused(store: KeyStore, clock: Clock) -> None:
    with pytest.raises(KeyStoreError, match="in the future"):
        store.revoke(store.signing_key.kid, at=clock.now + timedelta(minutes=1))


def test_revoking_an_unknown_kid_names_the_known_ones(store: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match=store.signing_key.kid):
        store.revoke("no-such-kid")


def test_a_revoked_key_is_published_as_revoked(store: KeyStore, clock: Clock) -> None:
    kid = store.signing_key.kid
    store.rotate()

    store.revoke(kid)

    published = {k["kid"]: k for k in store.jwks()["keys"]}
    assert published[kid]["status"] == "revoked"
    assert "revoked_at" in published[kid] and "valid_to" in published[kid]


# Key-set statements (the chain partners verify: test_keyset.py)


def signers(store: KeyStore) -> list[str]:
    return [read_statement(token).signer for token in store.statements()]


def test_the_statements_are_kept_owner_only_beside_the_index(store: KeyStore) -> None:
    path = store.path / "statements.json"

    assert mode(path) == 0o600
    assert [token.encode("ascii") for token in json.loads(path.read_text())] == store.statements()
    assert signers(store) == [store.signing_key.kid]
    assert read_statement(store.statements()[0]).keyring == store.keyring()


def test_each_change_adds_statements_whose_last_key_set_is_the_published_one(store: KeyStore, clock: Clock) -> None:
    first = store.signing_key.kid
    clock.advance(days=1)
    second = store.rotate().kid
    clock.advance(days=1)
    store.revoke(first)

    reopened = KeyStore.open(store.path)

    # create; rotation: the old key signs before its private file goes, then the new key; the active key revokes
    assert signers(store) == [first, first, second, second]
    assert [read_statement(token).sequence for token in store.statements()] == [1, 2, 3, 4]
    assert read_statement(store.statements()[-1]).keyring == store.keyring()
    assert private_key_files(store.path) == [f"{second}.pem"]
    assert reopened.statements() == store.statements()


def test_a_revocation_that_changes_nothing_adds_no_statement(store: KeyStore, clock: Clock) -> None:
    kid = store.signing_key.kid
    store.rotate()
    store.revoke(kid)
    clock.advance(hours=1)
    before = store.statements()

    store.revoke(kid)  # later than the revocation already made: nothing changes

    assert store.statements() == before


def test_rotation_with_a_new_anchor_is_refused_while_a_key_can_sign(store: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match="can still sign the rotation"):
        store.rotate(new_anchor=True)

    assert len(store.statements()) == 1 and len(store.keys()) == 1


def test_a_change_interrupted_before_its_index_leaves_no_statement(
    store: KeyStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, before = store.signing_key.kid, store.statements()
    replace_file = keyring_module._replace_file

    def crash_before_the_index(directory: Path, name: str, data: bytes) -> None:
        if name == "jwks.json":
            raise OSError(errno.EIO, "simulated crash", str(directory / name))
        replace_file(directory, name, data)

    monkeypatch.setattr(keyring_module, "_replace_file", crash_before_the_index)
    with pytest.raises(KeyStoreError, match="not made"):
        store.rotate()
    monkeypatch.undo()

    assert len(json.loads((store.path / "statements.json").read_text())) == 3  # written, never committed
    reopened = KeyStore.open(store.path, clock=clock)
    assert reopened.statements() == before
    reopened.rotate()
    result = trusted_keyring(reopened.statements(), {first}, now=clock.now)
    assert (result.keyring, result.accepted) == (reopened.keyring(), (1, 2, 3))


def test_open_refuses_damaged_statements(store: KeyStore) -> None:
    (store.path / "statements.json").write_text('["not.a.statement"]')

    with pytest.raises(KeyStoreError, match=r"statements.*damaged.*Restore"):
        KeyStore.open(store.path)


def test_open_refuses_statements_that_end_before_the_index(store: KeyStore, clock: Clock) -> None:
    path = store.path / "statements.json"
    clock.advance(days=1)
    store.rotate()
    clock.advance(days=1)
    store.rotate()
    path.write_text(json.dumps(json.loads(path.read_text())[:1]))  # an old copy

    with pytest.raises(KeyStoreError, match="do not match the key index"):
        KeyStore.open(store.path)


def test_a_store_made_before_statements_starts_its_chain_at_its_next_change(store: KeyStore, clock: Clock) -> None:
    old = store.signing_key.kid
    (store.path / "statements.json").unlink()
    legacy = KeyStore.open(store.path, clock=clock)
    assert legacy.statements() == []
    clock.advance(days=1)

    new = legacy.rotate()

    assert signers(legacy) == [old, new.kid]
    for anchor in (old, new.kid):  # partners may have been given either
        assert trusted_keyring(legacy.statements(), {anchor}, now=clock.now).keyring == legacy.keyring()


def test_a_change_with_the_clock_before_the_last_statement_is_refused(store: KeyStore, clock: Clock) -> None:
    kid = store.signing_key.kid
    clock.advance(days=1)
    store.rotate()
    clock.advance(hours=-1)

    with pytest.raises(KeyStoreError, match="before the last key-set statement.*Fix the system clock"):
        store.revoke(kid)

    assert len(store.statements()) == 3


def test_a_reader_waits_for_a_change_in_progress(store: KeyStore) -> None:
    # A change writes two files; a reader that came between them would see statements the index does not have.
    fd = os.open(store.path / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a change in progress, as `rotate` holds it
    opened: list[KeyStore] = []
    reader = threading.Thread(target=lambda: opened.append(KeyStore.open(store.path)))
    try:
        reader.start()
        reader.join(timeout=0.5)
        assert reader.is_alive() and not opened
    finally:
        os.close(fd)  # the change ends
    reader.join()

    assert opened[0].statements() == store.statements()
