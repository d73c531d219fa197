from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trainguard.crypto.errors import DecryptionError, KeyringError, RetiredKeyError
from trainguard.crypto.keyring import Keyring, WrappedDek


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_create_writes_private_files_and_reopens(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    ring = Keyring.create(keys, clock=Clock())
    assert ring.current_version == 1
    for p in keys.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    again = Keyring.open(keys)
    assert again.kek_id == ring.kek_id and again.current_version == 1
    assert [(v.version, v.created_at, v.retired) for v in again.versions()] == [
        (1, 1_700_000_000.0, False)
    ]
    key = (keys / "kek-v1.key").read_bytes()
    assert key.hex() not in repr(ring) and ring.kek_id in repr(ring)


def test_create_refuses_existing(tmp_path: Path) -> None:
    Keyring.create(tmp_path)
    with pytest.raises(KeyringError, match="already exists"):
        Keyring.create(tmp_path)


def test_open_missing_is_clear(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="cannot open the keyring") as exc:
        Keyring.open(tmp_path / "nope")
    assert "trainguard init" in (exc.value.tip or "")


def test_dek_wrap_survives_rotation(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path)
    dek = bytes(range(32))
    w1 = ring.wrap_dek(dek)
    clock = Clock(1_800_000_000.0)
    ring2 = Keyring.open(tmp_path, clock=clock)
    info = ring2.rotate()
    assert info.version == 2 and info.current and info.created_at == 1_800_000_000.0
    w2 = ring2.wrap_dek(dek)
    assert (w1.version, w2.version) == (1, 2)
    reopened = Keyring.open(tmp_path)
    assert reopened.unwrap_dek(w1) == dek == reopened.unwrap_dek(w2)


def test_unwrap_rejects_tampering_and_other_keyrings(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "a")
    other = Keyring.create(tmp_path / "b")
    w = ring.wrap_dek(b"k" * 32)
    bad = WrappedDek(w.kek_id, w.version, w.blob[:-1] + bytes([w.blob[-1] ^ 1]))
    with pytest.raises(DecryptionError):
        ring.unwrap_dek(bad)
    with pytest.raises(DecryptionError):
        other.unwrap_dek(w)
    # same id, another version number: the version is bound into the AAD
    ring.rotate()
    with pytest.raises(DecryptionError):
        ring.unwrap_dek(WrappedDek(w.kek_id, 2, w.blob))


def test_retire_below_names_the_version_and_deletes_old_keys(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path)
    blob = ring.encrypt_small(b"secret", b"ctx")
    ring.rotate()
    ring.rotate()
    assert ring.retire_below(3) == [1, 2]
    assert not (tmp_path / "kek-v1.key").exists() and (tmp_path / "kek-v3.key").exists()
    reopened = Keyring.open(tmp_path)
    assert [v.retired for v in reopened.versions()] == [True, True, False]
    with pytest.raises(RetiredKeyError, match="KEK version 1") as exc:
        reopened.decrypt_small(blob, b"ctx")
    assert "rewrap" in (exc.value.tip or "")
    with pytest.raises(KeyringError):
        reopened.retire_below(4)


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=512), st.binary(max_size=64))
def test_small_roundtrip_and_aad_binding(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, aad: bytes
) -> None:
    ring = _shared_ring(tmp_path_factory)
    blob = ring.encrypt_small(data, aad)
    assert ring.decrypt_small(blob, aad) == data
    with pytest.raises(DecryptionError):
        ring.decrypt_small(blob, aad + b"x")
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x80
    with pytest.raises(DecryptionError):
        ring.decrypt_small(bytes(flipped), aad)


_RING: dict[str, Keyring] = {}


def _shared_ring(factory: pytest.TempPathFactory) -> Keyring:
    if "r" not in _RING:
        _RING["r"] = Keyring.create(factory.mktemp("ring"))
    return _RING["r"]


def test_derive_key_stable_per_purpose_and_version(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path)
    a = ring.derive_key("membership")
    assert len(a) == 32
    assert Keyring.open(tmp_path).derive_key("membership") == a
    assert ring.derive_key("webhook") != a
    ring.rotate()
    assert ring.derive_key("membership") != a


def test_credentials_dir_overrides_key_file(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "keys")
    blob = ring.encrypt_small(b"x", b"")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "kek-v1.key").write_bytes(b"\0" * 32)
    (creds / "kek-v1.key").chmod(0o600)
    with pytest.raises(DecryptionError):
        Keyring.open(tmp_path / "keys", credentials_dir=creds).decrypt_small(blob, b"")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert Keyring.open(tmp_path / "keys", credentials_dir=empty).decrypt_small(blob, b"") == b"x"


def test_loose_key_file_mode_refused(tmp_path: Path) -> None:
    Keyring.create(tmp_path)
    (tmp_path / "kek-v1.key").chmod(0o644)
    with pytest.raises(KeyringError, match="readable by others"):
        Keyring.open(tmp_path).derive_key("x")


def test_known_answers(tmp_path: Path) -> None:
    """Wrapped DEKs, small blobs and derived keys are byte-exact for fixed randomness."""
    import json

    vec = json.loads((Path(__file__).parent / "vectors" / "keyring_v1.json").read_text())
    stream = bytes.fromhex(vec["random"])
    pos = [0]

    def rng(n: int) -> bytes:
        out = stream[pos[0] : pos[0] + n]
        pos[0] += n
        return out

    ring = Keyring.create(tmp_path, rng=rng, clock=lambda: 0)
    assert ring.kek_id == stream[:8].hex()
    assert ring.wrap_dek(bytes.fromhex(vec["dek"])).blob.hex() == vec["wrapped_dek"]
    blob = ring.encrypt_small(
        bytes.fromhex(vec["small_plaintext"]), bytes.fromhex(vec["small_aad"])
    )
    assert blob.hex() == vec["small_blob"]
    assert blob[:4] == b"TGK1" and blob[4:12] == stream[:8] and blob[12:16] == b"\0\0\0\1"
    assert ring.derive_key(vec["derive_purpose"]).hex() == vec["derived_key"]
    fresh = Keyring.open(tmp_path)
    assert fresh.decrypt_small(blob, bytes.fromhex(vec["small_aad"])) == bytes.fromhex(
        vec["small_plaintext"]
    )


def test_open_keyring_takes_the_kek_from_the_homes_credentials_dir(tmp_path: Path) -> None:
    from trainguard.core.home import Home, HomeError
    from trainguard.crypto.keyring import open_keyring

    home = Home(tmp_path / "home")
    home.create_dirs()
    home.config_path.write_text("")
    blob = Keyring.create(home.keys_dir).encrypt_small(b"secret", b"aad")
    creds = tmp_path / "creds"
    creds.mkdir()
    (home.keys_dir / "kek-v1.key").rename(creds / "kek-v1.key")
    with pytest.raises(KeyringError, match="KEK version 1"):
        open_keyring(home).decrypt_small(blob, b"aad")
    with_creds = Home(home.root, credentials_dir=creds)
    assert open_keyring(with_creds).decrypt_small(blob, b"aad") == b"secret"
    with pytest.raises(HomeError):
        open_keyring(Home(tmp_path / "nowhere"))
