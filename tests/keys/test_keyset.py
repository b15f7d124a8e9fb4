"""mrx.keys.keyset: a partner's keys are learnt only through its chain of signed key-set statements.

The partner is a real `KeyStore` on a hand-moved clock; the attacker and the
thief sign statements of their own with the pure API. Every chain the store
makes is also walked by a small independent verifier built on joserfc alone.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from joserfc import jws as joserfc_jws
from joserfc.jwk import import_key

from mrx.keys import b64url
from mrx.keys.jwks import Keyring, PublicKey
from mrx.keys.jws import SigningKey
from mrx.keys.keyring import KeyStore, KeyStoreError
from mrx.keys.keyset import (
    MAX_CLOCK_SKEW,
    TYP,
    KeysetError,
    TrustResult,
    read_statement,
    sign_statement,
    statement_payload,
    trusted_keyring,
)
from tests.keys.support import T0, VECTORS, Clock, forge, load_test_key, public

# RFC 9864 deprecates the polymorphic "EdDSA" alg name; joserfc warns about it (docs/keys.md).
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")


@pytest.fixture
def partner(tmp_path: Path, clock: Clock) -> KeyStore:
    """A partner's key store, just created: statement 1."""
    return KeyStore.create(tmp_path / "partner", clock=clock)


def walk(
    statements: Sequence[bytes], anchors: set[str], clock: Clock, previous: TrustResult | None = None
) -> TrustResult:
    return trusted_keyring(statements, anchors, previous=previous, now=clock.now)


def codes(result: TrustResult) -> list[str]:
    return [refusal.code for refusal in result.refused]


def signers(statements: Sequence[bytes]) -> list[str]:
    return [read_statement(token).signer for token in statements]


def keys_after(statement: bytes) -> list[PublicKey]:
    return list(read_statement(statement).keyring)


def swap_in(keys: Keyring, newcomer: SigningKey, at: datetime) -> Keyring:
    """``keys`` with the active key retired at ``at`` and ``newcomer`` active from then: a key swap."""
    kept = [key.retired(at) if key.status == "active" else key for key in keys]
    return Keyring([*kept, PublicKey(newcomer.kid, newcomer.alg, newcomer.public_jwk(), valid_from=at)])


def joserfc_walk(statements: Sequence[bytes], anchor: str) -> list[dict[str, Any]]:
    """The chain walked with joserfc and json only: the anchor signs first, then each key set vouches for the next.

    Independent of mrx: each signature is checked by joserfc under the key the
    previous statement lists (or, first, the key whose joserfc thumbprint is the
    anchor), and the sequence must count up by one.
    """
    trusted: dict[str, dict[str, Any]] | None = None
    payloads: list[dict[str, Any]] = []
    for token in statements:
        header, claimed = (json.loads(base64.urlsafe_b64decode(part + b"==")) for part in token.split(b".")[:2])
        if trusted is None:
            if header["kid"] != anchor:
                continue  # history from before the anchor
            trusted = {member["kid"]: member for member in claimed["keys"]}
        member = trusted[header["kid"]]
        key = import_key({name: member[name] for name in ("kty", "crv", "x", "y") if name in member})
        assert key.thumbprint() == header["kid"]
        verified = joserfc_jws.deserialize_compact(token, key, algorithms=[member["alg"]])
        doc = json.loads(verified.payload)
        assert verified.protected == {"alg": member["alg"], "kid": header["kid"], "typ": TYP}
        assert json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() == verified.payload  # canonical
        if payloads:
            assert doc["sequence"] == payloads[-1]["sequence"] + 1
        payloads.append(doc)
        trusted = {member["kid"]: member for member in doc["keys"]}
    return payloads


@pytest.fixture
def history(partner: KeyStore, clock: Clock) -> dict[str, str]:
    """The partner creates (EdDSA), rotates, rotates to ES256, and revokes its first key: 6 statements."""
    first = partner.signing_key.kid
    clock.advance(days=90)
    second = partner.rotate().kid
    clock.advance(days=90)
    third = partner.rotate("ES256").kid
    clock.advance(days=1)
    partner.revoke(first, at=T0 + timedelta(days=80))
    return {"first": first, "second": second, "third": third}


# Following a partner


