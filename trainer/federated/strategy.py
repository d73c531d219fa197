"""The Flower strategy: trainguard's robust rules over site updates, per-site statistics,
flagging and exclusion, central evaluation, and one record per round for the audit log.

With `admission` set, a site joins only after proving it holds a key certified by the cluster
CA (`membership.verify_site`), and its name comes from its certificate; a refused site never
receives a round. Without it (unit tests, the benchmark baseline) sites name themselves in their
fit metrics. Either way a result from a name that is not on the site list is dropped. The server never trusts a site's row to be finite (NaN and
infinities are zeroed before any rule runs).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetPropertiesIns,
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

__all__ = ["Admission", "TrainguardStrategy"]

log = logging.getLogger(__name__)

RoundSink = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Admission:
    """What the server checks sites against (PEM bytes of the cluster CA and its CRL)."""

    ca_pem: bytes
    crl_pem: bytes
    timeout: float = 30.0


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

    def __init__(self, cfg: FederationConfig, on_round: RoundSink,
                 admission: Admission | None = None) -> None:
        self.cfg = cfg
        self.admission = admission
        self.refused: set[str] = set()  # Flower client ids refused at admission
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
        if self.admission is not None:
            for cid, proxy in client_manager.all().items():
                if cid not in self.sites_of and cid not in self.refused:
                    self._admit(server_round, cid, proxy)
        clients = [c for cid, c in client_manager.all().items()
                   if cid not in self.refused and self.sites_of.get(cid) not in self.agg.excluded
                   and (self.admission is None or cid in self.sites_of)]
        ins = FitIns(parameters, {"round": server_round})
        self._round = {"t0": time.monotonic(), "bytes_down": _nbytes(parameters) * len(clients)}
        return [(c, ins) for c in clients]

    def _admit(self, server_round: int, cid: str, proxy: ClientProxy) -> None:
        from trainguard.trainer.federated.membership import SiteRefused, verify_site

        assert self.admission is not None
        nonce = secrets.token_bytes(32)
        claimed = "?"
        try:
            res = proxy.get_properties(GetPropertiesIns({"admission_nonce": nonce.hex()}),
                                       timeout=self.admission.timeout, group_id=server_round)
            props = res.properties
            claimed = str(props.get("site", "?"))[:64]
            site = verify_site(ca_pem=self.admission.ca_pem, crl_pem=self.admission.crl_pem,
                               sites=self.joined, cert_pem=str(props.get("cert", "")).encode(),
                               nonce=nonce, signature=bytes.fromhex(str(props.get("sig", ""))))
            if site in self.sites_of.values():
                raise SiteRefused("duplicate")  # a second connection with the same identity
        except (SiteRefused, ValueError) as exc:
            reason = exc.reason if isinstance(exc, SiteRefused) else "malformed"
            self.refused.add(cid)
            log.warning("site %r refused at admission: %s", claimed, reason)
            self.on_round({"admission": "refused", "site": claimed, "reason": reason,
                           "round": server_round})
            return
        self.sites_of[cid] = site
        self.on_round({"admission": "admitted", "site": site, "round": server_round})

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Scalar]]:
        base = _flat(self.weights)
        updates: dict[str, np.ndarray] = {}
        bytes_up, dropped = 0, []
        for proxy, res in results:
            site = (self.sites_of.get(proxy.cid, "") if self.admission is not None
                    else str(res.metrics.get("site", "")))
            if site not in self.joined:
                dropped.append(site)
                continue
            self.sites_of[proxy.cid] = site
            if site in updates:
                dropped.append(site)  # two results under one name: keep the first only
                continue
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
