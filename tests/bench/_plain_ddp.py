"""The benchmark's training script, run two ways: plain torchrun + DDP, and the same loop
protected by trainguard (`--guard`, launched by `trainguard train --script`). A ~1.06M-parameter
MLP on synthetic data, AdamW, bf16 autocast, gradient clipping; checkpoints every 100 steps in
both (plain `torch.save` by rank 0 vs `guard.save`).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/bench/_plain_ddp.py OUT STEPS BATCH [--guard]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from trainguard.trainer.models import mlp, synthetic


def main() -> None:
    out, steps, batch = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    guarded = "--guard" in sys.argv
    torch.set_num_threads(1)
    if guarded:
        from trainguard.trainer import Guard

        guard = Guard.from_env()
        device = guard.device
        rank, world = guard.rank, guard.world_size
    else:
        from torch.nn.parallel import DistributedDataParallel

        dist.init_process_group("gloo")
        device = torch.device("cpu")
        rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    data = synthetic(0.25)
    net = mlp(512, 800, 10, depth=2)
    model = guard.wrap(net) if guarded else DistributedDataParallel(net)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = {"model": model, "optim": opt}
    shard = torch.arange(len(data.y_train))[rank::world]
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        g = torch.Generator().manual_seed(rank * 7919 + step)
        idx = shard[torch.randint(len(shard), (batch,), generator=g)]
        x, y = data.x_train[idx].to(device), data.y_train[idx].to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if guarded:
            guard.step(step, loss=loss)
        if step % 100 == 0:
            if guarded:
                guard.save(step, state)
            elif rank == 0:
                torch.save({k: v.state_dict() for k, v in state.items()}, out.with_suffix(f".{step}.pt"))
    elapsed = time.perf_counter() - t0
    if rank == 0:
        out.write_text(json.dumps({"train_seconds": elapsed, "steps": steps}))
    if guarded:
        guard.close()
    else:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
