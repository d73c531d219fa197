"""The Flower strategy: trainguard's robust rules over site updates, per-site statistics,
flagging and exclusion, central evaluation, and one record per round for the audit log.

Sites name themselves in their fit metrics (``site``); a result from a name that is not on the
federation's site list is dropped. The server never trusts a site's row to be finite (NaN and
infinities are zeroed before any rule runs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from trainguard.trainer.federated.aggregate import SiteAggregator, omniscient_attack
from trainguard.trainer.federated.config import FederationConfig
from trainguard.trainer.federated.model import (
    build_model,
    evaluate,
    get_weights,
    load_test,
    set_weights,
)

__all__ = ["TrainguardStrategy"]

log = logging.getLogger(__name__)

RoundSink = Callable[[dict[str, Any]], None]


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in arrays])


def _unflat(flat: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    out, o = [], 0
    for a in like:
        out.append(flat[o : o + a.size].reshape(a.shape).astype(a.dtype))
        o += a.size
    return out


def _nbytes(p: Parameters) -> int:
    return sum(len(t) for t in p.tensors)


class TrainguardStrategy(Strategy):
    """Robust aggregation over the federation's sites; `on_round` gets one record per round."""

    def __init__(self, cfg: FederationConfig, on_round: RoundSink) -> None:
        self.cfg = cfg
        self.on_round = on_round
        self.agg = SiteAggregator(cfg.aggregation)
        self.model = build_model(cfg)
        self.test = load_test(cfg)
        self.weights = get_weights(self.model)
        self.sites_of: dict[str, str] = {}  # Flower client id -> site name (from fit metrics)
        self.joined: dict[str, int] = {s: 0 for s in cfg.sites}
        self._round: dict[str, Any] = {}
        self.accuracy: float | None = None

    def __repr__(self) -> str:
        return f"TrainguardStrategy({self.cfg.aggregation.method.value})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(self.weights)

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        n = self.cfg.federation.sites
        client_manager.wait_for(n, timeout=int(self.cfg.federation.round_timeout))
        clients = [c for cid, c in client_manager.all().items()
                   if self.sites_of.get(cid) not in self.agg.excluded]
        ins = FitIns(parameters, {"round": server_round})
        self._round = {"t0": time.monotonic(), "bytes_down": _nbytes(parameters) * len(clients)}
        return [(c, ins) for c in clients]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Scalar]]:
        base = _flat(self.weights)
        updates: dict[str, np.ndarray] = {}
        bytes_up, dropped = 0, []
        for proxy, res in results:
            site = str(res.metrics.get("site", ""))
            if site not in self.joined:
                dropped.append(site)
                continue
            self.sites_of[proxy.cid] = site
            bytes_up += _nbytes(res.parameters)
            updates[site] = _flat(parameters_to_ndarrays(res.parameters)) - base
        sim = self.cfg.simulate
        byz = set(sim.byzantine_sites) & set(updates)
        if byz and sim.attack.value in ("alie", "ipm") and server_round >= sim.start_round:
            updates = omniscient_attack(updates, byz, sim.attack, sim.strength)
        if not updates:
            log.error("round %d: no site update (failures: %d)", server_round, len(failures))
            return None, {}
        out = self.agg.aggregate(server_round, updates)
        for s in out.sites:
            self.joined[s] += 1
        self.weights = _unflat(base + out.update, self.weights)
        set_weights(self.model, self.weights)
        loss, acc = evaluate(self.model, self.test)
        self.accuracy = acc
        self.on_round({
            "round": server_round, "sites": out.sites, "excluded": out.excluded,
            "newly_flagged": out.newly_flagged, "dropped_unknown_sites": dropped,
            "failures": len(failures),
            "update_norms": {st.site: round(st.norm, 6) for st in out.stats},
            "stats": [{"site": st.site, "norm": st.norm, "norm_ratio": st.norm_ratio,
                       "cosine": st.cosine, "flagged": st.flagged} for st in out.stats],
            "accuracy": acc, "loss": loss,
            "bytes_up": bytes_up, "bytes_down": self._round.get("bytes_down", 0),
            "seconds": time.monotonic() - self._round.get("t0", time.monotonic()),
        })
        return ndarrays_to_parameters(self.weights), {"accuracy": acc}

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []  # the server evaluates centrally on the held-out split

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[Any]) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int,
                 parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None  # done in aggregate_fit, where the round's record is written
