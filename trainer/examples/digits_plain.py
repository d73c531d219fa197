"""A plain torchrun training script, protected by trainguard with a few lines.

    trainguard train --script trainer/examples/digits_plain.py --nproc 2 -- --epochs 3

A small CNN on scikit-learn's 8x8 digits: DataLoader + DistributedSampler, AdamW with a
one-cycle LR schedule, bfloat16 autocast, gradient clipping. The trainguard lines are marked
`# trainguard`; without them this is an ordinary DDP script.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from trainguard.trainer import Guard  # trainguard


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def digits() -> tuple[TensorDataset, TensorDataset]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    test, train = order[: len(y) // 4], order[len(y) // 4 :]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def evaluate(model: nn.Module, data: TensorDataset, device: torch.device) -> float:
    model.eval()
    with torch.no_grad():
        x, y = data.tensors
        pred = model(x.to(device)).argmax(dim=1)
    model.train()
    return float((pred == y.to(device)).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--checkpoint-every", type=int, default=50, help="optimizer steps")
    args = parser.parse_args()

    with Guard.from_env() as guard:  # trainguard: process group, device, membership proof
        torch.manual_seed(0)
        train, test = digits()
        sampler = DistributedSampler(train, num_replicas=guard.world_size, rank=guard.rank, seed=0)
        loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, drop_last=True)
        model = guard.wrap(SmallCNN())  # trainguard: to guard.device, DDP + robust aggregation
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
        total = args.epochs * len(loader)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total)
        state = {"model": model, "optim": optimizer, "sched": scheduler}
        step = guard.resume(state) or 0  # trainguard: newest verified checkpoint, in place

        while step < total:
            epoch, done_in_epoch = divmod(step, len(loader))
            sampler.set_epoch(epoch)
            for i, (x, y) in enumerate(loader):
                if i < done_in_epoch:  # resumed mid-epoch: skip what was already trained on
                    continue
                x, y = x.to(guard.device), y.to(guard.device)
                with torch.autocast(device_type=guard.device.type, dtype=torch.bfloat16):
                    loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                guard.step(step, loss=loss)  # trainguard: telemetry, replica hash, stop requests
                if step % args.checkpoint_every == 0:
                    guard.save(step, state)  # trainguard: sealed + signed checkpoint
        if step % args.checkpoint_every:
            guard.save(step, state)
        guard.report(final_accuracy=evaluate(model.module, test, guard.device))


if __name__ == "__main__":
    main()