def test_create_rotate_rotate_revoke_verifies_from_the_first_anchor(
    partner: KeyStore, history: dict[str, str], clock: Clock
) -> None:
    statements = partner.statements()

    result = walk(statements, {history["first"]}, clock)

    assert result.keyring == partner.keyring()
    assert result.keyring.to_jwks() == partner.jwks()
    assert (result.sequence, result.accepted, result.refused) == (6, (1, 2, 3, 4, 5, 6), ())
    first, second, third = history["first"], history["second"], history["third"]
    # create; rotate: the old key signs, the new one proves possession; again; the active key revokes.
    assert signers(statements) == [first, first, second, second, third, third]
    assert [k.status for k in result.keyring] == ["revoked", "retired", "active"]


def test_the_partners_current_key_is_anchor_enough(partner: KeyStore, history: dict[str, str], clock: Clock) -> None:
    result = walk(partner.statements(), {history["third"]}, clock)

    assert result.keyring == partner.keyring()
    assert result.accepted == (5, 6)  # from its proof of possession; what came before is history, not an error
    assert result.refused == ()


def test_joserfc_verifies_every_statement_along_the_chain(
    partner: KeyStore, history: dict[str, str], clock: Clock
) -> None:
    payloads = joserfc_walk(partner.statements(), history["first"])

    assert [doc["sequence"] for doc in payloads] == [1, 2, 3, 4, 5, 6]
    assert {"keys": payloads[-1]["keys"]} == partner.jwks()


def test_a_partner_that_rotated_twice_while_we_were_offline_is_followed(partner: KeyStore, clock: Clock) -> None:
    first = partner.signing_key.kid
    before = walk(partner.statements(), {first}, clock)
    clock.advance(days=30)
    partner.rotate()
    clock.advance(days=30)
    partner.rotate("ES256")

    result = walk(partner.statements(), {first}, clock, previous=before)

    assert result.keyring == partner.keyring()
    assert (result.accepted, result.refused) == ((2, 3, 4, 5), ())
    assert result.statements == tuple(partner.statements())


def test_a_fetch_with_nothing_new_keeps_the_keys(partner: KeyStore, history: dict[str, str], clock: Clock) -> None:
    before = walk(partner.statements(), {history["first"]}, clock)

    again = walk(partner.statements(), {history["first"]}, clock, previous=before)

    assert (again.keyring, again.sequence, again.digest) == (before.keyring, before.sequence, before.digest)
    assert (again.accepted, again.refused) == ((), ())


def test_the_accepted_statements_rebuild_the_result_after_a_restart(
    partner: KeyStore, history: dict[str, str], clock: Clock
) -> None:
    result = walk(partner.statements(), {history["second"]}, clock)

    rebuilt = walk(result.statements, {history["second"]}, clock)

    assert (rebuilt.keyring, rebuilt.sequence, rebuilt.digest) == (result.keyring, result.sequence, result.digest)
    assert result.statements == tuple(partner.statements()[2:])  # from the anchor's first statement on


# Refusing key swaps


def test_a_key_swap_signed_by_an_untrusted_key_is_refused_and_the_keys_kept(partner: KeyStore, clock: Clock) -> None:
    anchors = {partner.signing_key.kid}
    before = walk(partner.statements(), anchors, clock)
    attacker = SigningKey.generate()
    forged = sign_statement(attacker, 2, clock.advance(hours=1), swap_in(before.keyring, attacker, clock.now))

    with_previous = walk([*partner.statements(), forged], anchors, clock, previous=before)
    from_scratch = walk([*partner.statements(), forged], anchors, clock)

    for result in (with_previous, from_scratch):
        assert codes(result) == ["keyset-untrusted-signer"]
        assert result.refused[0].index == 1
        assert result.keyring == before.keyring
        assert attacker.kid not in result.keyring
    assert with_previous.accepted == ()


def test_genuine_statements_after_a_forged_one_are_still_followed(partner: KeyStore, clock: Clock) -> None:
    anchors = {partner.signing_key.kid}
    before = walk(partner.statements(), anchors, clock)
    attacker = SigningKey.generate()
    forged = sign_statement(attacker, 2, clock.advance(hours=1), swap_in(before.keyring, attacker, clock.now))
    partner.rotate()
    genuine = partner.statements()

    result = walk([genuine[0], forged, *genuine[1:]], anchors, clock, previous=before)

    assert codes(result) == ["keyset-untrusted-signer"]
    assert result.accepted == (2, 3)
    assert result.keyring == partner.keyring()


