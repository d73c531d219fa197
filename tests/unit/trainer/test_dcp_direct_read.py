"""Sealed DCP load decrypts each same-layout tensor straight into the caller's state: equal to
plain DCP's load for every dtype and layout (differential), DCP's own reader only for what
does not match, and a tampered segment leaves no unverified plaintext in the state."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.planner import LoadItemType
from trainguard.crypto.keyring import Keyring
from trainguard.crypto.sealed.format import HEADER_SIZE, TAG_SIZE
from trainguard.crypto.signing import SigningKey
from trainguard.trainer.context import Trust
from trainguard.trainer.dcp import DcpCheckpoints, LocalKeys, signing_key_signer, trust_verifier
from trainguard.trainer.dcp.storage import _Slice, _stored_layout
from trainguard.trainer.errors import CheckpointTampered

from tests.support.dist_group import single_rank_group

SEGMENT = 1 << 20

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int8,
          torch.uint8, torch.bool, torch.complex64]


@pytest.fixture(scope="module", autouse=True)
def _group() -> Iterator[None]:
    with single_rank_group():
        yield


def _store(root: Path) -> DcpCheckpoints:
    key = SigningKey.generate()
    trust = Trust(verify_key_pem=key.public_key().to_pem().decode())
    return DcpCheckpoints(root / "ck", LocalKeys(Keyring.create(root / "keys")), signing_key_signer(key),
                          trust_verifier(trust), sync_files=False, keep=5)


def _tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point or dtype.is_complex:
        return (torch.randn(shape, generator=g) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000), shape, generator=g, dtype=dtype)


def _target(like: torch.Tensor, kind: str) -> torch.Tensor:
    """A destination for `like`: its own layout, a non-contiguous view, or another dtype."""
    if kind == "transposed" and like.dim() == 2:
        return torch.zeros(like.shape[1], like.shape[0], dtype=like.dtype).t()
    if kind == "other-dtype" and like.dtype == torch.float32:
        return torch.zeros(like.shape, dtype=torch.float64)
    return torch.zeros(like.shape, dtype=like.dtype)


class _Spy:
    """Counts the tensor items that reach DCP's own `FileSystemReader.read_data`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tensor_items = 0
        original = FileSystemReader.read_data

        def read_data(reader: Any, plan: Any, planner: Any) -> Any:
            self.tensor_items += sum(1 for i in plan.items if i.type == LoadItemType.TENSOR)
            return original(reader, plan, planner)

        monkeypatch.setattr(FileSystemReader, "read_data", read_data)


def test_same_layout_state_is_decrypted_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    # 5.5 MiB crosses segment boundaries and takes the parallel path; the rest are small
    saved = {"big": _tensor(torch.float32, (1441792,), 1), "bf16": _tensor(torch.bfloat16, (7, 3), 2),
             "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4), "flags": _tensor(torch.bool, (33,), 3),
             "step": 12}
    store.save(1, saved)
    state: dict[str, Any] = {k: torch.zeros_like(v) if isinstance(v, torch.Tensor) else 0 for k, v in saved.items()}
    pointers = {k: v.data_ptr() for k, v in state.items() if isinstance(v, torch.Tensor)}
    spy = _Spy(monkeypatch)
    info, refused = store.resume(state)
    assert info is not None and info.step == 1 and refused == []
    assert spy.tensor_items == 0  # no tensor went through torch.load into a fresh buffer
    for k, v in saved.items():
        if isinstance(v, torch.Tensor):
            assert state[k].dtype == v.dtype and torch.equal(state[k], v), k
            assert state[k].data_ptr() == pointers[k]  # the caller's own memory, filled in place
    assert state["step"] == 12


@settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.tuples(st.sampled_from(DTYPES),
                                  st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple),
                                  st.sampled_from(["same", "transposed", "other-dtype"])),
                        min_size=1, max_size=5),
       seed=st.integers(0, 2**16))
def test_sealed_load_equals_plain_dcp_load(tmp_path_factory: pytest.TempPathFactory,
                                           entries: list[tuple[torch.dtype, tuple[int, ...], str]],
                                           seed: int) -> None:
    root = tmp_path_factory.mktemp("diff")
    saved = {f"t{i}": _tensor(dtype, shape, seed + i) for i, (dtype, shape, _) in enumerate(entries)}
    kinds = {f"t{i}": kind for i, (_, _, kind) in enumerate(entries)}
    dcp.save(saved, storage_writer=dcp.FileSystemWriter(root / "plain", sync_files=False))
    store = _store(root)
    store.save(1, saved)
    plain = {k: _target(v, kinds[k]) for k, v in saved.items()}
    sealed = {k: _target(v, kinds[k]) for k, v in saved.items()}
    dcp.load(plain, storage_reader=dcp.FileSystemReader(root / "plain"))
    info, _ = store.resume(sealed)
    assert info is not None
    for k in saved:
        assert sealed[k].dtype == plain[k].dtype and sealed[k].stride() == plain[k].stride()
        assert torch.equal(sealed[k], plain[k]), k


def test_a_flipped_byte_leaves_no_unverified_plaintext_in_the_state(tmp_path: Path) -> None:
    store = _store(tmp_path)
    saved = {"big": _tensor(torch.float32, (1441792,), 5) + 1000.0}  # no element is 0
    store.save(1, saved)
    shard = next(store.path_for(1).glob("*.distcp"))
    raw = bytearray(shard.read_bytes())
    raw[HEADER_SIZE + 3 * (SEGMENT + TAG_SIZE) + 1234] ^= 0x01  # inside segment 3, the tensor's body
    shard.write_bytes(bytes(raw))
    state = {"big": torch.zeros(1441792)}
    with pytest.raises(CheckpointTampered) as err:
        store.load(store.path_for(1), state)
    assert "cannot be unsealed" in err.value.message
    got = state["big"]
    # every element is the saved value (verified before the bad segment) or zero (wiped)
    assert bool(((got == saved["big"]) | (got == 0)).all())
    assert int((got == 0).sum()) > 0


@given(dtype=st.sampled_from(DTYPES), shape=st.lists(st.integers(0, 40), max_size=3).map(tuple),
       seed=st.integers(0, 1000))
def test_stored_layout_points_at_the_tensor_bytes(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> None:
    t = _tensor(dtype, shape, seed)
    buf = io.BytesIO()
    torch.save(t, buf)
    found = _stored_layout(_Slice(buf, 0, len(buf.getvalue())))  # type: ignore[arg-type]
    assert found is not None
    meta, offset = found
    assert meta.shape == t.shape and meta.dtype == t.dtype
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
    assert buf.getvalue()[offset:offset + len(raw)] == raw


def test_stored_layout_refuses_what_is_not_exactly_one_tensor() -> None:
    def layout(obj: Any, recompress: bool = False) -> Any:
        buf = io.BytesIO()
        torch.save(obj, buf)
        data = buf.getvalue()
        if recompress:  # the same records, deflated: torch reads it, the direct path must not
            src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
            with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
                for info in src.infolist():
                    dst.writestr(info.filename, src.read(info))
            data = out.getvalue()
        return _stored_layout(_Slice(io.BytesIO(data), 0, len(data)))  # type: ignore[arg-type]

    base = torch.arange(100, dtype=torch.float32)
    assert layout(base) is not None
    assert layout(base[10:20]) is None  # a view: its storage holds more than the tensor
    assert layout(base.reshape(10, 10).t()) is None  # not contiguous
    assert layout({"a": base}) is None  # not a tensor
    assert layout(base, recompress=True) is None
    assert layout(b"not a zip") is None
