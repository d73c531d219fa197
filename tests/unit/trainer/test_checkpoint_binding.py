"""Checkpoints are bound to their job: a validly signed checkpoint of another project, script
or checkpoint folder is refused as checkpoint-tampered, an unbound (format-1) manifest is
refused by a job, and the same job (another launch, another mount path) still resumes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from trainguard.core.home import Home
from trainguard.trainer.checkpoint import CheckpointStore, manifest_path
from trainguard.trainer.context import job_identity
from trainguard.trainer.errors import CheckpointTampered
from trainguard.trainer.launcher import trust_for


def _store(home: Home, keys, directory: Path, job: str | None) -> CheckpointStore:
    return CheckpointStore(directory, keys, dataclasses.replace(trust_for(home), job=job))


def _payload(step: int) -> dict:
    return {"step": step, "state": {"w": torch.full((3,), float(step))}}


def test_identity_names_project_source_and_folder_name_only() -> None:
    a = job_identity("p1", "/home/u/train.py", "/shared/ckpt/J")
    assert a == job_identity("p1", "/other/checkout/train.py", "/mnt/nfs/ckpt/J")  # other mount
    assert a != job_identity("p2", "/home/u/train.py", "/shared/ckpt/J")
    assert a != job_identity("p1", "/home/u/eval.py", "/shared/ckpt/J")
    assert a != job_identity("p1", "/home/u/train.py", "/shared/ckpt/K")


def test_manifest_carries_the_job_and_the_same_job_loads_it(home: Home, keys, tmp_path: Path) -> None:
    job = job_identity("p1", "train.py", tmp_path / "ck")
    info = _store(home, keys, tmp_path / "ck", job).save(_payload(5), 5)
    body = json.loads(manifest_path(info.path).read_text())["manifest"]
    assert body["binding"] == job and body["format"] == 2
    # the folder moved (another node's mount point): same name, same job
    moved = tmp_path / "elsewhere" / "ck"
    shutil.copytree(tmp_path / "ck", moved)
    payload, got = _store(home, keys, moved, job).load(moved / info.path.name)
    assert got.step == 5 and torch.equal(payload["state"]["w"], torch.full((3,), 5.0))


def test_checkpoint_copied_from_another_job_is_refused_and_the_older_one_used(
        home: Home, keys, tmp_path: Path) -> None:
    mine = _store(home, keys, tmp_path / "ck", job_identity("p1", "train.py", tmp_path / "ck"))
    mine.save(_payload(10), 10)
    other_dir = tmp_path / "other" / "ck"  # same folder name, another project
    other = _store(home, keys, other_dir, job_identity("p2", "train.py", other_dir))
    theirs = other.save(_payload(20), 20)
    for f in (theirs.path, manifest_path(theirs.path)):
        shutil.copy2(f, tmp_path / "ck" / f.name)

    with pytest.raises(CheckpointTampered) as err:
        mine.verify(tmp_path / "ck" / theirs.path.name)
    assert "signed for another job" in err.value.message and '"project":"p2"' in err.value.message
    assert "resumed only by the job that wrote it" in (err.value.tip or "")
    outcome = mine.load_newest()
    assert outcome.info is not None and outcome.info.step == 10
    assert [p.name for p, _ in outcome.refused] == [theirs.path.name]


def test_unbound_format1_manifest_is_refused_by_a_job_and_read_outside_one(
        home: Home, keys, tmp_path: Path) -> None:
    legacy = _store(home, keys, tmp_path / "ck", None).save(_payload(3), 3)
    assert json.loads(manifest_path(legacy.path).read_text())["manifest"]["format"] == 1
    job = _store(home, keys, tmp_path / "ck", job_identity("p1", "train.py", tmp_path / "ck"))
    with pytest.raises(CheckpointTampered, match="names no job"):
        job.verify(legacy.path)
    assert job.load_newest().info is None
    # a tool outside any job (no identity to check) still reads the file it was given
    assert _store(home, keys, tmp_path / "ck", None).verify(legacy.path).step == 3


def test_the_binding_is_signed(home: Home, keys, tmp_path: Path) -> None:
    job = job_identity("p2", "train.py", tmp_path / "ck")
    info = _store(home, keys, tmp_path / "ck", job).save(_payload(7), 7)
    doc = json.loads(manifest_path(info.path).read_text())
    doc["manifest"]["binding"] = job_identity("p1", "train.py", tmp_path / "ck")  # relabelled
    manifest_path(info.path).write_text(json.dumps(doc))
    with pytest.raises(CheckpointTampered, match="signature does not verify"):
        _store(home, keys, tmp_path / "ck", doc["manifest"]["binding"]).verify(info.path)
