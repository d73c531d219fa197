"""Tensor parallelism (`parallelize_module`, Colwise + Rowwise) protected by trainguard.

    trainguard train --script trainer/examples/tp_digits.py --nproc 2 -- --steps 60

The MLP block of a small digits classifier is split over all ranks Megatron-style: the up
projection column-wise, the down projection row-wise (its output all-reduced), so every rank
computes a slice of the hidden layer. The embedding and the head stay replicated; every rank
trains on the same batches (tensor parallelism splits the model, not the data). `guard.wrap`
leaves the parallelized model as it is; the state holds DTensors, so `guard.save` writes a
sealed DCP step; a step saved at 2 ranks resumes at 1 (DCP reshards the DTensors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.utils.data import DataLoader
from trainguard.trainer import Guard  # trainguard
from trainguard.trainer.dcp import AppState  # trainguard: DCP's model + optimizer Stateful
from trainguard.trainer.examples.digits_plain import digits
from trainguard.trainer.examples.fsdp2_digits import accuracy, checksum, parse


class MlpBlock(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(x)))


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(64, 64)
        self.block = MlpBlock(64, 256)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(F.relu(self.embed(x.flatten(1)))))


def main() -> None:
    args = parse()
    with Guard.from_env() as guard:  # trainguard: process group, device, membership proof
        torch.manual_seed(0)
        train_set, test = digits()
        mesh = init_device_mesh(guard.device.type, (guard.world_size,), mesh_dim_names=("tp",))
        model = parallelize_module(Classifier().to(guard.device), mesh,
                                   {"block.up": ColwiseParallel(), "block.down": RowwiseParallel()})
        model = guard.wrap(model)  # trainguard: already sharded (DTensors), passes through
        # foreach=False: the parameter list mixes DTensors (the block) and plain tensors
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, foreach=False)
        state = {"app": AppState(model, optimizer)}
        step = guard.resume(state) or 0  # trainguard: newest verified step, resharded
        if step:
            guard.report(resumed_checksum=checksum(model))

        # The same batches on every rank: the generator is seeded identically.
        loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(0))
        while step < args.steps:
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
    main()
