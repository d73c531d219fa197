"""Item sizes of simple numpy dtype strings, for joblib array data and .npy headers."""

from __future__ import annotations

__all__ = ["dtype_layout"]


_KIND_SIZES = {"b": 1, "?": 1, "M": 8, "m": 8}


def dtype_layout(descr: str, elsize: int = -1) -> tuple[int, bool]:
    """(itemsize, has_object) for a simple numpy dtype string like ``<f8``, ``|u1``, ``O``.

    Raises:
        ValueError: the string is not a simple dtype this scanner understands.
    """
    text = descr.lstrip("<>|=")
    if not text:
        raise ValueError(f"empty dtype {descr!r}")
    kind, digits = text[0], text[1:]
    if kind == "O":
        return 8, True
    if elsize > 0:
        return elsize, False
    if kind in _KIND_SIZES and (not digits or kind in "Mm"):
        return _KIND_SIZES[kind], False
    count = int(digits.split("[", 1)[0]) if digits else 0
    if kind in "biufcSV" and count > 0:
        return count, False
    if kind == "U" and count > 0:
        return 4 * count, False
    raise ValueError(f"unsupported dtype {descr!r}")
