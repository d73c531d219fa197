"""Dataset loaders: digits split and IDX files written here (plain and gzipped)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trainguard.adversarial import DatasetError, load_dataset, load_digits, load_mnist, read_idx
from trainguard.adversarial.data import IMAGES_MAGIC, LABELS_MAGIC


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(
    directory: Path, split: str, n: int, *, gz: bool, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    for name, arr in (
        (f"{prefix}-images-idx3-ubyte", images),
        (f"{prefix}-labels-idx1-ubyte", labels),
    ):
        data = idx_bytes(arr)
        if gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_folder_round_trip(tmp_path, gz):
    images, labels = write_mnist(tmp_path, "test", 7, gz=gz)
    data = load_dataset(f"mnist:{tmp_path}", "test")
    assert data.x.shape == (7, 1, 28, 28) and data.x.dtype == torch.float32
    assert torch.allclose(data.x[:, 0] * 255, torch.from_numpy(images).float())
    assert data.y.tolist() == labels.tolist()
    assert 0.0 <= data.x.min() and data.x.max() <= 1.0


def test_folder_with_only_test_files_works_for_eval_but_not_train(tmp_path):
    write_mnist(tmp_path, "test", 3, gz=True)
    assert len(load_mnist(tmp_path, "test")) == 3
    with pytest.raises(DatasetError, match="missing train-images-idx3-ubyte"):
        load_mnist(tmp_path, "train")


def test_bad_magic_is_a_clear_error(tmp_path):
    write_mnist(tmp_path, "test", 3, gz=False)
    # swap: the labels file where the images file should be
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(DatasetError, match="bad IDX magic number 0x00000801, expected 0x00000803"):
        load_mnist(tmp_path, "test")


def test_truncated_data_and_count_mismatch(tmp_path):
    write_mnist(tmp_path, "test", 4, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="header says 4x28x28"):
        load_mnist(tmp_path, "test")
    write_mnist(tmp_path, "test", 4, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, dtype=np.uint8)))
    with pytest.raises(DatasetError, match="4 images but 5 labels"):
        load_mnist(tmp_path, "test")


def test_corrupt_gzip_and_unknown_spec(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(DatasetError, match="corrupt gzip"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("cifar", "test")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(f"mnist:{tmp_path / 'nope'}", "test")


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    gz=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_idx_round_trip(tmp_path_factory, shape, gz, seed):
    arr = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    data = idx_bytes(arr)
    path = tmp_path_factory.mktemp("idx") / "f"
    path.write_bytes(gzip.compress(data) if gz else data)
    magic = IMAGES_MAGIC if len(shape) == 3 else (LABELS_MAGIC if len(shape) == 1 else None)
    assert np.array_equal(read_idx(path, expect_magic=magic), arr)


def test_digits_split_is_deterministic_scaled_and_disjoint():
    train, test = load_digits("train"), load_digits("test")
    again = load_digits("test")
    assert torch.equal(test.x, again.x) and torch.equal(test.y, again.y)
    assert train.x.shape[1:] == (1, 8, 8) and len(train) + len(test) == 1797
    assert train.x.min() == 0.0 and train.x.max() == 1.0
    assert set(test.y.tolist()) == set(range(10))
    assert test.take(10).x.shape[0] == 10
