"""The site's Flower client: trains on the site's own shard and returns its new weights.

With the `[simulate]` TEST FACILITY a Byzantine site replaces its honest update by a sign-flipped
or scaled one (trainer/testing/simulate.py); ALIE and IPM need the other sites' updates, so the
server's strategy plays that omniscient attacker instead.
"""

from __future__ import annotations

import numpy as np
from flwr.client import NumPyClient
from flwr.common import NDArrays, Scalar
from trainguard.trainer.config import Attack
from trainguard.trainer.federated.aggregate import attack_plan
from trainguard.trainer.federated.config import FederationConfig
from trainguard.trainer.federated.membership import prove
from trainguard.trainer.federated.model import (
    build_model,
    get_weights,
    load_shard,
    set_weights,
    train_local,
)

__all__ = ["SiteClient"]


class SiteClient(NumPyClient):
    def __init__(self, cfg: FederationConfig, site: str,
                 credentials: tuple[bytes, bytes] | None = None) -> None:
        self.cfg = cfg
        self.credentials = credentials  # (node cert PEM, node key PEM); never logged
        self.site = site
        self.model = build_model(cfg)
        self.shard = load_shard(cfg, site)
        sim = cfg.simulate
        self.attack = (attack_plan(sim.attack, sim.strength)
                       if site in sim.byzantine_sites and sim.attack in (Attack.SIGN_FLIP, Attack.SCALE)
                       else None)

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """Answer the server's admission challenge with the node certificate and a proof."""
        nonce = bytes.fromhex(str(config.get("admission_nonce", "")))
        if self.credentials is None or len(nonce) < 16:
            return {"site": self.site}
        cert_pem, key_pem = self.credentials
        return {"site": self.site, "cert": cert_pem.decode(), "sig": prove(key_pem, nonce).hex()}

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        rnd = int(config.get("round", 0))
        set_weights(self.model, parameters)
        loss = train_local(self.model, self.shard, self.cfg, rnd)
        new = get_weights(self.model)
        if self.attack is not None and rnd >= self.cfg.simulate.start_round:
            import torch

            new = [np.asarray(p + self.attack.local(torch.as_tensor(n - p)).numpy(), dtype=n.dtype)
                   for p, n in zip(parameters, new, strict=True)]
        return new, len(self.shard.y), {"site": self.site, "loss": loss}
