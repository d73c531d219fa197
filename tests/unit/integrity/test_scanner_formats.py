"""Format handling: safetensors validation, npy headers, unreadable input is an error, and
property tests over arbitrary bytes and plain-data pickles."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import scanner_corpus as corpus
from trainguard.integrity.scanner import ScanReport, Verdict, scan_bytes, scan_path

F32 = "F32"


def test_valid_safetensors_is_safe() -> None:
    blob = corpus.safetensors(
        {"a": (F32, [2, 3], (0, 24)), "b": ("BF16", [4], (24, 32)), "c": ("F4", [2, 2], (32, 34))},
        34,
        metadata={"format": "pt"},
    )
    verdict = scan_bytes(blob)
    assert (verdict.format, verdict.verdict) == ("safetensors", Verdict.SAFE)


@pytest.mark.parametrize(
    ("tensors", "data_len", "metadata"),
    [
        ({"a": (F32, [2, 3], (0, 20))}, 20, None),  # range shorter than shape x dtype
        ({"a": ("F33", [1], (0, 4))}, 4, None),  # unknown dtype
        ({"a": (F32, [1], (0, 4)), "b": (F32, [1], (2, 6))}, 6, None),  # overlap
        ({"a": (F32, [1], (0, 4)), "b": (F32, [1], (8, 12))}, 12, None),  # gap
        ({"a": (F32, [1], (0, 4))}, 40, None),  # bytes beyond the last tensor
        ({"a": (F32, [1], (0, 4))}, 2, None),  # offsets past the end
        ({"a": (F32, [-1], (0, 4))}, 4, None),  # negative dim
        ({"a": (F32, [1], (0, 4))}, 4, {"k": 1}),  # metadata must be strings
    ],
)
def test_bad_safetensors_header_is_an_error(tensors: dict, data_len: int, metadata: object) -> None:
    verdict = scan_bytes(corpus.safetensors(tensors, data_len, metadata))  # type: ignore[arg-type]
    assert verdict.verdict is Verdict.ERROR, verdict


def test_safetensors_duplicate_keys_are_an_error() -> None:
    raw = b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    assert scan_bytes(struct.pack("<Q", len(raw)) + raw + b"\x00").verdict is Verdict.ERROR


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x00\x01\x02\x03" * 64,  # random binary
        pickle.dumps({"a": [1, 2, 3]}, protocol=4)[:-5],  # truncated pickle
        b"\x93NUMPY\x01\x00\x10\x00{'descr': 'zz'}  \n",  # npy with a nonsense dtype
        b"\x93NUMPY\x01\x00\x46\x00"
        + b"{'descr': '<f8', 'fortran_order': False, 'shape': (10,), }".ljust(69)
        + b"\n",
        b"PK\x03\x04" + b"\x00" * 10,  # zip header with nothing behind it
        b"\x1f\x8b\x08\x00garbage",  # gzip that is not
    ],
    ids=["empty", "binary", "truncated", "npy-dtype", "npy-short", "zip-stub", "gzip-stub"],
)
def test_unparseable_input_is_an_error_never_safe(blob: bytes) -> None:
    assert scan_bytes(blob).verdict is Verdict.ERROR


def test_missing_path_and_special_files_are_errors(tmp_path: Path) -> None:
    report = scan_path(tmp_path / "nope.pt")
    assert report.files[0].verdict is Verdict.ERROR
    assert not report.clean


def test_text_files_are_safe_only_when_no_loader_reads_them(tmp_path: Path) -> None:
    """Text whose first byte is not a pickle opcode is refused by every loader at byte 0.
    Text that opens with an opcode byte is judged as the pickle it is: this YAML file is a
    GLOBAL that makes pickle.load import a module named 'heckpoint: x' (no "text means
    harmless" fallback)."""
    (tmp_path / "config.json").write_text('{"hidden": 4}')
    (tmp_path / "README.md").write_text("# model card\nIt is fine.\n")
    (tmp_path / "train.yaml").write_text("checkpoint: x\nlr: 0.1\nepochs: 3\n")  # 'c' is GLOBAL
    verdicts = {Path(f.path).name: f.verdict for f in scan_path(tmp_path).files}
    assert verdicts == {
        "config.json": Verdict.SAFE,
        "README.md": Verdict.SAFE,
        "train.yaml": Verdict.UNSAFE,
    }


def test_report_json_schema() -> None:
    report = ScanReport((scan_bytes(corpus.inst_p0(), "x.pkl"),))
    data = report.to_json()
    file = data["files"][0]
    assert set(file) == {"path", "verdict", "format", "findings"}
    assert file["verdict"] == "unsafe"
    assert set(file["findings"][0]) == {"kind", "message", "location", "global"}
    assert data["summary"] == {"safe": 0, "unsafe": 1, "error": 0}


_plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        | st.frozensets(st.integers(), max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(_plain, st.integers(0, 5))
def test_plain_data_pickles_are_safe(value: object, protocol: int) -> None:
    verdict = scan_bytes(pickle.dumps(value, protocol=protocol))
    assert verdict.verdict is Verdict.SAFE, verdict


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_scanner(blob: bytes) -> None:
    assert scan_bytes(blob).verdict in set(Verdict)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(corpus.PAYLOADS)), st.data())
def test_malicious_payload_is_never_safe_whatever_its_truncation(
    name: str, data: st.DataObject
) -> None:
    payload = corpus.PAYLOADS[name]
    cut = data.draw(st.integers(1, len(payload)))
    assert scan_bytes(payload[:cut]).verdict is not Verdict.SAFE


def test_sealed_stream_cannot_be_judged_without_unsealing() -> None:
    verdict = scan_bytes(b"TGSEAL\x01" + b"\x00" * 200)
    assert (verdict.format, verdict.verdict) == ("sealed", Verdict.ERROR)
    assert "unseal" in verdict.findings[0].message


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_mutated_real_checkpoints_never_crash_and_hidden_payloads_stay_unsafe(
    data: st.DataObject,
) -> None:
    import io as _io

    torch = pytest.importorskip("torch")
    buf = _io.BytesIO()
    torch.save({"w": torch.ones(4), "b": [1, 2]}, buf)
    blob = bytearray(buf.getvalue())
    for _ in range(data.draw(st.integers(1, 8))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    assert scan_bytes(bytes(blob)).verdict in set(Verdict)
    evil = corpus.zip_archive([("archive/data.pkl", bytes(blob[:200])), ("x/y", corpus.inst_p0())])
    assert scan_bytes(evil).verdict is not Verdict.SAFE


def test_public_names_are_pinned() -> None:
    import trainguard.integrity.scanner as scanner

    assert set(scanner.__all__) >= {"scan_path", "require_safe", "UnsafeArtifact", "scan_fileobj"}
    assert all(hasattr(scanner, name) for name in scanner.__all__)


def test_require_safe_fileobj_rewinds_and_refuses() -> None:
    import io as _io

    from trainguard.integrity.scanner import UnsafeArtifact, require_safe_fileobj

    good = _io.BytesIO(pickle.dumps({"a": 1}))
    assert require_safe_fileobj(good, len(good.getvalue())).verdict is Verdict.SAFE
    assert good.tell() == 0
    bad = _io.BytesIO(corpus.inst_p0())
    with pytest.raises(UnsafeArtifact):
        require_safe_fileobj(bad, len(bad.getvalue()), "ckpt")
