"""Every malicious pickle in the corpus is unsafe, however it is packaged."""

from __future__ import annotations

import bz2
import gzip
import lzma
import pickle
import zipfile
import zlib
from pathlib import Path

import pytest
from support import scanner_corpus as corpus
from trainguard.integrity.scanner import (
    FindingKind,
    UnsafeArtifact,
    Verdict,
    require_safe,
    scan_bytes,
    scan_path,
)

PAYLOADS = sorted(corpus.PAYLOADS.items())
IDS = [name for name, _ in PAYLOADS]


@pytest.mark.parametrize(("name", "payload"), PAYLOADS, ids=IDS)
def test_raw_payload_is_unsafe(name: str, payload: bytes) -> None:
    verdict = scan_bytes(payload)
    assert verdict.verdict is Verdict.UNSAFE, (name, verdict)


def test_findings_name_the_real_global_even_through_the_memo() -> None:
    verdict = scan_bytes(corpus.memo_trick("os", "system", "id"))
    assert [f.global_name for f in verdict.findings] == ["os.system"]
    assert verdict.findings[0].kind is FindingKind.DISALLOWED_GLOBAL
    assert verdict.findings[0].location.startswith("offset ")


def test_python2_names_are_mapped_like_the_unpickler_does() -> None:
    verdict = scan_bytes(corpus.call_global_p0("__builtin__", "eval", "1"))
    assert verdict.findings[0].global_name == "builtins.eval"


def test_getattr_chain_reports_each_gadget() -> None:
    names = {f.global_name for f in scan_bytes(corpus.getattr_chain()).findings}
    assert {"builtins.getattr", "importlib.import_module"} <= names


def test_unsafe_prefix_before_a_parse_error_is_still_unsafe() -> None:
    truncated = corpus.stack_global("os", "system", "id")[:-3]
    verdict = scan_bytes(truncated)
    assert verdict.verdict is Verdict.UNSAFE
    assert any(f.kind is FindingKind.PARSE_ERROR for f in verdict.findings)


@pytest.mark.parametrize(("name", "payload"), PAYLOADS[::3], ids=IDS[::3])
def test_payload_as_renamed_member_of_torch_zip(name: str, payload: bytes) -> None:
    blob = corpus.zip_archive(
        [("archive/data.pkl", corpus.benign_data_pkl()), ("archive/foo.bin", payload)]
    )
    verdict = scan_bytes(blob)
    assert verdict.verdict is Verdict.UNSAFE
    assert all("archive/foo.bin" in f.location for f in verdict.findings)


def test_zip_with_bad_crc_and_odd_flags_that_zipfile_refuses(tmp_path: Path) -> None:
    payload = corpus.stack_global("os", "system", "id")
    blob = corpus.zip_archive([("model/weights", payload)], flags=0b0110_0000_0110, bad_crc=True)
    path = tmp_path / "model.pt"
    path.write_bytes(blob)
    with pytest.raises(zipfile.BadZipFile), zipfile.ZipFile(path) as zf:
        zf.read("model/weights")
    assert scan_path(path).files[0].verdict is Verdict.UNSAFE


def test_member_hidden_from_the_central_directory_is_found() -> None:
    payload = corpus.call_global_p2("os", "system", "id")
    blob = corpus.zip_archive(
        [("evil.pkl", payload), ("archive/data.pkl", corpus.benign_data_pkl())],
        hide=frozenset({"evil.pkl"}),
    )
    assert scan_bytes(blob).verdict is Verdict.UNSAFE


def test_deflated_member_is_inflated_and_scanned() -> None:
    blob = corpus.zip_archive([("x/data.pkl", corpus.inst_p0())], deflate=True)
    assert scan_bytes(blob).verdict is Verdict.UNSAFE


def test_payload_in_legacy_torch_main_pickle() -> None:
    verdict = scan_bytes(corpus.legacy_torch(corpus.nested_in_ordereddict()))
    assert verdict.format == "torch-legacy"
    assert verdict.verdict is Verdict.UNSAFE


def test_second_pickle_after_a_benign_one_is_scanned() -> None:
    blob = pickle.dumps([1, 2], protocol=4) + corpus.stack_global("os", "system", "id")
    assert scan_bytes(blob).verdict is Verdict.UNSAFE


def test_pickle_zip_polyglot_is_judged_on_both_sides() -> None:
    evil_zip = corpus.zip_archive([("archive/data.pkl", corpus.obj_p1())])
    blob = pickle.dumps({"ok": 1}, protocol=2) + evil_zip
    assert scan_bytes(blob).verdict is Verdict.UNSAFE


def test_payload_in_npy_object_array_and_inside_npz() -> None:
    npy = corpus.npy_object(corpus.stack_global("subprocess", "Popen", "id", 3))
    assert scan_bytes(npy).verdict is Verdict.UNSAFE
    npz = corpus.zip_archive([("arr_0.npy", npy)], deflate=True)
    assert scan_bytes(npz).verdict is Verdict.UNSAFE


