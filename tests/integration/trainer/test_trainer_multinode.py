"""Two "nodes" of one cluster on this machine, through the real CLI, as the issue describes it:
two `trainguard train --script ... --nnodes 2 --rdzv-endpoint 127.0.0.1:PORT` launches, each
with its own home (one cluster CA and KEK, a `pki issue NAME --kind node` certificate per node,
alice logged in with fresh MFA on each), one c10d rendezvous, one shared checkpoint folder and
no --job-id (both nodes derive the same job id). Once a checkpoint exists, the worker of rank 1
is SIGKILLed from outside; torchrun restarts both nodes' workers and the killed node's new
worker resumes from a checkpoint signed by the OTHER node's certificate, which it can only
verify through the cluster CA (its own node key differs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.cluster_homes import cluster_homes, login
from support.trainer_jobs import EXAMPLES, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


def _descendants(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        for child in _children(todo.pop()):
            seen.append(child)
            todo.append(child)
    return seen


def _worker_env(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _kill_rank(launchers: dict[str, subprocess.Popen], rank: str, ck: Path, deadline: float) -> str:
    """Wait for the first signed checkpoint, then SIGKILL the first-attempt worker of `rank`;
    returns the node it ran on."""
    while time.monotonic() < deadline:
        if any(ck.glob("step-*.tgseal.tgsig.json")):
            for node, proc in launchers.items():
                for pid in _descendants(proc.pid):
                    env = _worker_env(pid)
                    if env.get("RANK") == rank and env.get("TORCHELASTIC_RESTART_COUNT") == "0":
                        os.kill(pid, signal.SIGKILL)
                        return node
        assert all(p.poll() is None for p in launchers.values()), "a node ended before the kill"
        time.sleep(0.1)
    raise AssertionError("no checkpoint appeared in time")


def test_two_cli_nodes_resume_from_a_checkpoint_signed_by_the_other_node(
        cli, cli_env: dict[str, str], tmp_path: Path) -> None:
    nodes = cluster_homes(cli, tmp_path / "cluster", ("node-a", "node-b"))
    for node in nodes:
        login(cli, node)
    endpoint = f"127.0.0.1:{free_port()}"
    ck = tmp_path / "shared" / "ck"
    launchers = {node.name: subprocess.Popen(
        [sys.executable, "-m", "trainguard.cli.main", "train", "--script",
         str(EXAMPLES / "digits_plain.py"), "--home", str(node.home), "--user", "alice",
         "--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", endpoint,
         "--checkpoint-dir", str(ck), "--set", "checkpoint.keep=20", "--skip-deps-verify",
         "--timeout", "500",
         "--format", "json", "--", "--epochs", "6", "--checkpoint-every", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env) for node in nodes}
    try:
        killed = _kill_rank(launchers, "1", ck, time.monotonic() + 400)
        outs = {n: p.communicate(timeout=560) for n, p in launchers.items()}
    finally:
        for p in launchers.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    results: dict[str, Any] = {}
    for name, (out, err) in outs.items():
        assert launchers[name].returncode == 0, err.decode()[-4000:]
        results[name] = json.loads(out)
    other = next(n.name for n in nodes if n.name != killed)
    signer = f"spiffe://c1/node/{other}"

    for r in results.values():
        assert r["status"] == "completed" and r["incidents"] == [], r
        assert r["world_size"] == 2 and r["final_accuracy"] >= 0.85
        assert r["job_id"] == results[other]["job_id"]  # one job id, derived alike on both nodes
    mine = results[killed]
    assert mine["attempts"] >= 2  # torchrun restarted the killed node's worker
    step = mine["resumed_from_step"]
    assert step is not None and step % 20 == 0 and step >= 20
    assert mine["resumed_signer"] == signer  # verified through the CA: the other node signed it

    # What the user can check on disk: the resumed checkpoint's manifest carries the other
    # node's certificate and names this job.
    doc = json.loads((ck / f"step-{step:08d}.tgseal.tgsig.json").read_text())
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(doc["certificate"].encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == other
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [signer]
    assert '"source":"digits_plain.py"' in doc["manifest"]["binding"]

    # ... and in the audit logs: each node recorded alice's launch; the node hosting rank 0
    # after the restart recorded the resume with the checkpoint's signer.
    resumes = []
    for node in nodes:
        log = cli("audit", "log", "--home", node.home, "--format", "json").json()
        launch = next(e for e in log if e["kind"] == "train.launch")
        assert launch["actor"] == "alice" and launch["data"]["nnodes"] == "2"
        resumes += [e["data"] for e in log if e["kind"] == "train.resume"]
        assert cli("audit", "verify", "--home", node.home).code == 0
    assert [(r["step"], r["signer"]) for r in resumes] == [(step, signer)]
