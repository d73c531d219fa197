"""Fuzzing the scanner (Hypothesis, bounded): mutated real containers of every format the
scanner reads, and dtypes of every shape, give a verdict, never an exception; and the verdicts
follow what numpy and joblib do with those dtypes."""

from __future__ import annotations

import functools
import io
import pickle
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import scanner_corpus as corpus
from trainguard.integrity.scanner import FileVerdict, Verdict, scan_bytes

np = pytest.importorskip("numpy")

EVIL_P0 = corpus.call_global_p0("os", "system", "id")


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("id",))


@functools.cache
def _seeds() -> dict[str, bytes]:
    """One real file of every format, made here (small)."""
    import bz2
    import gzip
    import lzma

    joblib = pytest.importorskip("joblib")
    torch = pytest.importorskip("torch")
    out: dict[str, bytes] = {}
    state = {"w": torch.ones(3), "b": [1, 2], "opt": {"lr": 0.1}}
    buf = io.BytesIO()
    torch.save(state, buf)
    out["torch-zip"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save(state, buf, _use_new_zipfile_serialization=False)
    out["torch-legacy"] = buf.getvalue()
    for protocol in range(6):
        out[f"pickle-p{protocol}"] = pickle.dumps({"a": [1, 2.5, "x"], "b": b"y"}, protocol)
    buf = io.BytesIO()
    np.save(buf, np.arange(6.0))
    out["npy"] = buf.getvalue()
    buf = io.BytesIO()
    np.save(buf, np.array([1, "x", None], dtype=object), allow_pickle=True)
    out["npy-object"] = buf.getvalue()
    buf = io.BytesIO()
    np.savez(buf, x=np.arange(3), y=np.zeros(2, dtype=[("a", "O")]))
    out["npz"] = buf.getvalue()
    for compress in (0, ("zlib", 1), ("gzip", 1), ("bz2", 1), ("xz", 1), ("lzma", 1)):
        buf = io.BytesIO()
        joblib.dump({"w": np.arange(5.0), "o": np.array([1, None], dtype=object)}, buf,
                    compress=compress)  # fmt: skip
        out[f"joblib-{compress}"] = buf.getvalue()
    out["tar"] = corpus.tar_archive([("m/w.pkl", out["pickle-p2"]), ("m/a.npy", out["npy"])])
    out["tar.gz"] = gzip.compress(out["tar"])
    out["bz2"] = bz2.compress(out["pickle-p4"])
    out["xz"] = lzma.compress(out["pickle-p4"])
    out["7z"] = corpus.seven_zip([("w.pkl", out["pickle-p4"])])
    out["zip64"] = corpus.zip64_archive([("archive/data.pkl", out["pickle-p2"])])
    out["safetensors"] = corpus.safetensors({"a": ("F32", [2], (0, 8))}, 8)
    out["keras"] = corpus.zip_archive(
        [("metadata.json", b"{}"), ("config.json", b'{"class_name": "Sequential"}'),
         ("model.weights.h5", b"\x89HDF\r\n\x1a\n" + b"\x00" * 16)]
    )  # fmt: skip
    return out


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    seeds = _seeds()
    blob = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(1, 6))):
        if not blob:
            break
        at = draw(st.integers(0, len(blob) - 1))
        how = draw(st.integers(0, 4))
        if how == 0:
            blob[at] = draw(st.integers(0, 255))
        elif how == 1:
            width = draw(st.sampled_from([1, 2, 4, 8]))
            blob[at : at + width] = draw(st.sampled_from([b"\xff", b"\x00", b"\x7f"])) * width
        elif how == 2:
            blob[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif how == 3:
            del blob[at : at + draw(st.integers(1, 64))]
        else:
            del blob[at:]
    return bytes(blob)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_mutated(), st.binary(max_size=600)))
def test_fuzzed_containers_give_a_verdict_never_an_exception(blob: bytes) -> None:
    """Only the clean error comes out: scan_bytes returns a verdict for any input (an
    exception escaping would be a crash of `trainguard scan`), a safe verdict has no finding
    and an error verdict carries an error finding."""
    verdict = scan_bytes(blob)
    assert isinstance(verdict, FileVerdict)
    if verdict.verdict is Verdict.SAFE:
        assert verdict.findings == ()
    elif verdict.verdict is Verdict.ERROR:
        assert all(f.kind.is_error for f in verdict.findings) and verdict.findings


# -- dtypes: the scanner's decision is numpy's ------------------------------------------------------

_scalar = st.sampled_from(
    ["<f8", "<f4", "|u1", "<i8", "|b1", "<M8[s]", "<m8[us]", "|S3", "<U2", "|V4", "<c16", "|O"]
)


@st.composite
def _dtypes(draw: st.DrawFn) -> Any:
    def build(depth: int) -> Any:
        if depth > 2 or draw(st.booleans()):
            base = draw(_scalar)
            return (base, (draw(st.integers(1, 3)),)) if draw(st.integers(0, 5)) == 0 else base
        count = draw(st.integers(1, 3))
        return [(f"f{i}", build(depth + 1)) for i in range(count)]

    spec = build(0)
    return np.dtype(spec if not isinstance(spec, tuple) else [("f0", *spec)])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_dtypes())
def test_npy_dtype_decision_is_numpys_hasobject(dtype: Any) -> None:
    """The data after an .npy header is a pickle exactly when numpy.dtype(descr).hasobject:
    a payload there is found then, and is inert raw bytes otherwise."""
    from numpy.lib import format as npformat

    buf = io.BytesIO()
    header = {"descr": npformat.dtype_to_descr(dtype), "fortran_order": False, "shape": (1,)}
    npformat.write_array_header_1_0(buf, header)
    blob = buf.getvalue() + EVIL_P0.ljust(max(dtype.itemsize, len(EVIL_P0)), b"\x00")
    verdict = scan_bytes(blob)
    if dtype.hasobject:
        assert verdict.verdict is Verdict.UNSAFE, (dtype, verdict)
    else:
        assert verdict.verdict is Verdict.SAFE, (dtype, verdict)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_dtypes(), st.integers(0, 3))
def test_joblib_arrays_of_any_dtype_are_skipped_or_walked_as_joblib_reads_them(
    dtype: Any, count: int
) -> None:
    """joblib stores an array raw or, when its dtype holds objects anywhere, as a nested
    pickle: whatever the dtype, a payload after the array is still found and a clean file is
    safe (a wrong skip would desynchronise the walk)."""
    joblib = pytest.importorskip("joblib")
    array = np.zeros(count, dtype=dtype)
    for payload, expected in (({"a": array, "n": 1}, Verdict.SAFE),
                              ({"a": array, "e": _Evil()}, Verdict.UNSAFE)):  # fmt: skip
        buf = io.BytesIO()
        joblib.dump(payload, buf)
        verdict = scan_bytes(buf.getvalue())
        assert verdict.verdict is expected, (dtype, verdict)


def test_fuzz_seeds_are_judged_as_expected() -> None:
    safe_formats = {k: scan_bytes(v) for k, v in _seeds().items()}
    bad = {k: (v.verdict, [str(f) for f in v.findings][:2]) for k, v in safe_formats.items()
           if v.verdict is not Verdict.SAFE and k not in ("keras",)}  # fmt: skip
    assert bad == {}
    assert struct.calcsize("<Q") == 8
