"""Fixtures for the keys tests (helpers live in support.py)."""

from __future__ import annotations

import pytest

from mrx.keys.jwks import Keyring
from mrx.keys.jws import SigningKey
from tests.keys.support import Clock, load_test_key, public


@pytest.fixture(scope="session")
def ed_key() -> SigningKey:
    return load_test_key("ed25519")


@pytest.fixture(scope="session")
def es_key() -> SigningKey:
    return load_test_key("es256")


@pytest.fixture(scope="session")
def keyring(ed_key: SigningKey, es_key: SigningKey) -> Keyring:
    return Keyring([public(ed_key), public(es_key)])


@pytest.fixture
def clock() -> Clock:
    return Clock()
