"""What Guard's per-save routing decision costs: `is_sharded_state` (expands the state through
its Stateful entries, one all-reduce) against the sealed DCP save it precedes, interleaved,
medians. One gloo rank; an FSDP2 model of 16 Linear(1024, 1024) layers with AdamW state.

    python tests/bench/bench_guard_routing.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from trainguard.crypto.keyring import Keyring
    from trainguard.crypto.signing import SigningKey
    from trainguard.trainer.context import Trust
    from trainguard.trainer.dcp import (
        AppState,
        DcpCheckpoints,
        LocalKeys,
        is_sharded_state,
        signing_key_signer,
        trust_verifier,
    )

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--layers", type=int, default=16)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    mesh = init_device_mesh("cpu", (1,))
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(args.layers)])
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optim = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1024)).sum().backward()
    optim.step()
    state = {"app": AppState(model, optim)}
    root = Path(tempfile.mkdtemp())
    key = SigningKey.generate()
    trust = Trust(verify_key_pem=key.public_key().to_pem().decode())
    store = DcpCheckpoints(root / "ck", LocalKeys(Keyring.create(root / "keys")),
                           signing_key_signer(key), trust_verifier(trust), keep=2, sync_files=False)
    detect, save = [], []
    for step in range(1, args.runs + 1):  # ABAB: decision, then the save it routes
        t0 = time.perf_counter()
        is_sharded_state(state, torch.device("cpu"))
        detect.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        store.save(step, state)
        save.append(time.perf_counter() - t0)
    d, s = statistics.median(detect), statistics.median(save)
    mib = sum(p.numel() for p in model.parameters()) * 3 * 4 / 2**20  # params + 2 Adam moments
    print(json.dumps({"state_mib": round(mib), "runs": args.runs, "decision_s": round(d, 4),
                      "sealed_dcp_save_s": round(s, 3), "ratio": round(d / s, 4)}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
