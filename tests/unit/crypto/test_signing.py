from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from trainguard.crypto.errors import BadSignature, KeyFileError
from trainguard.crypto.signing import SigningKey, VerifyKey, canonical_json


@given(st.binary(max_size=4096))
def test_sign_verify_roundtrip_and_any_flip_fails(data: bytes) -> None:
    key = SigningKey.generate()
    sig = key.sign(data)
    key.public_key().verify(sig, data)
    bad = bytearray(sig)
    bad[len(bad) // 2] ^= 1
    with pytest.raises(BadSignature):
        key.public_key().verify(bytes(bad), data)


def test_save_load_modes_and_repr_hides_key(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "keys" / "node.ed25519"
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = SigningKey.load(path)
    assert loaded.public_key() == VerifyKey.load(path.with_name("node.ed25519.pub"))
    assert "PRIVATE" not in repr(loaded) and loaded.key_id in repr(loaded)


def test_wrong_key_type_is_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "x.pub"
    p.write_bytes(b"not a key")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        VerifyKey.load(p)


def test_canonical_json_is_order_independent() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": [1, 2], "b": 1})
    assert canonical_json({"a": "é"}) == '{"a":"é"}'.encode()
