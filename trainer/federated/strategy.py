"""The Flower strategy: trainguard's robust rules over site updates, per-site statistics,
flagging and exclusion, central evaluation, and one record per round for the audit log.

With `admission` set, a site joins only after proving it holds a key certified by the cluster
CA (`membership.verify_site`), and its name comes from its certificate; a refused site never
receives a round. Without it (unit tests, the benchmark baseline) sites name themselves in their
fit metrics. Either way a result from a name that is not on the site list is dropped. The server never trusts a site's row to be finite (NaN and
infinities are zeroed before any rule runs).

Options (all from the FederationConfig): `[privacy] dp` clips every row again at the server and
adds Gaussian noise to the mean (`privacy.py`), with epsilon in each round's record;
`federation.compress = "int8"` makes sites send quantised updates, dequantised here before any
rule or statistic (`compression.py`); with `models` (a `checkpoints.GlobalModels`) each round's
global model is sealed and signed on the server, and with `signer` every fit instruction carries
the signed model manifest the sites verify before loading (`checkpoints.py`). A site that
refuses the model is reported in the round's record (`model_refused`) and aggregated nothing.
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
from trainguard.trainer.federated import privacy
from trainguard.trainer.federated.aggregate import SiteAggregator, omniscient_attack
from trainguard.trainer.federated.checkpoints import GlobalModels, ModelSigner
from trainguard.trainer.federated.compression import CompressionError, from_arrays
from trainguard.trainer.federated.config import FederationConfig, UpdateCompression
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
    timeout: float = 120.0  # a site answers from a fresh ClientApp process (imports torch)


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
                 admission: Admission | None = None, *, models: GlobalModels | None = None,
                 signer: ModelSigner | None = None) -> None:
        self.cfg = cfg
        self.admission = admission
        self.refused: set[str] = set()  # Flower client ids refused at admission
        self.on_round = on_round
        self.agg = SiteAggregator(cfg.aggregation, monitor=cfg.federation.monitor)
        self.model = build_model(cfg)
        self.test = load_test(cfg)
        self.weights = get_weights(self.model)
        self.models, self.signer = models, signer
        p = cfg.privacy
        self.accountant = (privacy.PrivacyAccountant(p.noise_multiplier, p.clip_norm, p.delta)
                           if p.dp else None)
        self.checkpoint: dict[str, Any] | None = None  # the newest global checkpoint
        # What a site's update would cost as float32 (the wire form without compression).
        self._raw_bytes = _nbytes(ndarrays_to_parameters(self.weights))
        self.sites_of: dict[str, str] = {}  # Flower client id -> site name (from fit metrics)
        self.joined: dict[str, int] = {s: 0 for s in cfg.sites}
        self._round: dict[str, Any] = {}
        self.accuracy: float | None = None

    def __repr__(self) -> str:
        return f"TrainguardStrategy({self.cfg.aggregation.method.value})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        if self.models is not None:
            self.checkpoint = self.models.save(0, self.weights)
        return ndarrays_to_parameters(self.weights)

    def _fit_ins(self, server_round: int, parameters: Parameters) -> FitIns:
        config: dict[str, Scalar] = {"round": server_round}
        if self.signer is not None:
            config.update(self.signer.fit_config(server_round, parameters_to_ndarrays(parameters),
                                                 self.checkpoint))
        sim = self.cfg.simulate
        if sim.tamper_model_round == server_round:
            # TEST FACILITY: the model changes after it was signed (a man in the middle, a
            # swapped checkpoint); every site must refuse it.
            arrays = parameters_to_ndarrays(parameters)
            arrays[0] = arrays[0] + np.asarray(0.5, dtype=arrays[0].dtype)
            parameters = ndarrays_to_parameters(arrays)
        return FitIns(parameters, config)

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
        ins = self._fit_ins(server_round, parameters)
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

    def _site_update(self, res: FitRes, base: np.ndarray) -> np.ndarray:
        """The site's update row (dequantised, re-clipped under DP); raises CompressionError."""
        arrays = parameters_to_ndarrays(res.parameters)
        if self.cfg.federation.compress is UpdateCompression.INT8:
            row = _flat(from_arrays(arrays, self.weights))
        else:
            if [a.shape for a in arrays] != [w.shape for w in self.weights]:
                raise CompressionError("the update does not have this model's shapes")
            row = _flat(arrays) - base
        if self.accountant is not None:  # a site that skipped clipping cannot break the bound
            row = privacy.clip_update([np.nan_to_num(row, nan=0.0, posinf=0.0, neginf=0.0)],
                                      self.cfg.privacy.clip_norm)[0]
        return row

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Scalar]]:
        base = _flat(self.weights)
        updates: dict[str, np.ndarray] = {}
        bytes_up, dropped = 0, []
        refusals: list[dict[str, Any]] = []
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
            if "refused" in res.metrics:  # the site refused the model it was sent
                refusals.append({"site": site, "reason": str(res.metrics["refused"])[:64]})
                continue
            try:
                updates[site] = self._site_update(res, base)
            except CompressionError as exc:
                log.warning("round %d: %s sent an undecodable update: %s", server_round, site, exc)
                dropped.append(site)
                continue
            bytes_up += _nbytes(res.parameters)
        sim = self.cfg.simulate
        byz = set(sim.byzantine_sites) & set(updates)
        if byz and sim.attack.value in ("alie", "ipm") and server_round >= sim.start_round:
            updates = omniscient_attack(updates, byz, sim.attack, sim.strength)
        if not updates:
            log.error("round %d: no site update (failures: %d, refused: %d)", server_round,
                      len(failures), len(refusals))
            if refusals:  # still a round of evidence: who refused the model and why
                self._emit(server_round, None, refusals, dropped, failures, 0)
            return None, {}
        out = self.agg.aggregate(server_round, updates)
        for s in out.sites:
            self.joined[s] += 1
        step = out.update
        priv = None
        if self.accountant is not None:
            p = self.cfg.privacy
            step = privacy.add_noise(step, p.noise_multiplier, p.clip_norm, len(out.sites))
            priv = self.accountant.step()
        self.weights = _unflat(base + step, self.weights)
        set_weights(self.model, self.weights)
        if self.models is not None:
            self.checkpoint = self.models.save(server_round, self.weights)
        self._emit(server_round, out, refusals, dropped, failures, bytes_up, priv)
        return ndarrays_to_parameters(self.weights), {"accuracy": self.accuracy or 0.0}

    def _emit(self, server_round: int, out: Any, refusals: list[dict[str, Any]], dropped: list[str],
              failures: list[Any], bytes_up: int, priv: dict[str, float] | None = None) -> None:
        """One record for the round (the launcher turns it into the `fl.round` audit event)."""
        loss, acc = evaluate(self.model, self.test)
        self.accuracy = acc
        stats = out.stats if out is not None else []
        n_up = len(out.sites) if out is not None else 0
        self.on_round({
            "round": server_round, "sites": out.sites if out is not None else [],
            "excluded": out.excluded if out is not None else sorted(self.agg.excluded),
            "newly_flagged": out.newly_flagged if out is not None else [],
            "dropped_unknown_sites": dropped,
            "failures": len(failures), "model_refused": refusals,
            "update_norms": {st.site: round(st.norm, 6) for st in stats},
            "stats": [{"site": st.site, "norm": st.norm, "norm_ratio": st.norm_ratio,
                       "cosine": st.cosine, "flagged": st.flagged} for st in stats],
            "accuracy": acc, "loss": loss,
            "bytes_up": bytes_up, "bytes_up_uncompressed": self._raw_bytes * n_up,
            "compress": self.cfg.federation.compress.value,
            "bytes_down": self._round.get("bytes_down", 0),
            "privacy": priv,
            "checkpoint": ({k: self.checkpoint[k] for k in ("round", "path", "sha256")}
                           if self.checkpoint is not None and self.checkpoint["round"] == server_round
                           else None),
            "seconds": time.monotonic() - self._round.get("t0", time.monotonic()),
        })

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []  # the server evaluates centrally on the held-out split

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[Any]) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int,
                 parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None  # done in aggregate_fit, where the round's record is written
