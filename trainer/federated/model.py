"""The model and data of a federation: weights as numpy arrays, local training, evaluation,
and each site's disjoint shard of the training split (no download: bundled datasets only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from trainguard.trainer.federated.config import FederationConfig
from trainguard.trainer.models import Dataset, load_dataset, resolve

__all__ = ["Shard", "build_model", "evaluate", "get_weights", "load_shard", "load_test",
           "set_weights", "train_local"]


@dataclass(frozen=True)
class Shard:
    x: torch.Tensor
    y: torch.Tensor


def build_model(cfg: FederationConfig) -> nn.Module:
    torch.manual_seed(cfg.federation.seed)
    model = resolve(cfg.model.factory)(**cfg.model.params)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{cfg.model.factory} returned {type(model).__name__}, not a torch Module")
    return model


def get_weights(model: nn.Module) -> list[np.ndarray]:
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    keys = list(model.state_dict())
    if len(keys) != len(weights):
        raise ValueError(f"expected {len(keys)} weight arrays, got {len(weights)}")
    state = {k: torch.as_tensor(np.asarray(w)) for k, w in zip(keys, weights, strict=True)}
    model.load_state_dict(state, strict=True)


def _data(cfg: FederationConfig) -> Dataset:
    return load_dataset(cfg.data.dataset, cfg.data.test_fraction)


def load_shard(cfg: FederationConfig, site: str) -> Shard:
    """`site`'s disjoint part of the training split (a fixed permutation cut in N parts)."""
    data = _data(cfg)
    sites = cfg.sites
    order = np.random.default_rng(cfg.federation.seed).permutation(len(data.y_train))
    part = np.array_split(order, len(sites))[sites.index(site)]
    idx = torch.as_tensor(np.sort(part))
    return Shard(data.x_train[idx], data.y_train[idx])


def load_test(cfg: FederationConfig) -> Shard:
    data = _data(cfg)
    return Shard(data.x_test, data.y_test)


def train_local(model: nn.Module, shard: Shard, cfg: FederationConfig, rnd: int) -> float:
    """`local_epochs` of minibatch training on the shard; returns the mean loss."""
    o = cfg.optimizer
    params = model.parameters()
    opt: torch.optim.Optimizer
    if o.name == "adam":
        opt = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    g = torch.Generator().manual_seed(cfg.federation.seed * 1000 + rnd)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total, batches = 0.0, 0
    bs = cfg.federation.batch_size
    for _ in range(cfg.federation.local_epochs):
        perm = torch.randperm(len(shard.y), generator=g)
        for i in range(0, len(perm), bs):
            b = perm[i : i + bs]
            opt.zero_grad()
            loss = loss_fn(model(shard.x[b]), shard.y[b])
            loss.backward()
            opt.step()
            total, batches = total + float(loss.detach()), batches + 1
    return total / max(batches, 1)


@torch.no_grad()
def evaluate(model: nn.Module, shard: Shard) -> tuple[float, float]:
    """(loss, accuracy) on the shard."""
    model.eval()
    logits = model(shard.x)
    loss = float(nn.functional.cross_entropy(logits, shard.y))
    acc = float((logits.argmax(dim=1) == shard.y).float().mean())
    return loss, acc
