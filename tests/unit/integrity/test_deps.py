"""Dependency lock and verify against a small synthetic site-packages folder."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from support.dists import make_dist
from trainguard.crypto.signing import SigningKey
from trainguard.integrity.deps.cache import HashCache
from trainguard.integrity.deps.lock import (
    DepsLockError,
    build_lock,
    read_lock,
    requirement_warnings,
    verify_lock,
    write_lock,
)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site-packages"
    make_dist(
        site, "alpha", "1.0", {"alpha/__init__.py": b"A = 1\n", "alpha/core.py": b"def f(): ...\n"}
    )
    make_dist(
        site, "beta", "2.0", {"beta.py": b"B = 2\n", "beta_pkg/x.py": b"x\n"}, wrong="beta_pkg/x.py"
    )
    (site / "alpha.pth").write_text("import os\n")
    return site


def _verify(site: Path, lock: dict, cache: HashCache | None = None):
    return verify_lock(lock, paths=[str(site)], cache=cache)


def test_lock_records_files_startup_and_record_mismatch(site: Path) -> None:
    lock = build_lock(paths=[str(site)], clock=lambda: 123.0)
    alpha = lock["distributions"]["alpha"]
    assert alpha["version"] == "1.0" and alpha["installer"] == "pip"
    core = str(site / "alpha" / "core.py")
    assert alpha["files"][core] == [hashlib.sha256(b"def f(): ...\n").hexdigest(), 13]
    assert lock["distributions"]["beta"]["record_mismatch"] == [str(site / "beta_pkg" / "x.py")]
    assert list(lock["startup"]) == [str(site / "alpha.pth")]
    assert lock["created"] == 123.0
    assert not _verify(site, lock).drift


def test_changed_missing_and_extra_files_are_named(site: Path) -> None:
    lock = build_lock(paths=[str(site)])
    (site / "alpha" / "core.py").write_bytes(b"import os; os.system('id')\n")
    (site / "alpha" / "__init__.py").unlink()
    (site / "alpha" / "planted.py").write_text("evil\n")
    (site / "alpha" / "sub").mkdir()
    (site / "alpha" / "sub" / "deep.py").write_text("evil\n")
    result = _verify(site, lock)
    assert result.drift
    [drift] = result.distributions
    assert drift.name == "alpha"
    assert drift.changed == (str(site / "alpha" / "core.py"),)
    assert drift.missing == (str(site / "alpha" / "__init__.py"),)
    assert set(drift.extra) == {
        str(site / "alpha" / "planted.py"),
        str(site / "alpha" / "sub" / "deep.py"),
    }


def test_startup_files_and_distribution_changes(site: Path) -> None:
    lock = build_lock(paths=[str(site)])
    (site / "alpha.pth").write_text("import evil\n")
    (site / "zzz.pth").write_text("import evil\n")
    (site / "sitecustomize.py").write_text("import evil\n")
    make_dist(site, "gamma", "0.1", {"gamma.py": b"g\n"})
    import shutil

    shutil.rmtree(site / "beta-2.0.dist-info")
    result = _verify(site, lock)
    assert result.startup_changed == (str(site / "alpha.pth"),)
    assert set(result.startup_new) == {str(site / "zzz.pth"), str(site / "sitecustomize.py")}
    assert result.added == ("gamma",) and result.removed == ("beta",)


def test_version_change_is_drift(site: Path) -> None:
    lock = build_lock(paths=[str(site)])
    meta = site / "alpha-1.0.dist-info" / "METADATA"
    meta.write_text(meta.read_text().replace("1.0", "1.1"))
    [drift] = _verify(site, lock).distributions
    assert drift.version == ("1.0", "1.1")


def test_cache_skips_unchanged_files_but_not_rewritten_ones(site: Path, tmp_path: Path) -> None:
    lock = build_lock(paths=[str(site)])
    cache_path = tmp_path / "cache.json"
    first = _verify(site, lock, HashCache(cache_path))
    assert first.files_hashed == first.files_checked
    second = _verify(site, lock, HashCache(cache_path))
    assert second.files_hashed == 0 and not second.drift
    target = site / "alpha" / "core.py"
    st = target.stat()
    target.write_bytes(b"def g(): ..\n\n")  # same size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back; ctime cannot be
    third = _verify(site, lock, HashCache(cache_path))
    assert third.files_hashed == 1
    assert third.distributions[0].changed == (str(target),)


def test_signed_lock_round_trip_and_tampering_refused(site: Path, tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = write_lock(build_lock(paths=[str(site)]), tmp_path / "deps.lock.json", key)
    lock = read_lock(path, key.public_key())
    assert lock["key_id"] == key.key_id
    data = json.loads(path.read_bytes())
    data["distributions"]["alpha"]["files"].clear()  # hide a file from the lock
    path.write_bytes(json.dumps(data).encode())
    with pytest.raises(DepsLockError, match="signature"):
        read_lock(path, key.public_key())
    with pytest.raises(DepsLockError):
        read_lock(tmp_path / "absent.json", key.public_key())
    other = write_lock(build_lock(paths=[str(site)]), tmp_path / "o.json", SigningKey.generate())
    with pytest.raises(DepsLockError):
        read_lock(other, key.public_key())


def test_requirement_files_without_hash_pins_warn(tmp_path: Path) -> None:
    pinned = tmp_path / "requirements.txt"
    pinned.write_text("torch==2.3.0 \\\n    --hash=sha256:abc\n# comment\n-r other.txt\n")
    loose = tmp_path / "requirements-dev.txt"
    loose.write_text("pytest>=8\nnumpy==1.26 --hash=sha256:def\n")
    assert requirement_warnings([pinned, loose]) == [
        {"file": str(loose), "unpinned": ["pytest>=8"]}
    ]