def test_a_chain_without_any_anchor_signature_trusts_nothing(partner: KeyStore, clock: Clock) -> None:
    stranger = SigningKey.generate().kid

    with pytest.raises(KeysetError) as caught:
        walk(partner.statements(), {stranger}, clock)

    assert caught.value.code == "keyset-not-trusted"
    assert stranger in caught.value.detail
    assert caught.value.refused == ()


def test_an_anchor_that_does_not_list_itself_is_not_trusted(clock: Clock) -> None:
    anchor, other = load_test_key("ed25519"), load_test_key("es256")
    token = sign_statement(anchor, 1, T0, Keyring([public(other)]))  # signed by the anchor, listing another key

    with pytest.raises(KeysetError) as caught:
        walk([token], {anchor.kid}, clock)

    assert caught.value.code == "keyset-not-trusted"
    assert [refusal.code for refusal in caught.value.refused] == ["keyset-untrusted-signer"]


# Rollback, gaps and forks


def test_a_truncated_chain_is_a_rollback_and_the_keys_are_kept(
    partner: KeyStore, history: dict[str, str], clock: Clock
) -> None:
    before = walk(partner.statements(), {history["first"]}, clock)

    for served in (partner.statements()[:3], []):
        result = walk(served, {history["first"]}, clock, previous=before)

        assert codes(result) == ["keyset-rollback"]
        assert result.refused[0].index is None
        assert (result.keyring, result.sequence, result.accepted) == (before.keyring, 6, ())


def test_a_statement_with_a_skipped_sequence_is_refused(clock: Clock) -> None:
    first, second = load_test_key("ed25519"), load_test_key("es256")
    created = Keyring([public(first)])
    s1 = sign_statement(first, 1, T0, created)
    s3 = sign_statement(first, 3, T0 + timedelta(days=1), swap_in(created, second, T0 + timedelta(days=1)))

    result = walk([s1, s3], {first.kid}, clock)

    assert codes(result) == ["keyset-sequence"]
    assert "statement(s) 2 to 2 are missing" in result.refused[0].detail
    assert (result.sequence, result.keyring) == (1, created)


def test_a_second_statement_with_a_trusted_sequence_is_a_fork(partner: KeyStore, clock: Clock) -> None:
    thief_copy = partner.signing_key  # a copy of the active key, taken by a thief
    before = walk(partner.statements(), {thief_copy.kid}, clock)
    thief = SigningKey.generate()
    other_history = sign_statement(thief_copy, 1, T0, swap_in(before.keyring, thief, T0))

    result = walk([other_history], {thief_copy.kid}, clock, previous=before)
    in_one_walk = walk([*partner.statements(), other_history], {thief_copy.kid}, clock)

    assert codes(result) == codes(in_one_walk) == ["keyset-fork"]
    assert result.keyring == in_one_walk.keyring == before.keyring


def test_the_same_statement_served_twice_is_not_a_fork(partner: KeyStore, clock: Clock) -> None:
    statements = partner.statements()

    result = walk([*statements, *statements], {partner.signing_key.kid}, clock)

    assert (result.accepted, result.refused) == ((1,), ())


# Revocation


def test_the_active_key_revokes_itself_and_can_sign_nothing_after(partner: KeyStore, clock: Clock) -> None:
    thief_copy = partner.signing_key
    compromised_since = clock.advance(days=10)
    clock.advance(days=2)
    partner.revoke(thief_copy.kid, at=compromised_since)

    result = walk(partner.statements(), {thief_copy.kid}, clock)
    (revoked,) = result.keyring
    thief = SigningKey.generate()
    takeover = sign_statement(thief_copy, 3, clock.advance(hours=1), Keyring([revoked, public(thief, clock.now)]))
    unrevoke = sign_statement(thief_copy, 3, clock.now, Keyring([replace(revoked, status="active", revoked_at=None)]))
    earlier = sign_statement(thief_copy, 3, clock.now, Keyring([revoked.revoked(compromised_since - timedelta(1))]))

    assert signers(partner.statements()) == [thief_copy.kid, thief_copy.kid]  # it signed its own revocation
    assert (revoked.status, revoked.revoked_at) == ("revoked", compromised_since)
    for statement in (takeover, unrevoke, earlier):
        after = walk([*partner.statements(), statement], {thief_copy.kid}, clock, previous=result)
        assert codes(after) == ["keyset-signer-not-valid"]  # even "earlier": it would use up sequence 3
        assert after.keyring == result.keyring


