"""mrx.keys.keyring: the node's key store on disk."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from mrx.keys.jws import verify_compact
from mrx.keys.keyring import Keyring, KeyStore, KeyStoreError
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


def test_a_missing_private_key_stops_signing_but_not_rotation(store: KeyStore) -> None:
    lost = store.signing_key.kid
    (store.path / f"{lost}.pem").unlink()

    reopened = KeyStore.open(store.path)
    with pytest.raises(KeyStoreError, match=r"missing.*revoke the key and rotate"):
        _ = reopened.signing_key
    reopened.revoke(lost)
    new = reopened.rotate()

    assert reopened.signing_key.kid == new.kid


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


def test_revoking_the_active_key_stops_signing_until_rotation(store: KeyStore) -> None:
    kid = store.signing_key.kid

    store.revoke(kid)

    assert private_key_files(store.path) == []
    with pytest.raises(KeyStoreError, match=rf"no active key.*{kid}.*Rotate"):
        _ = store.signing_key
    with pytest.raises(KeyStoreError, match="no active key"):
        _ = KeyStore.open(store.path).signing_key
    new = store.rotate()
    assert store.signing_key.kid == new.kid


def test_revocation_can_move_earlier_but_not_later(store: KeyStore, clock: Clock) -> None:
    kid = store.signing_key.kid
    clock.advance(days=5)
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
