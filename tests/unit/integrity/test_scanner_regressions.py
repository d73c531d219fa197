"""Regression tests for the scanner bypasses of issue #21, one per finding, each checked against
the real loader where one can be driven safely (never with the payload's global importable:
the payloads call `os.system`, and the loaders run with `find_class` refused)."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import pytest
from support import scanner_corpus as corpus
from trainguard.integrity.scanner import (
    Allowance,
    FindingKind,
    Verdict,
    classify,
    scan_bytes,
    scan_path,
)
from trainguard.integrity.scanner.pickle_walk import walk_pickle

EVIL_P0 = corpus.call_global_p0("os", "system", "id")


class _Refusing(pickle.Unpickler):
    """The C unpickler, recording the globals it is asked for and refusing them all."""

    asked: list[str]

    def find_class(self, module: str, name: str) -> Any:
        self.asked.append(f"{module}.{name}")
        raise pickle.UnpicklingError("refused by the test")


def _imports_under_pickle_load(data: bytes) -> list[str]:
    unpickler = _Refusing(io.BytesIO(data))
    unpickler.asked = []
    try:
        unpickler.load()
    except Exception:  # noqa: BLE001 - the refusal (or any failure) ends the load
        pass
    return unpickler.asked


class _Evil:
    """Pickling records (os.system, ('id',)); nothing is ever unpickled or run."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("id",))


# -- 1. protocol-0 INT in hex ---------------------------------------------------------------------


def test_protocol0_int_in_hex_is_decoded_as_cpython_does() -> None:
    blob = corpus.hex_int_then(EVIL_P0)
    assert _imports_under_pickle_load(blob) == ["os.system"]  # CPython reads 0x1 as 1
    verdict = scan_bytes(blob)
    assert verdict.verdict is Verdict.UNSAFE, verdict
    assert [f.global_name for f in verdict.findings] == ["os.system"]
    assert walk_pickle(io.BytesIO(b"I0x1f\n.")).value == 31
    assert walk_pickle(io.BytesIO(b"I017\n.")).value == 15  # C strtol: octal
    assert walk_pickle(io.BytesIO(b"L0x10L\n.")).value == 16


def test_text_that_fails_as_a_pickle_is_never_safe() -> None:
    """No "text means harmless" fallback: text opening with an opcode byte is a pickle."""
    for blob in (b"MIT License\n\nCopyright (c) 2024\n", b"I0xZZ\nfoo\n", b"(lp0\nI1\na"):
        assert scan_bytes(blob).verdict is not Verdict.SAFE, blob
    assert scan_bytes(b"checkpoint: x\nlr: 0.1\n").verdict is Verdict.UNSAFE  # GLOBAL import
    assert scan_bytes(b"# model card\n").verdict is Verdict.SAFE  # '#': no loader reads it


# -- 2. legacy torch files whose later pickles are protocol 0 ---------------------------------------


def test_legacy_torch_protocol0_later_pickles_are_walked() -> None:
    blob = corpus.legacy_torch_p0(EVIL_P0)
    verdict = scan_bytes(blob)
    assert (verdict.format, verdict.verdict) == ("torch-legacy", Verdict.UNSAFE)


def test_legacy_torch_with_a_computed_magic_number_walks_every_pickle() -> None:
    """The magic number built by REDUCE: the walk cannot evaluate it, so it reads on as torch
    would (and the protocol-0 later pickles are walked)."""
    blob = corpus.legacy_torch_p0(EVIL_P0, magic=corpus.computed_magic())
    verdict = scan_bytes(blob)
    assert verdict.verdict is Verdict.UNSAFE, verdict
    assert any(f.global_name == "os.system" for f in verdict.findings)


def test_legacy_torch_file_cut_after_its_magic_is_an_error() -> None:
    blob = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
    assert scan_bytes(blob).verdict is Verdict.ERROR


# -- 3. dtypes with objects inside structured or comma-separated descriptions ----------------------


@pytest.mark.parametrize("descr", ["[('a', 'O')]", "'M8,O'", "[('x', '<f8'), ('y', [('z', 'O')])]"])
def test_npy_object_inside_structured_or_comma_dtype_is_walked(descr: str) -> None:
    np = pytest.importorskip("numpy")
    blob = corpus.npy_with_descr(descr, EVIL_P0)
    from numpy.lib import format as npformat

    header = npformat.read_array_header_1_0(_after_magic(blob))
    assert np.dtype(header[2]).hasobject  # numpy itself unpickles this data
    verdict = scan_bytes(blob)
    assert (verdict.format, verdict.verdict) == ("npy", Verdict.UNSAFE), verdict


def _after_magic(blob: bytes) -> io.BytesIO:
    stream = io.BytesIO(blob)
    stream.read(8)
    return stream


