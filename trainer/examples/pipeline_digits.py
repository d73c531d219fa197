"""A 2-stage pipeline (`torch.distributed.pipelining`, GPipe schedule) protected by trainguard.

    trainguard train --script trainer/examples/pipeline_digits.py --nproc 2 -- --steps 60

The classifier is cut in two: rank 0 holds the first layers, rank 1 the rest and the loss;
micro-batches flow through `ScheduleGPipe`. Each rank keeps only its own layers under their
original names (``layers.0`` on rank 0, ``layers.1`` and ``layers.2`` on rank 1), so the ranks'
states differ: `guard.save` sees that and writes a sealed DCP step in which every stage saves
its own part. `guard.wrap(stage, data_parallel=False)` moves the stage to the device without
DDP (stages hold different layers, nothing to average). Runs on gloo (CPU) and NCCL; the
number of stages is the world size, so it resumes at the same world size only.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining import PipelineStage, ScheduleGPipe
from torch.utils.data import DataLoader
from trainguard.trainer import Guard  # trainguard
from trainguard.trainer.dcp import AppState  # trainguard: DCP's model + optimizer Stateful
from trainguard.trainer.examples.digits_plain import digits
from trainguard.trainer.examples.fsdp2_digits import checksum, parse

STAGES = (("0",), ("1", "2"))  # which layers each of the 2 stages holds


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({"0": nn.Linear(64, 128), "1": nn.Linear(128, 128),
                                     "2": nn.Linear(128, 10)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for name, layer in self.layers.items():
            x = layer(x)
            if name != "2":
                x = F.relu(x)
        return x


def stage_module(rank: int) -> Classifier:
    """The full model with the other stage's layers removed (names stay as in the full model)."""
    model = Classifier()
    for name in list(model.layers):
        if name not in STAGES[rank]:
            del model.layers[name]
    return model


def accuracy(stage: nn.Module, data: torch.utils.data.TensorDataset, guard: Guard) -> float:
    """Forward the test set through both stages with a plain send / recv."""
    x, y = data.tensors
    with torch.no_grad():
        if guard.rank == 0:
            dist.send(stage(x.to(guard.device)).contiguous(), dst=1)
            acc = torch.zeros(1, device=guard.device)
        else:
            hidden = torch.empty(len(x), 128, device=guard.device)
            dist.recv(hidden, src=0)
            pred = stage(hidden).argmax(dim=1)
            acc = (pred == y.to(guard.device)).float().mean().reshape(1)
    dist.broadcast(acc, src=1)
    return float(acc[0])


def main() -> None:
    args = parse()
    with Guard.from_env() as guard:  # trainguard: process group, device, membership proof
        if guard.world_size != len(STAGES):
            raise SystemExit(f"this pipeline has {len(STAGES)} stages: run it with --nproc {len(STAGES)}")
        torch.manual_seed(0)
        train_set, test = digits()
        model = guard.wrap(stage_module(guard.rank), data_parallel=False)  # trainguard
        stage = PipelineStage(model, guard.rank, len(STAGES), guard.device)
        schedule = ScheduleGPipe(stage, n_microbatches=4, loss_fn=F.cross_entropy)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
        state = {"app": AppState(model, optimizer)}
        step = guard.resume(state) or 0  # trainguard: newest verified step
        if step:
            guard.report(resumed_checksum=checksum(model))  # rank 0's stage

        last = guard.rank == len(STAGES) - 1
        loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(0))
        while step < args.steps:
            for x, y in loader:
                optimizer.zero_grad(set_to_none=True)
                losses: list[torch.Tensor] = []
                if guard.rank == 0:
                    schedule.step(x.to(guard.device))
                else:
                    schedule.step(target=y.to(guard.device), losses=losses)
                optimizer.step()
                step += 1
                loss = torch.stack(losses).mean().detach() if last else None
                guard.step(step, loss=loss)  # trainguard: the last stage reports the loss
                if step % args.checkpoint_every == 0 or step == args.steps:
                    guard.save(step, state, async_=args.async_save)  # trainguard: sealed DCP
                if step == args.steps:
                    break
        guard.report(final_accuracy=accuracy(model, test, guard), checksum=checksum(model))


if __name__ == "__main__":
    main()
