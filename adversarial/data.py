"""Datasets for robustness work: scikit-learn's bundled digits and MNIST from IDX files.

Both give images as float tensors in [0, 1] shaped (N, 1, H, W) and int64 labels.
``load_dataset("digits", "test")`` or ``load_dataset("mnist:/data/mnist", "train")``.

IDX format (LeCun): big-endian; 2 zero bytes, a type byte (0x08 = unsigned byte), a byte with
the number of dimensions, then one uint32 per dimension, then the data. Images use magic
0x00000803 (3 dims: count, rows, cols), labels 0x00000801 (1 dim: count).
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from trainguard.adversarial.errors import DatasetError

__all__ = ["Dataset", "load_dataset", "load_digits", "load_mnist", "read_idx"]

Split = Literal["train", "test"]
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class Dataset:
    """Images in [low, high] shaped (N, C, H, W) and int64 labels."""

    name: str
    x: Tensor
    y: Tensor
    clip: tuple[float, float] = (0.0, 1.0)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, limit: int | None) -> Dataset:
        """The first ``limit`` samples (all when None)."""
        if limit is None or limit >= len(self):
            return self
        return Dataset(self.name, self.x[:limit], self.y[:limit], self.clip)


def load_digits(split: Split, *, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits scaled to [0, 1]; a fixed stratified train/test split."""
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    return Dataset(f"digits-{split}", torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y))


def _open_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DatasetError(f"{path}: corrupt gzip data ({exc})") from exc
    return raw


def read_idx(path: Path, *, expect_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (plain or gzip) of unsigned bytes into a numpy array.

    Raises:
        DatasetError: bad magic number, wrong type code, or a size that does not match the
        dimensions in the header.
    """
    data = _open_bytes(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: too short to be an IDX file ({len(data)} bytes)")
    (magic,) = struct.unpack(">I", data[:4])
    if expect_magic is not None and magic != expect_magic:
        raise DatasetError(
            f"{path}: bad IDX magic number 0x{magic:08x}, expected 0x{expect_magic:08x}"
        )
    if data[0:2] != b"\x00\x00" or data[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file (magic 0x{magic:08x})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header ({ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise DatasetError(
            f"{path}: header says {'x'.join(map(str, dims))} = {expected} bytes of data, "
            f"file holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    candidates = [stem, stem + ".gz"]
    dotted = stem.replace("-idx", ".idx")  # some mirrors name them t10k-images.idx3-ubyte
    candidates += [dotted, dotted + ".gz"]
    for name in candidates:
        if (directory / name).is_file():
            return directory / name
    raise DatasetError(f"{directory}: missing {stem} (or {stem}.gz)")


def load_mnist(directory: Path | str, split: Split) -> Dataset:
    """MNIST (or any 1-channel IDX image set) from a folder of IDX files, scaled to [0, 1]."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"MNIST folder {directory} does not exist")
    img_name, lbl_name = _MNIST_FILES[split]
    images = read_idx(_find(directory, img_name), expect_magic=IMAGES_MAGIC)
    labels = read_idx(_find(directory, lbl_name), expect_magic=LABELS_MAGIC)
    if images.ndim != 3:
        raise DatasetError(f"{img_name}: expected 3 dimensions (count, rows, cols)")
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{directory}: {images.shape[0]} images but {labels.shape[0]} labels in the {split} split"
        )
    if labels.size and labels.max() > 9:
        raise DatasetError(f"{lbl_name}: label {int(labels.max())} out of range 0-9")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(f"mnist-{split}", x, y)


def load_dataset(spec: str, split: Split) -> Dataset:
    """Parse ``digits`` or ``mnist:DIR`` and load the requested split."""
    if spec == "digits":
        return load_digits(split)
    if spec.startswith("mnist:") and len(spec) > len("mnist:"):
        return load_mnist(Path(spec[len("mnist:") :]), split)
    raise DatasetError(f"unknown dataset {spec!r}")
