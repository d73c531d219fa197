"""The same job written with Hugging Face Accelerate, protected by trainguard.

    trainguard train --script trainer/examples/digits_accelerate.py --nproc 2 -- --epochs 3

Accelerate keeps what it is good at (sharding the DataLoader, mixed precision, `backward`,
gradient clipping); the model goes through `guard.wrap` instead of `accelerator.prepare`, so
its gradients are aggregated by trainguard's hook, and checkpoints go through `guard.save`
(sealed and signed) instead of `accelerator.save_state`. `Guard.from_env()` comes first: it
creates the process group (after the membership proof) that Accelerate then joins.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader
from trainguard.trainer import Guard  # trainguard

try:  # run as a script: the plain example sits next to this file
    from digits_plain import SmallCNN, digits, evaluate
except ImportError:  # imported as trainguard.trainer.examples.digits_accelerate
    from trainguard.trainer.examples.digits_plain import SmallCNN, digits, evaluate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--checkpoint-every", type=int, default=50, help="optimizer steps")
    args = parser.parse_args()

    with Guard.from_env() as guard:  # trainguard: process group, device, membership proof
        accelerator = Accelerator(mixed_precision="bf16", cpu=guard.device.type == "cpu")
        torch.manual_seed(0)
        train, test = digits()
        loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(0))
        model = guard.wrap(SmallCNN())  # trainguard: DDP + robust aggregation on guard.device
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
        optimizer, loader = accelerator.prepare(optimizer, loader)
        total = args.epochs * len(loader)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer.optimizer, max_lr=args.lr,
                                                        total_steps=total)
        state = {"model": model, "optim": optimizer, "sched": scheduler}
        step = guard.resume(state) or 0  # trainguard: newest verified checkpoint, in place

        while step < total:
            epoch, done_in_epoch = divmod(step, len(loader))
            loader.set_epoch(epoch)
            for i, (x, y) in enumerate(loader):
                if i < done_in_epoch:  # resumed mid-epoch: skip what was already trained on
                    continue
                with accelerator.autocast():
                    loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
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