class _Evil:
    """Pickling only records (os.system, args); nothing here is ever unpickled or run."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("id",))


@pytest.mark.parametrize("compress", [0, 3, ("gzip", 3), ("bz2", 3), ("xz", 3)])
def test_payload_after_arrays_in_joblib_files(tmp_path: Path, compress: object) -> None:
    np = pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    path = tmp_path / "model.joblib"
    obj = {"w": np.arange(1000.0), "o": np.array([1, "x"], dtype=object), "evil": _Evil()}
    joblib.dump(obj, path, compress=compress)
    verdict = scan_path(path).files[0]
    assert verdict.verdict is Verdict.UNSAFE
    assert any(f.global_name == "posix.system" for f in verdict.findings)


def test_payload_inside_joblib_object_array(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    path = tmp_path / "m.joblib"
    joblib.dump({"o": np.array([_Evil(), 1], dtype=object), "a": np.ones(5)}, path)
    assert scan_path(path).files[0].verdict is Verdict.UNSAFE


@pytest.mark.parametrize("codec", [gzip.compress, zlib.compress, bz2.compress, lzma.compress])
def test_compressed_pickle_is_unpacked(codec: object) -> None:
    assert scan_bytes(codec(corpus.inst_p0())).verdict is Verdict.UNSAFE  # type: ignore[operator]


def test_require_safe_refuses_and_lists_the_findings(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    path.write_bytes(corpus.stack_global("runpy", "_run_code", "x"))
    with pytest.raises(UnsafeArtifact) as info:
        require_safe(path)
    assert "runpy._run_code" in str(info.value)
    assert info.value.exit_code == 1
    assert info.value.findings[0].global_name == "runpy._run_code"


def test_folder_scan_finds_the_one_bad_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.pkl").write_bytes(pickle.dumps({"a": 1}))
    (tmp_path / "sub" / "weights.safetensors").write_bytes(
        corpus.call_global_p0("os", "system", "x")
    )
    report = scan_path(tmp_path)
    verdicts = {Path(f.path).name: f.verdict for f in report.files}
    assert verdicts == {"a.pkl": Verdict.SAFE, "weights.safetensors": Verdict.UNSAFE}


def test_zip_nested_in_a_zip_member_is_scanned() -> None:
    inner = corpus.zip_archive([("archive/data.pkl", corpus.obj_p1())])
    outer = corpus.zip_archive([("bundle/model.pt", inner), ("README", b"hello\n")], deflate=True)
    verdict = scan_bytes(outer)
    assert verdict.verdict is Verdict.UNSAFE
    assert "bundle/model.pt" in verdict.findings[0].location


def test_tar_gz_release_with_a_malicious_member(tmp_path: Path) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in [("model/config.json", b"{}"), ("model/weights.pt", corpus.inst_p0())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    verdict = scan_bytes(buf.getvalue())
    assert verdict.verdict is Verdict.UNSAFE
    assert verdict.format == "gzip+tar"


def test_reference_only_function_called_through_rebuild_from_type() -> None:
    """torch._tensor._rebuild_from_type_v2(func, ...) calls func: a data-only reference such as
    numpy.mean must not be smuggled in as that func."""
    payload = (
        corpus.proto(2)
        + b"ctorch._tensor\n_rebuild_from_type_v2\n("  # MARK
        + b"cnumpy\nmean\nctorch\nTensor\n)}"  # func, new_type, args, state
        + b"tR."  # TUPLE, REDUCE
    )  # fmt: skip
    verdict = scan_bytes(payload)
    assert verdict.verdict is Verdict.UNSAFE
    assert verdict.findings[0].global_name == "numpy.mean"


def _keras_zip(config: dict) -> bytes:
    import json

    return corpus.zip_archive(
        [
            ("metadata.json", b'{"keras_version": "3.5.0"}'),
            ("config.json", json.dumps(config).encode()),
            ("model.weights.h5", b"\x89HDF\r\n\x1a\n" + b"\x00" * 32),
        ]
    )


def test_keras_archive_with_a_lambda_layer_or_foreign_module() -> None:
    lam = {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Dense", "module": "keras.layers", "config": {}},
        {"class_name": "Lambda", "module": "keras.layers", "config": {"function": "4wEAAA=="}},
    ]}}  # fmt: skip
    verdict = scan_bytes(_keras_zip(lam))
    assert (verdict.format, verdict.verdict) == ("keras", Verdict.UNSAFE)
    foreign = {"class_name": "Functional", "config": {"layers": [
        {"class_name": "system", "module": "os", "config": {}},
    ]}}  # fmt: skip
    assert scan_bytes(_keras_zip(foreign)).findings[0].global_name == "os.system"
    benign = {"class_name": "Sequential", "module": "keras", "config": {"layers": []}}
    assert scan_bytes(_keras_zip(benign)).verdict is Verdict.SAFE


def test_legacy_hdf5_keras_lambda_is_unsafe_and_plain_hdf5_is_not_safe(tmp_path: Path) -> None:
    lam = (
        b"\x89HDF\r\n\x1a\n"
        + b"\x00" * 100
        + b'{"class_name": "Lambda", "config": {}}'
        + b"\x00" * 50
    )
    (tmp_path / "m.h5").write_bytes(lam)
    (tmp_path / "w.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 200)
    verdicts = {Path(f.path).name: f.verdict for f in scan_path(tmp_path).files}
    assert verdicts == {"m.h5": Verdict.UNSAFE, "w.h5": Verdict.ERROR}
