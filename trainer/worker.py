"""The built-in recipe torchrun starts for `trainguard train CONFIG.toml`:
``python -m trainguard.trainer.worker`` (the launch context comes from the environment).

A torchtune-style recipe on the public `Guard` API, the same calls a user's script makes:
`setup` (Guard.from_env, model, data, optimizer, guard.wrap, guard.resume), `train` (the loop,
guard.step, guard.save), `evaluate`, and the guard's close (destroy_process_group, always).
The model is a ``MODULE:FACTORY``, the data ``digits`` or ``MODULE:FUNCTION``, the loss
cross-entropy, the optimizer SGD or Adam, optionally with adversarial training.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import torch
from trainguard.core.errors import TrainguardError
from trainguard.trainer.config import AdversarialMethod, TrainConfig
from trainguard.trainer.guard import Guard, StopTraining
from trainguard.trainer.models import Dataset, load_dataset, resolve

log = logging.getLogger(__name__)


class Recipe:
    """One rank of a built-in training job."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.cfg: TrainConfig = guard.config
        self.adversarial = _adversarial_step(self.cfg, guard.rank)
        self.step = 0

    def setup(self) -> None:
        cfg, guard = self.cfg, self.guard
        torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)  # same init on every rank (DDP also broadcasts rank 0's)
        self.model: torch.nn.Module = resolve(cfg.model.factory)(**cfg.model.params)
        self.data: Dataset = load_dataset(cfg.data.dataset, cfg.data.test_fraction)
        self.ddp = guard.wrap(self.model)  # moves self.model to guard.device
        self.optimizer = self._optimizer()
        self.state: dict[str, Any] = {"model": self.model, "optimizer": self.optimizer}
        self.step = guard.resume(self.state) or 0
        self.shard = torch.arange(len(self.data.y_train))[guard.rank :: guard.world_size]

    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optimizer
        if o.name == "adam":
            return torch.optim.Adam(self.model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        return torch.optim.SGD(self.model.parameters(), lr=o.lr, momentum=o.momentum,
                               weight_decay=o.weight_decay)

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Seeded by (seed, rank, step): a resumed run sees the batches it would have seen.
        g = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + self.guard.rank * 7919 + step)
        idx = self.shard[torch.randint(len(self.shard), (self.cfg.train.batch_size,), generator=g)]
        dev = self.guard.device
        return self.data.x_train[idx].to(dev), self.data.y_train[idx].to(dev)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.adversarial is None:
            return torch.nn.functional.cross_entropy(self.ddp(x), y)
        # The attack's extra forward passes go to the bare module, not through DDP's hooks.
        return self.adversarial.loss(self.ddp, x, y, attack_model=self.model)  # type: ignore[no-any-return]

    def train(self) -> None:
        cfg, guard = self.cfg, self.guard
        while self.step < cfg.train.steps:
            x, y = self._batch(self.step)
            loss = self._loss(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            guard.step(self.step, loss=loss)
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                guard.save(self.step, self.state)
        guard.check_replicas()
        if not guard.checkpoints or guard.checkpoints[-1] != self.step:
            guard.save(self.step, self.state)

    def evaluate(self) -> float:
        self.model.eval()
        with torch.no_grad():
            x, y = self.data.x_test.to(self.guard.device), self.data.y_test.to(self.guard.device)
            pred = self.model(x).argmax(dim=1)
        self.model.train()
        return float((pred == y).float().mean())


def _adversarial_step(cfg: TrainConfig, rank: int) -> Any:
    """trainguard.adversarial's step component, or None for plain training."""
    adv = cfg.adversarial
    if adv.method is AdversarialMethod.NONE:
        return None
    try:
        from trainguard.adversarial.training import AdversarialStep
    except ImportError as exc:
        raise TrainguardError("adversarial training is not built into this install",
                              tip='set adversarial.method = "none"') from exc
    return AdversarialStep(adv.method.value, adv.eps, steps=adv.steps, seed=cfg.train.seed + rank)


def run(guard: Guard) -> int:
    with guard:
        recipe = Recipe(guard)
        try:
            recipe.setup()
            recipe.train()
        except StopTraining:
            if hasattr(recipe, "data"):
                guard.report(final_accuracy=recipe.evaluate())
            raise
        guard.report(final_accuracy=recipe.evaluate())
    return 0


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s rank%(process)d %(name)s: %(message)s")
    try:
        return run(Guard.from_env())
    except StopTraining:
        return 0


if __name__ == "__main__":
    code = main()
    # Everything is written and the process group destroyed. Skip interpreter teardown: torch's
    # C++ side can abort there now and then ("terminate called without an active exception"),
    # and torchrun would read that as a crash and restart a job that had finished.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
