"""The site's Flower client: trains on the site's own shard and returns its new weights.

With the `[simulate]` TEST FACILITY a Byzantine site replaces its honest update by a sign-flipped
or scaled one (trainer/testing/simulate.py); ALIE and IPM need the other sites' updates, so the
server's strategy plays that omniscient attacker instead.

With `trust` (the cluster CA and, when the site has one, its CRL) the site verifies the signed
model manifest that comes with every fit instruction before it loads the weights
(`checkpoints.verify_model`) and refuses, with the reason in its answer, a model that does not
verify. Under `[privacy] dp` the site clips its update to `clip_norm` (Flower's
`fixedclipping_mod` does the same); with `federation.compress = "int8"` it sends its update
quantised to 8 bits (`compression.py`) instead of its weights.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.client import NumPyClient
from flwr.common import NDArrays, Scalar
from trainguard.trainer.config import Attack
from trainguard.trainer.federated.aggregate import attack_plan
from trainguard.trainer.federated.checkpoints import ModelRefused, verify_model
from trainguard.trainer.federated.compression import to_arrays
from trainguard.trainer.federated.config import FederationConfig, Rounding, UpdateCompression
from trainguard.trainer.federated.membership import prove
from trainguard.trainer.federated.model import (
    build_model,
    get_weights,
    load_shard,
    set_weights,
    train_local,
)
from trainguard.trainer.federated.privacy import clip_update

__all__ = ["SiteClient"]

log = logging.getLogger(__name__)


class SiteClient(NumPyClient):
    def __init__(self, cfg: FederationConfig, site: str,
                 credentials: tuple[bytes, bytes] | None = None, *,
                 trust: tuple[bytes, bytes | None] | None = None) -> None:
        self.cfg = cfg
        self.credentials = credentials  # (node cert PEM, node key PEM); never logged
        self.trust = trust  # (cluster CA PEM, CRL PEM or None): verify every model received
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
        if self.trust is not None:
            try:
                verify_model(config, parameters, ca_pem=self.trust[0], crl_pem=self.trust[1], rnd=rnd)
            except ModelRefused as exc:
                log.error("%s: refusing the global model of round %d (%s); not training",
                          self.site, rnd, exc.reason)
                return [], 0, {"site": self.site, "refused": exc.reason}
        set_weights(self.model, parameters)
        loss = train_local(self.model, self.shard, self.cfg, rnd)
        update = [np.asarray(n - p) for p, n in zip(parameters, get_weights(self.model), strict=True)]
        if self.attack is not None and rnd >= self.cfg.simulate.start_round:
            import torch

            update = [self.attack.local(torch.as_tensor(u)).numpy() for u in update]
        if self.cfg.privacy.dp:
            update = clip_update(update, self.cfg.privacy.clip_norm)
        metrics: dict[str, Scalar] = {"site": self.site, "loss": loss}
        fed = self.cfg.federation
        if fed.compress is UpdateCompression.INT8:
            return (to_arrays(update, stochastic=fed.rounding is Rounding.STOCHASTIC),
                    len(self.shard.y), metrics)
        new = [np.asarray(p + u, dtype=p.dtype) for p, u in zip(parameters, update, strict=True)]
        return new, len(self.shard.y), metrics