def test_after_a_self_revocation_partners_follow_only_a_new_anchor(partner: KeyStore, clock: Clock) -> None:
    old = partner.signing_key.kid
    clock.advance(days=1)
    partner.revoke(old)
    before = walk(partner.statements(), {old}, clock)
    clock.advance(hours=1)
    with pytest.raises(KeyStoreError, match="new_anchor=True"):
        partner.rotate()
    new = partner.rotate(new_anchor=True)

    not_told = walk(partner.statements(), {old}, clock, previous=before)
    told = walk(partner.statements(), {old, new.kid}, clock, previous=before)

    assert signers(partner.statements())[-1] == new.kid  # no key could continue the chain: the new key signs
    assert codes(not_told) == ["keyset-untrusted-signer"]
    assert not_told.keyring == before.keyring
    assert (told.accepted, told.refused, told.keyring) == ((3,), (), partner.keyring())


def test_rotating_then_revoking_keeps_the_chain_for_partners(partner: KeyStore, clock: Clock) -> None:
    exposed = partner.signing_key.kid
    before = walk(partner.statements(), {exposed}, clock)
    exposed_since = clock.advance(days=3)
    clock.advance(hours=2)
    partner.rotate()
    partner.revoke(exposed, at=exposed_since)

    result = walk(partner.statements(), {exposed}, clock, previous=before)

    assert (result.accepted, result.refused, result.keyring) == ((2, 3, 4), (), partner.keyring())
    assert result.keyring.get(exposed).revoked_at == exposed_since  # type: ignore[union-attr]


# Tampering and malformed statements


def tamper_payload(token: bytes, old: bytes, new: bytes) -> bytes:
    header, payload, signature = token.split(b".")
    changed = b64url.decode(payload).replace(old, new, 1)
    assert changed != b64url.decode(payload)
    return b".".join([header, b64url.encode(changed), signature])


def test_a_tampered_statement_is_refused(partner: KeyStore, history: dict[str, str], clock: Clock) -> None:
    statements = partner.statements()
    widened = tamper_payload(statements[1], b'"valid_to":"2025-06-12T09:00:00Z"', b'"valid_to":"2026-06-12T09:00:00Z"')
    header, payload, _ = statements[1].split(b".")
    other_signature = statements[0].split(b".")[2]

    for tampered in (widened, b".".join([header, payload, other_signature])):
        result = walk([statements[0], tampered, *statements[2:]], {history["first"]}, clock)

        assert codes(result)[0] == "keyset-bad-signature"
        assert result.sequence == 1


@pytest.mark.parametrize(
    ("case", "payload", "typ"),
    [
        ("a record, not a statement", b"<SealEventNotification/>", "vnd.mrx.SealEventNotification+xml"),
        ("whitespace", b'{"issued_at": "2025-03-14T09:00:00Z", "keys": [], "sequence": 1}', TYP),
        ("unsorted members", b'{"sequence":1,"issued_at":"2025-03-14T09:00:00Z","keys":[]}', TYP),
        ("a time not as mrx writes it", b'{"issued_at":"2025-03-14T10:00:00+01:00","keys":[],"sequence":1}', TYP),
        ("an extra member", b'{"issued_at":"2025-03-14T09:00:00Z","keys":[],"note":"x","sequence":1}', TYP),
        ("sequence 0", b'{"issued_at":"2025-03-14T09:00:00Z","keys":[],"sequence":0}', TYP),
        ("sequence as text", b'{"issued_at":"2025-03-14T09:00:00Z","keys":[],"sequence":"1"}', TYP),
        ("sequence as a float", b'{"issued_at":"2025-03-14T09:00:00Z","keys":[],"sequence":1.0}', TYP),
        ("a repeated member", b'{"issued_at":"2025-03-14T09:00:00Z","keys":[],"sequence":1,"sequence":2}', TYP),
        ("not JSON", b"sequence=1", TYP),
    ],
)
def test_a_statement_out_of_the_format_is_malformed(ed_key: SigningKey, case: str, payload: bytes, typ: str) -> None:
    token = forge({"alg": ed_key.alg, "kid": ed_key.kid, "typ": typ}, payload, ed_key)  # validly signed

    with pytest.raises(KeysetError) as caught:
        read_statement(token)

    assert caught.value.code == "keyset-malformed"


def key_member(key: SigningKey, **extra: str) -> dict[str, str]:
    return {**key.public_jwk(), "status": "active", "valid_from": "2025-03-14T09:00:00Z", **extra}


