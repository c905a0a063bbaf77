"""Signing: canonical JSON as the journal encodes it, signatures verify and refuse, key file."""

from __future__ import annotations

import json
import os
import stat

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gated.errors import ConfigError
from gated.sync.signing import (
    SignatureError,
    b64url,
    canonical_json,
    kid_of,
    load_or_create_key,
    parse_public_keys,
    public_raw,
    sign,
    verify,
)
from tests.support.schemas import validate
from tests.support.signer import tool

_SORTED = msgspec.json.Encoder(order="sorted")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_canonical_json_is_byte_identical_to_the_journals_encoder(value: object) -> None:
    assert canonical_json(value) == _SORTED.encode(value)
    assert json.loads(canonical_json(value)) == value


@given(json_values)
def test_the_reference_signer_signs_the_same_bytes(value: object) -> None:
    # tools/sign_command.py carries its own copy of canonical JSON (it must run without
    # gated): the bytes it signs are the bytes the device verifies.
    assert tool.canonical(value) == canonical_json(value)


def test_the_reference_signer_makes_the_same_signature_and_kid() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    obj = {"device_id": "d1", "n": [1, 2.5, None, True], "text": "é\n", "sig": "old"}
    assert tool.kid_of(tool.raw_public(key)) == kid_of(key)
    assert tool.sign(obj, key) == sign(obj, key)  # Ed25519 is deterministic


@pytest.mark.parametrize(("number", "text"), [
    (1e16, b"1e16"), (9999999999999998.0, b"9999999999999998.0"), (1e-5, b"0.00001"),
    (1.5e-7, b"1.5e-7"), (100.0, b"100.0"), (-0.0, b"-0.0"), (0.1, b"0.1"),
])
def test_canonical_numbers_as_documented(number: float, text: bytes) -> None:
    assert canonical_json(number) == text


def test_sign_then_verify_and_every_refusal() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = {kid_of(key): key.public_key()}
    head = {"device_id": "d1", "seq": 7, "row_hash": "a" * 64, "at": "2024-11-30T15:54:00.000000Z"}
    signed = sign(head, key)
    validate("signed_head", signed)
    assert signed["kid"] == kid_of(public_raw(key)) and len(signed["kid"]) == 16
    assert verify(signed, keys) == signed["kid"]
    forged = {**sign(head, other), "kid": signed["kid"]}
    for bad, reason, text in [
        ({**signed, "seq": 8}, "bad_signature", "bad signature"),
        (sign(head, other), "unknown_key", "unknown key"),
        (head, "unsigned", "unsigned"),
        (forged, "bad_signature", "bad signature"),
        ({**signed, "sig": "!!"}, "bad_signature", "base64url"),
    ]:
        with pytest.raises(SignatureError, match=text) as refused:
            verify(bad, keys)
        assert refused.value.reason == reason  # the code the downlink audits


def test_public_keys_parse_and_errors_name_the_key() -> None:
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    text = base64.b64encode(public_raw(key)).decode()
    assert list(parse_public_keys([text])) == [kid_of(key)]
    with pytest.raises(ConfigError, match=r"sync.service_public_keys\[1\]: expected 32 bytes"):
        parse_public_keys([text, base64.b64encode(b"short").decode()])
    with pytest.raises(ConfigError, match=r"\[0\]: not base64"):
        parse_public_keys(["not base64!"])
    assert b64url(b"\xff\xff") == "__8"


def test_device_key_is_created_0600_once_and_reloaded(tmp_path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "state" / "device-ed25519.key"
        first = load_or_create_key(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert kid_of(load_or_create_key(path)) == kid_of(first)
    os.chmod(path, 0o644)
    load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["device-ed25519.key"]
