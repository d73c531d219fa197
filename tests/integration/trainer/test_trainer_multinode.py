"""Two "nodes" of one cluster on this machine: separate homes (one keyring shared as the cluster
KEK, each node with its own certificate from the cluster CA), one c10d rendezvous on
127.0.0.1, one shared checkpoint folder. A worker is killed mid-run; after the restart every
rank verifies the newest checkpoint itself, so the node that did not write it accepts a
signature made by the other node's certificate (checked against the CA and its CRL)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from support import make_home
from support.trainer_jobs import EXAMPLES, free_port, prepare
from trainguard.core.fs import write_private
from trainguard.core.home import Home
from trainguard.evidence.sink import NullSink

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cluster_homes(tmp: Path) -> tuple[Home, Home]:
    from trainguard.crypto.pki import ClusterCA

    a = make_home(tmp / "node-a", node="node-a")
    b = make_home(tmp / "node-b", node="node-b", keyring=False)
    for f in a.keys_dir.glob("k*"):  # the cluster KEK (keyring.json, kek-v1.key), not node keys
        shutil.copy2(f, b.keys_dir / f.name)
    ca = ClusterCA.create(a.pki_dir, "c1")
    for home, name in ((a, "node-a"), (b, "node-b")):
        cert, key = ca.issue(name, "node")
        write_private(home.pki_dir / "node.crt", cert, mode=0o644)
        write_private(home.pki_dir / "node.key", key)
    ca.write_crl()
    for f in ("ca.crt", "crl.pem"):  # public: what every node of the cluster holds
        write_private(b.pki_dir / f, (a.pki_dir / f).read_bytes(), mode=0o644)
    return a, b


def test_checkpoint_signed_on_one_node_resumes_on_the_other(tmp_path: Path) -> None:
    from trainguard.trainer.launcher import launch

    a, b = _cluster_homes(tmp_path)
    endpoint = f"127.0.0.1:{free_port()}"
    ck = tmp_path / "shared-ck"
    results: dict[str, Any] = {}

    def node(name: str, home: Home) -> None:
        plan = prepare(home, ["simulate.kill_rank=1", "simulate.kill_at_step=45"],
                       script=EXAMPLES / "digits_plain.py", checkpoint_dir=ck,
                       script_args=["--epochs", "3", "--checkpoint-every", "20"],
                       nproc=1, nnodes="2", rdzv_endpoint=endpoint, job_id="two-node-job",
                       max_restarts=2)
        try:
            results[name] = launch(plan, NullSink(), lambda k, s, e: None, timeout=400)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[name] = exc

    threads = [threading.Thread(target=node, args=("node-a", a)),
               threading.Thread(target=node, args=("node-b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    ra, rb = results["node-a"], results["node-b"]
    assert isinstance(ra, dict) and isinstance(rb, dict), results
    for r in (ra, rb):
        assert r["status"] == "completed", r
        assert r["attempts"] >= 2 and r["resumed_from_step"] == 40
        assert r["world_size"] == 2 and r["final_accuracy"] >= 0.85
    # Both nodes verified and loaded the same checkpoint, signed with one node's certificate:
    # the other node accepted a signature it could only check through the cluster CA (its own
    # Ed25519 node key differs, and a node-key signature would have been refused there).
    assert ra["resumed_signer"] == rb["resumed_signer"]
    assert ra["resumed_signer"] in ("spiffe://c1/node/node-a", "spiffe://c1/node/node-b")
