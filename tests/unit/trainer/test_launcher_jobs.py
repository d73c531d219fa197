"""Job ids and run folders of `prepare_job`: the nodes of a multi-node job launched without
--job-id derive one id (rendezvous and membership key), single-node launches get fresh ids, a
relaunch never reuses a run folder, and the launch context names the job identity that
checkpoints are bound to."""

from __future__ import annotations

from pathlib import Path

from support import make_home
from trainguard.trainer.context import LaunchContext, job_identity
from trainguard.trainer.launcher import LaunchOptions, prepare_job, write_context

SCRIPT = Path(__file__).resolve().parents[3] / "trainer" / "examples" / "digits_plain.py"


def _plan(home, ck: Path, **opts):
    project = opts.pop("project", "default")
    return prepare_job(home, None, [], LaunchOptions(**opts), lambda j: ("k" * 32).encode(),
                       script=SCRIPT, checkpoint_dir=ck, project=project)


def test_nodes_of_one_multinode_job_derive_the_same_id(tmp_path: Path) -> None:
    a, b = make_home(tmp_path / "a", node="a"), make_home(tmp_path / "b", node="b")
    ep = "10.0.0.1:29400"
    pa = _plan(a, tmp_path / "shared" / "ck", nnodes="2", rdzv_endpoint=ep)
    pb = _plan(b, Path("/mnt/other/mount/ck"), nnodes="2", rdzv_endpoint=ep)  # same folder name
    assert pa.job_id == pb.job_id and pa.job_id.startswith("digits_plain-")
    assert pa.job_binding == pb.job_binding == job_identity("default", SCRIPT, tmp_path / "ck")
    assert _plan(a, tmp_path / "ck", nnodes="2", rdzv_endpoint="10.0.0.1:29500").job_id != pa.job_id
    assert _plan(a, tmp_path / "ck", nnodes="2", rdzv_endpoint=ep, project="p2").job_id != pa.job_id
    assert _plan(a, tmp_path / "ck", nnodes="2", rdzv_endpoint=ep, job_id="J").job_id == "J"


def test_single_node_launches_get_fresh_ids(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    assert _plan(home, tmp_path / "ck").job_id != _plan(home, tmp_path / "ck").job_id


def test_a_relaunch_gets_a_new_run_folder(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    ep = "127.0.0.1:29400"
    first = _plan(home, tmp_path / "ck", nnodes="2", rdzv_endpoint=ep)
    first.run.write_json(first.run.result_file, {"status": "completed"})
    again = _plan(home, tmp_path / "ck", nnodes="2", rdzv_endpoint=ep, resume=True)
    assert again.job_id == first.job_id
    assert again.run.root == first.run.root.with_name(first.job_id + ".2")
    assert again.run.read_json(again.run.result_file) is None  # nothing of the first launch
    assert oct(again.run.root.stat().st_mode & 0o777) == "0o700"


def test_launch_context_carries_the_job_identity(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    plan = _plan(home, tmp_path / "ck", project="p1")
    ctx = LaunchContext.read(write_context(plan, tmp_path / "k.sock"))
    assert ctx.trust.job == job_identity("p1", "digits_plain.py", "ck")