@pytest.mark.parametrize(
    ("case", "members"),
    [
        ("two active keys", lambda ed, es: [key_member(ed), key_member(es)]),
        ("a private key", lambda ed, es: [{**key_member(ed), "d": ed.private_jwk["d"]}]),
        ("a kid that is not the thumbprint", lambda ed, es: [{**key_member(ed), "kid": es.kid}]),
    ],
)
def test_a_statement_with_a_bad_key_set_is_malformed(
    ed_key: SigningKey, es_key: SigningKey, case: str, members
) -> None:
    doc = {"issued_at": "2025-03-14T09:00:00Z", "keys": members(ed_key, es_key), "sequence": 1}
    payload = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    token = forge({"alg": ed_key.alg, "kid": ed_key.kid, "typ": TYP}, payload, ed_key)

    with pytest.raises(KeysetError) as caught:
        read_statement(token)

    assert caught.value.code == "keyset-malformed"


def test_a_malformed_statement_in_a_chain_is_listed_and_passed_over(partner: KeyStore, clock: Clock) -> None:
    partner.rotate()
    statements = partner.statements()

    result = walk([statements[0], b"not.a.statement", *statements[1:]], {signers(statements)[0]}, clock)

    assert codes(result) == ["keyset-malformed"]
    assert result.refused[0].index == 1
    assert result.keyring == partner.keyring()


# History and time


@pytest.fixture
def state(partner: KeyStore, history: dict[str, str], clock: Clock) -> tuple[TrustResult, SigningKey]:
    """A partner's trusted state after `history`, and its active key (held by the partner, or a thief)."""
    return walk(partner.statements(), {history["first"]}, clock), partner.signing_key


def rewrite(keys: Keyring, kid: str, **changes: Any) -> Keyring:
    return Keyring(replace(key, **changes) if key.kid == kid else key for key in keys)


@pytest.mark.parametrize(
    ("case", "change", "expected"),
    [
        ("drop the revoked key", lambda ks, h, t: Keyring(k for k in ks if k.kid != h["first"]), "drops key"),
        ("un-revoke", lambda ks, h, t: rewrite(ks, h["first"], status="retired", revoked_at=None), "withdraws"),
        (
            "delay the revocation",
            lambda ks, h, t: rewrite(ks, h["first"], revoked_at=T0 + timedelta(days=85)),
            "withdraws or delays",
        ),
        ("widen a retirement", lambda ks, h, t: rewrite(ks, h["second"], valid_to=t), "changes when key"),
        ("move valid_from", lambda ks, h, t: rewrite(ks, h["third"], valid_from=T0), "moves the valid_from"),
        (
            "backdate a new key",
            lambda ks, h, t: Keyring([*ks, public(SigningKey.generate(), T0).retired(t)]),
            "cannot be backdated",
        ),
    ],
)
def test_a_trusted_key_cannot_rewrite_history(
    state: tuple[TrustResult, SigningKey], history: dict[str, str], clock: Clock, case: str, change, expected: str
) -> None:
    before, active = state
    at = clock.advance(hours=1)
    statement = sign_statement(active, before.sequence + 1, at, change(before.keyring, history, at))

    result = walk([statement], set(), clock, previous=before)

    assert codes(result) == ["keyset-history"]
    assert expected in result.refused[0].detail
    assert result.keyring == before.keyring


def test_a_trusted_key_may_add_retire_and_revoke(state: tuple[TrustResult, SigningKey], clock: Clock) -> None:
    before, active = state
    at = clock.advance(hours=1)
    newcomer = SigningKey.generate()
    keys = Keyring(key.revoked(at - timedelta(days=1)) if key.status == "retired" else key for key in before.keyring)
    statement = sign_statement(active, before.sequence + 1, at, swap_in(keys, newcomer, at))

    result = walk([statement], set(), clock, previous=before)

    assert (result.accepted, result.refused) == ((7,), ())
    assert [k.status for k in result.keyring] == ["revoked", "revoked", "retired", "active"]


def test_a_statement_issued_before_the_last_one_is_refused(state: tuple[TrustResult, SigningKey], clock: Clock) -> None:
    before, active = state
    earlier = before.issued_at - timedelta(seconds=1)

    result = walk([sign_statement(active, 7, earlier, before.keyring)], set(), clock, previous=before)

    assert codes(result) == ["keyset-time"]


