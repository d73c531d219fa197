"""torch.save straight into a SealedWriter and torch.load(weights_only=True) from a reader."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainguard.crypto.errors import SealedStreamError
from trainguard.crypto.keyring import Keyring
from trainguard.crypto.sealed.stream import HEADER_SIZE, SealedReader, SealedWriter

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


class WriteOnly:
    """A pipe-like sink: no seek, no tell, so torch cannot rewind into what it wrote."""

    def __init__(self, f) -> None:  # type: ignore[no-untyped-def]
        self._f = f

    def write(self, b) -> int:  # type: ignore[no-untyped-def]
        return self._f.write(b)

    def flush(self) -> None:
        self._f.flush()


def _state() -> dict[str, object]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(300, 200, generator=g),
        "b": torch.arange(1000, dtype=torch.int64),
        "half": torch.randn(17, generator=g).half(),
        "step": 42,
    }


def test_torch_save_into_writer_and_weights_only_load(keyring: Keyring, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt.tgs"
    state = _state()
    with open(path, "wb") as f, SealedWriter(WriteOnly(f), keyring, segment_size=4096) as w:
        torch.save(state, w)
    assert b"PK\x03\x04" not in path.read_bytes()[:4096]
    with open(path, "rb") as f:
        loaded = torch.load(SealedReader(f, keyring), weights_only=True)
    assert loaded["step"] == 42
    for k in ("w", "b", "half"):
        assert torch.equal(loaded[k], state[k])


def test_tampered_checkpoint_never_loads(keyring: Keyring, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt.tgs"
    with open(path, "wb") as f, SealedWriter(f, keyring, segment_size=4096) as w:
        torch.save(_state(), w)
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE + 5000] ^= 4
    path.write_bytes(bytes(raw))
    with open(path, "rb") as f, pytest.raises(SealedStreamError):
        torch.load(SealedReader(f, keyring), weights_only=True)