@pytest.mark.parametrize("dtype", [[("a", "O")], "M8[s],O", [("x", "<f8"), ("y", "O", (2,))]])
def test_joblib_array_with_objects_inside_a_structured_dtype_is_walked(
    tmp_path: Path, dtype: Any
) -> None:
    np = pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    array = np.zeros(2, dtype=dtype)
    field = array.dtype.names[-1]
    array[field][0] = _Evil() if array.dtype[field].shape == () else [_Evil(), 1]
    path = tmp_path / "m.joblib"
    joblib.dump({"a": array, "after": np.arange(3.0)}, path)
    verdict = scan_path(path).files[0]
    assert verdict.verdict is Verdict.UNSAFE, verdict
    assert any(f.global_name == "posix.system" for f in verdict.findings)


def test_joblib_structured_object_dtype_plain_walk_alone_would_miss_it(tmp_path: Path) -> None:
    """The joblib reading matters: the same bytes read by pickle.load see no os.system."""
    np = pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    array = np.zeros(1, dtype=[("a", "O")])
    array["a"][0] = _Evil()
    path = tmp_path / "m.joblib"
    joblib.dump(array, path)
    verdict = scan_path(path).files[0]
    assert verdict.format == "joblib"
    assert verdict.verdict is Verdict.UNSAFE


# -- 4. zip64 end record reached through the locator -----------------------------------------------


def test_torch_zip_with_zip64_end_record_reached_through_the_locator() -> None:
    evil = corpus.stack_global("os", "system", "id", 2)
    blob = corpus.zip64_locator_decoy(
        real=[("archive/data.pkl", evil), ("archive/version", b"3\n")],
        decoy=[("archive/data.pkl", corpus.benign_data_pkl()), ("archive/version", b"3\n")],
    )
    torch = pytest.importorskip("torch")
    reader = torch._C.PyTorchFileReader(io.BytesIO(blob))
    assert bytes(reader.get_record("data.pkl")) == evil  # what torch.load unpickles
    verdict = scan_bytes(blob)
    assert verdict.verdict is Verdict.UNSAFE, verdict
    assert any(f.global_name == "os.system" for f in verdict.findings)


@pytest.mark.parametrize("field", ["locator", "cd_offset", "cd_size"])
def test_absurd_zip64_offset_is_a_clean_refusal(field: str) -> None:
    verdict = scan_bytes(corpus.zip64_absurd_offset(field))  # no OverflowError escapes
    assert verdict.verdict in (Verdict.ERROR, Verdict.SAFE)
    huge = corpus.zip_archive([("a/data.pkl", EVIL_P0)])
    at = huge.rindex(b"PK\x05\x06")
    absurd = huge[: at + 16] + b"\xff\xff\xff\xff" + huge[at + 20 :]  # central offset 4 GiB
    assert scan_bytes(absurd).verdict is Verdict.UNSAFE  # still found by the local walk