def test_a_statement_from_the_future_is_refused_beyond_the_allowed_skew(
    state: tuple[TrustResult, SigningKey], clock: Clock
) -> None:
    before, active = state
    within = sign_statement(active, 7, clock.now + MAX_CLOCK_SKEW, before.keyring)
    beyond = sign_statement(active, 7, clock.now + MAX_CLOCK_SKEW + timedelta(seconds=1), before.keyring)

    assert codes(walk([beyond], set(), clock, previous=before)) == ["keyset-time"]
    assert walk([within], set(), clock, previous=before).accepted == (7,)


def test_now_must_be_timezone_aware(partner: KeyStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        trusted_keyring(partner.statements(), {partner.signing_key.kid}, now=datetime(2025, 1, 1))


# The canonical payload


def test_the_payload_is_sorted_compact_json_with_the_keys_in_store_order(
    es_key: SigningKey, ed_key: SigningKey
) -> None:
    keys = Keyring([public(es_key).retired(T0 + timedelta(days=1)), public(ed_key, T0 + timedelta(days=1))])

    payload = statement_payload(2, T0 + timedelta(days=1, microseconds=250), keys)

    doc = json.loads(payload)
    assert payload == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")
    assert list(doc) == ["issued_at", "keys", "sequence"]
    assert doc["issued_at"] == "2025-03-15T09:00:00.000250Z"
    assert [k["kid"] for k in doc["keys"]] == [es_key.kid, ed_key.kid]
    assert {"keys": doc["keys"]} == keys.to_jwks()


@pytest.mark.parametrize("sequence", [0, -1, 2**53, True])
def test_the_payload_refuses_a_sequence_out_of_range(sequence: int, ed_key: SigningKey) -> None:
    with pytest.raises(ValueError, match="sequence"):
        statement_payload(sequence, T0, Keyring([public(ed_key)]))


# Known answers (tests/keys/vectors/key-set-chain.json)

CHAIN = json.loads((VECTORS / "key-set-chain.json").read_text(encoding="utf-8"))
CHAIN_TOKENS = [case["jws"].encode("ascii") for case in CHAIN["statements"]]
CHAIN_NOW = datetime.fromisoformat(CHAIN["now"]).astimezone(UTC)


def vector_key(case: dict[str, Any]) -> SigningKey:
    return load_test_key(case["private_jwk_file"].removeprefix("TEST-ONLY-").removesuffix("-private.jwk.json"))


def test_the_second_test_key_is_derived_as_the_readme_says() -> None:
    key = load_test_key("ed25519-second")

    assert b64url.decode(key.private_jwk["d"]) == hashlib.sha256(b"mrx TEST-ONLY Ed25519 second key").digest()


@pytest.mark.parametrize("index", [0, 1, 2])
def test_each_vector_statement_is_reproduced_byte_for_byte(index: int) -> None:
    case = CHAIN["statements"][index]
    statement = read_statement(case["jws"].encode("ascii"))

    payload = statement_payload(statement.sequence, statement.issued_at, statement.keyring)

    assert payload.decode("ascii") == case["payload"]
    assert case["jws"].split(".")[1] == b64url.encode(payload).decode("ascii")
    assert statement.sequence == case["sequence"]
    assert statement.signer == case["signed_by"] == vector_key(case).kid
    assert vector_key(case).sign(payload, CHAIN["typ"]).decode("ascii") == case["jws"]  # Ed25519: deterministic


def test_the_vector_chain_gives_the_vector_keys() -> None:
    result = trusted_keyring(CHAIN_TOKENS, CHAIN["anchors"], now=CHAIN_NOW)

    assert result.keyring.to_jwks() == CHAIN["trusted_jwks"]
    assert (result.accepted, result.refused) == ((1, 2, 3), ())


def test_joserfc_walks_the_vector_chain() -> None:
    payloads = joserfc_walk(CHAIN_TOKENS, CHAIN["anchors"][0])

    assert [json.dumps(doc, sort_keys=True, separators=(",", ":")) for doc in payloads] == [
        case["payload"] for case in CHAIN["statements"]
    ]


def test_a_single_thumbprint_is_not_taken_for_a_set_of_anchors(partner: KeyStore, clock: Clock) -> None:
    with pytest.raises(TypeError, match="collection of thumbprints"):
        trusted_keyring(partner.statements(), partner.signing_key.kid, now=clock.now)
