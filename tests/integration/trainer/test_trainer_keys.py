"""Keys stay out of user code: a protected script's worker has no file descriptor on the home's
keys/ folder, reaches no keyring or signing key and no KEK bytes, and its bf16 / bool /
complex state is sealed, signed by the launcher's key process and resumed in place."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from support import make_home
from support.trainer_jobs import run_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROBE = Path(__file__).parent / "scripts" / "probe_keys.py"


def test_worker_holds_no_key_material_and_bf16_state_resumes(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    out = tmp_path / "out"
    out.mkdir()
    ck = tmp_path / "ck"
    first, _ = run_job(home, [], script=PROBE, script_args=[str(out)], checkpoint_dir=ck, nproc=2)
    assert first["status"] == "completed", first
    assert [c["step"] for c in first["checkpoints"]] == [3]
    second, _ = run_job(home, [], script=PROBE, script_args=[str(out)], checkpoint_dir=ck, nproc=2,
                        resume=True)
    assert second["status"] == "completed" and second["resumed_from_step"] == 3

    kek_hashes = {hashlib.sha256(p.read_bytes()).hexdigest() for p in home.keys_dir.glob("kek-v*.key")}
    keys_dir = str(home.keys_dir.resolve())
    for rank in (0, 1):
        saved = json.loads((out / f"probe-{rank}-None.json").read_text())
        resumed = json.loads((out / f"probe-{rank}-3.json").read_text())
        for report in (saved, resumed):
            assert not [fd for fd in report["fds"] if fd.startswith(keys_dir)], report["fds"]
            assert report["key_types"] == []
            assert not kek_hashes & set(report["byte_hashes"])
        assert resumed["dtype"] == "torch.bfloat16"
        assert resumed["weight_sum"] == saved["weight_sum"]  # bf16 weights restored exactly
        assert resumed["mask"] == [False, True, False, False]
        assert resumed["z"][0] == "(1+2j)"