def test_absurd_zip64_offset_from_a_file_is_a_clean_refusal(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(corpus.zip64_absurd_offset("cd_offset"))
    assert scan_path(path).files[0].verdict in (Verdict.ERROR, Verdict.SAFE)


# -- 5. tar member names with ':' --------------------------------------------------------------------


def test_tar_member_names_with_colons_are_scanned() -> None:
    name = "a:b:c:d:e:f:g/model:final.pt"
    blob = corpus.tar_archive([(name, EVIL_P0), ("README", b"# x\n")])
    verdict = scan_bytes(blob)
    assert (verdict.format, verdict.verdict) == ("tar", Verdict.UNSAFE), verdict
    assert name in verdict.findings[0].location


def test_archives_nested_too_deep_are_an_error_never_skipped() -> None:
    blob = EVIL_P0
    for level in range(12):
        blob = corpus.tar_archive([(f"l{level}.tar", blob)])
    assert scan_bytes(blob).verdict is not Verdict.SAFE


def test_legacy_torch_tar_pickles_after_raw_storage_are_walked() -> None:
    storages = (
        pickle.dumps(2, protocol=2)
        + b"(I1\nS'cpu'\nctorch\nFloatStorage\ntp0\n."  # key, location, storage type
        + struct.pack("<q", 2)
        + b"\x00" * 8
        + EVIL_P0  # a protocol-0 args record that imports os.system
        + struct.pack("<q", 0)
        + pickle.dumps([], protocol=2)
    )
    blob = corpus.tar_archive(
        [("storages", storages), ("tensors", pickle.dumps(0, protocol=2)),
         ("pickle", pickle.dumps({}, protocol=2))]
    )  # fmt: skip
    verdict = scan_bytes(blob)
    assert verdict.format == "torch-legacy-tar"
    assert verdict.verdict is Verdict.UNSAFE, verdict


# -- 6. scikit-learn allowlist ------------------------------------------------------------------------


def test_sklearn_private_reexport_of_multiprocessing_client_is_denied() -> None:
    pytest.importorskip("sklearn")
    import importlib

    module = importlib.import_module("sklearn.callback._transport")
    assert module.Client.__module__ == "multiprocessing.connection"  # the re-export exists
    assert classify("sklearn.callback._transport", "Client") is Allowance.DENY
    blob = corpus.stack_global("sklearn.callback._transport", "Client", "127.0.0.1")
    assert scan_bytes(blob).verdict is Verdict.UNSAFE


def test_sklearn_names_must_be_referenced_from_their_own_module() -> None:
    assert classify("sklearn.linear_model._logistic", "LogisticRegression") is Allowance.CALL
    assert classify("sklearn.linear_model", "LogisticRegression") is Allowance.DENY  # re-export
    assert classify("sklearn.utils._testing", "Pipeline") is Allowance.DENY
    assert classify("sklearn.anything", "SVC") is Allowance.DENY


# -- 7. 7z and encrypted-flag zip members ---------------------------------------------------------------


def test_seven_zip_archives_are_opened_and_scanned() -> None:
    pytest.importorskip("py7zr")
    evil = scan_bytes(corpus.seven_zip([("model/weights.pt", EVIL_P0), ("README", b"# x\n")]))
    assert (evil.format, evil.verdict) == ("7z", Verdict.UNSAFE), evil
    good = scan_bytes(corpus.seven_zip([("w.pkl", pickle.dumps({"a": 1}))]))
    assert (good.format, good.verdict) == ("7z", Verdict.SAFE), good


def test_zip_member_flagged_encrypted_but_stored_plainly_is_scanned() -> None:
    blob = corpus.zip_archive([("archive/data.pkl", EVIL_P0)], flags=1)
    verdict = scan_bytes(blob)
    assert verdict.verdict is Verdict.UNSAFE, verdict
    assert not any(f.kind is FindingKind.UNSUPPORTED for f in verdict.findings)


# -- readings the loaders have that the old scanner did not --------------------------------------------


def test_joblib_stream_read_by_pickle_load_is_judged_too() -> None:
    """joblib skips the array bytes after a wrapper; pickle.load reads them as opcodes. Both
    readings are judged: here the raw "array" imports os.system for pickle.load."""
    pytest.importorskip("numpy")
    raw = b"0cos\nsystem\n"  # POP the wrapper, GLOBAL os.system
    blob = (
        b"\x80\x02cjoblib.numpy_pickle\nNumpyArrayWrapper\n)\x81}("
        + b"\x8c\x05shape" + b"K" + bytes([len(raw)]) + b"\x85"
        + b"\x8c\x05dtypecnumpy\ndtype\n\x8c\x02u1\x89\x88\x87R"
        + b"\x8c\x05order\x8c\x01Cub" + raw + b"."
    )  # fmt: skip
    joblib_view = walk_pickle(io.BytesIO(blob), joblib=True)
    assert joblib_view.wrappers == 1 and "os.system" not in joblib_view.globals
    assert "os.system" in walk_pickle(io.BytesIO(blob)).globals
    assert scan_bytes(blob).verdict is Verdict.UNSAFE


def test_safetensors_file_read_as_a_pickle_is_judged_too() -> None:
    """torch.load reads anything that is not a zip as a legacy pickle. A well-formed
    safetensors file whose header size starts with the bytes "co\\n" is a GLOBAL that imports
    module "o" under that reading."""
    hlen = 0x0A6F63
    head = b'{"__metadata__":{"pad":"'
    tail = b'"}\n}'
    header = head + b"x" * (hlen - len(head) - len(tail)) + tail
    blob = struct.pack("<Q", hlen) + header
    asked = _imports_under_pickle_load(blob)
    assert asked and asked[0].startswith("o.")  # what pickle.load tries to import
    verdict = scan_bytes(blob)
    assert verdict.format == "safetensors"
    assert verdict.verdict is Verdict.UNSAFE, verdict


def test_tar_member_readable_by_tarfile_without_ustar_magic_is_scanned() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("weights.pt")
        info.size = len(EVIL_P0)
        tar.addfile(info, io.BytesIO(EVIL_P0))
    blob = bytearray(buf.getvalue())
    blob[257:265] = b"\x00" * 8  # v7 header: no ustar magic, checksum recomputed below
    blob[148:156] = b" " * 8
    blob[148:155] = f"{sum(blob[:512]):06o}\x00".encode()
    verdict = scan_bytes(bytes(blob))
    assert verdict.verdict is Verdict.UNSAFE, verdict
