"""FSDP2 (`fully_shard`) training protected by trainguard: sealed + signed DCP checkpoints.

    trainguard train --script trainer/examples/fsdp2_digits.py --nproc 2 -- --steps 60

An MLP on scikit-learn's 8x8 digits, every layer sharded over all ranks with FSDP2 (gloo on
CPU, NCCL on GPUs). `guard.wrap` leaves the sharded model as it is (no DDP); `guard.save`
sees DTensors in the state and writes a sealed DCP step from every rank; `guard.resume` loads
the newest verified step, also at another world size (DCP reshards). The trainguard lines are
marked `# trainguard`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, DistributedSampler
from trainguard.trainer import Guard  # trainguard
from trainguard.trainer.dcp import AppState  # trainguard: DCP's model + optimizer Stateful
from trainguard.trainer.examples.digits_plain import digits


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128),
                         nn.ReLU(), nn.Linear(128, 10))


def checksum(model: nn.Module) -> float:
    """Sum of every full parameter (a collective when parameters are DTensors)."""
    from torch.distributed.tensor import DTensor

    total = 0.0
    for p in model.parameters():
        full = p.full_tensor() if isinstance(p, DTensor) else p
        total += float(full.detach().double().sum())
    return total


def accuracy(model: nn.Module, data: torch.utils.data.TensorDataset, device: torch.device) -> float:
    x, y = data.tensors
    with torch.no_grad():
        pred = model(x.to(device)).argmax(dim=1)
    return float((pred == y.to(device)).float().mean())


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps in all")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--checkpoint-every", type=int, default=20)
    parser.add_argument("--async-save", action="store_true", help="guard.save(..., async_=True)")
    return parser.parse_args()


def train(args: argparse.Namespace, mesh_shape: Callable[[int], tuple[int, ...]]) -> None:
    """The job on a device mesh of `mesh_shape(world_size)`: 1-D is FSDP2, 2-D is HSDP
    (replicate over the first dimension, shard over the second)."""
    with Guard.from_env() as guard:  # trainguard: process group, device, membership proof
        torch.manual_seed(0)  # the same initial weights on every rank, before sharding
        train_set, test = digits()
        shape = mesh_shape(guard.world_size)
        mesh = init_device_mesh(guard.device.type, shape,
                                mesh_dim_names=("replicate", "shard")[-len(shape):])
        model = mlp().to(guard.device)
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        model = guard.wrap(model)  # trainguard: already sharded, passes through
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
        state = {"app": AppState(model, optimizer)}
        step = guard.resume(state) or 0  # trainguard: newest verified step, resharded
        if step:
            guard.report(resumed_checksum=checksum(model))

        sampler = DistributedSampler(train_set, num_replicas=guard.world_size, rank=guard.rank, seed=0)
        loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True)
        while step < args.steps:
            sampler.set_epoch(step // len(loader))
            for x, y in loader:
                loss = F.cross_entropy(model(x.to(guard.device)), y.to(guard.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                guard.step(step, loss=loss)  # trainguard: telemetry, stop requests
                if step % args.checkpoint_every == 0 or step == args.steps:
                    guard.save(step, state, async_=args.async_save)  # trainguard: sealed DCP
                if step == args.steps:
                    break
        guard.report(final_accuracy=accuracy(model, test, guard.device), checksum=checksum(model))


if __name__ == "__main__":
    train(parse(), lambda world: (world,))
