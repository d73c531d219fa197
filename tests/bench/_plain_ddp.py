"""Baseline for bench_trainer.py: plain torchrun + DDP, same model, data and batch size.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/bench/_plain_ddp.py OUT STEPS BATCH
"""

from __future__ import annotations

import json
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from trainguard.trainer.models import mlp, synthetic


def main() -> None:
    out, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    data = synthetic(0.25)
    model = DistributedDataParallel(mlp(512, 800, 10, depth=2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    shard = torch.arange(len(data.y_train))[rank::world]
    t0 = time.perf_counter()
    for step in range(steps):
        g = torch.Generator().manual_seed(rank * 7919 + step)
        idx = shard[torch.randint(len(shard), (batch,), generator=g)]
        loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    elapsed = time.perf_counter() - t0
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"train_seconds": elapsed, "steps": steps}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
