"""safetensors: the format holds no code, but a malformed header is refused like the reference
loader refuses it (known dtypes, shape x dtype size == byte range, offsets sorted, contiguous,
in bounds and covering the data exactly, string-only ``__metadata__``, no duplicate keys)."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from trainguard.integrity.scanner.report import Finding, FindingKind

__all__ = ["is_safetensors", "scan_safetensors"]

_ST_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16,
    "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64,
    "U64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
_MAX_ST_HEADER = 100 << 20


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key in header")
    return dict(pairs)


def _safetensors_problems(header: Any, data_len: int) -> list[str]:
    if not isinstance(header, dict):
        return ["header is not a JSON object"]
    problems: list[str] = []
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in info.items()
            ):
                problems.append("__metadata__ must map strings to strings")
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            problems.append(f"tensor {name!r}: needs exactly dtype, shape, data_offsets")
            continue
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        bits = _ST_BITS.get(dtype) if isinstance(dtype, str) else None
        ok_shape = isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
        ok_off = (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int and o >= 0 for o in offsets)
        )
        if bits is None or not ok_shape or not ok_off:
            problems.append(f"tensor {name!r}: unknown dtype or malformed shape/offsets")
            continue
        begin, end = offsets
        nbits = math.prod(shape) * bits
        if nbits % 8 or end - begin != nbits // 8:
            problems.append(f"tensor {name!r}: byte range does not match shape x dtype size")
        spans.append((begin, end, name))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor or end < begin:
            problems.append(f"tensor {name!r}: offsets overlap or leave a gap")
        cursor = max(cursor, end)
    if cursor != data_len:
        problems.append(f"tensors cover {cursor} bytes but the data section has {data_len}")
    return problems


def scan_safetensors(stream: Any, location: str, out: list[Finding], size: int) -> str:
    (hlen,) = struct.unpack("<Q", stream.read(8))
    try:
        header = json.loads(stream.read(hlen).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        out.append(
            Finding(FindingKind.BAD_HEADER, f"safetensors header unreadable: {exc}", location)
        )
        return "safetensors"
    for problem in _safetensors_problems(header, size - 8 - hlen)[:20]:
        out.append(Finding(FindingKind.BAD_HEADER, problem, location))
    return "safetensors"


def is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (hlen,) = struct.unpack_from("<Q", head)
    return 2 <= hlen <= min(size - 8, _MAX_ST_HEADER) and head[8:9] == b"{"
