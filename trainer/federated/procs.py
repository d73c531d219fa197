"""Entry points of the federation's processes: ``python -m trainguard.trainer.federated.procs
server|site SPEC.json``. `fl run` writes the spec (paths and addresses only, never key bytes)
and starts one server and N sites; each process reads its own TLS files from disk.

The server appends one JSON line per round to ``spec["rounds_log"]`` (the launcher turns each
into an audit event), then a final ``{"done": ...}`` line.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]

log = logging.getLogger(__name__)


def _config(spec: dict[str, Any]):  # type: ignore[no-untyped-def]
    from trainguard.trainer.federated.config import load_fl_config

    return load_fl_config(Path(spec["config"]), spec.get("overrides", []))


def run_server(spec: dict[str, Any]) -> int:
    import torch
    from flwr.server import ServerConfig, start_server
    from trainguard.trainer.federated.strategy import Admission, TrainguardStrategy

    torch.set_num_threads(1)
    cfg = _config(spec)
    out = Path(spec["rounds_log"])

    def write(record: dict[str, Any]) -> None:
        with out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    if spec.get("baseline"):
        return _run_baseline(spec, cfg, write)
    admission = Admission(ca_pem=Path(spec["ca"]).read_bytes(), crl_pem=Path(spec["crl"]).read_bytes())
    strategy = TrainguardStrategy(cfg, write, admission)
    certs = tuple(Path(spec[k]).read_bytes() for k in ("ca", "cert", "key"))
    start_server(server_address=spec["address"],
                 config=ServerConfig(num_rounds=cfg.federation.rounds,
                                     round_timeout=cfg.federation.round_timeout),
                 strategy=strategy, certificates=certs)  # type: ignore[arg-type]
    write({"done": True, "accuracy": strategy.accuracy, "rounds_joined": strategy.joined})
    return 0


def _run_baseline(spec: dict[str, Any], cfg: Any, write: Any) -> int:
    """BENCHMARK BASELINE (tests/bench/bench_fl.py): Flower's own FedAvg, no TLS, no monitor;
    writes only the round number and its seconds."""
    import time

    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerConfig, start_server
    from flwr.server.strategy import FedAvg
    from trainguard.trainer.federated.model import build_model, get_weights

    class _Timed(FedAvg):
        t0 = 0.0

        def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
            self.t0 = time.monotonic()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            out = super().aggregate_fit(server_round, results, failures)
            write({"round": server_round, "seconds": time.monotonic() - self.t0,
                   "sites": len(results)})
            return out

    n = cfg.federation.sites
    strategy = _Timed(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n,
                      min_available_clients=n,
                      initial_parameters=ndarrays_to_parameters(get_weights(build_model(cfg))))
    start_server(server_address=spec["address"], strategy=strategy,
                 config=ServerConfig(num_rounds=cfg.federation.rounds,
                                     round_timeout=cfg.federation.round_timeout))
    return 0


def run_site(spec: dict[str, Any]) -> int:
    import torch
    from flwr.client import start_client
    from trainguard.core.fs import read_private
    from trainguard.trainer.federated.client import SiteClient

    cfg = _config(spec)
    torch.set_num_threads(cfg.federation.threads)
    credentials = None
    if not spec.get("baseline"):
        credentials = (Path(spec["cert"]).read_bytes(), read_private(Path(spec["key"])))
    client = SiteClient(cfg, spec["site"], credentials)
    if spec.get("baseline"):  # BENCHMARK BASELINE only: no TLS
        start_client(server_address=spec["address"], client=client.to_client(), insecure=True)
        return 0
    start_client(server_address=spec["address"], client=client.to_client(),
                 root_certificates=Path(spec["ca"]).read_bytes(), insecure=False,
                 max_wait_time=float(spec.get("max_wait_time", 120.0)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("server", "site"):
        print("usage: python -m trainguard.trainer.federated.procs server|site SPEC.json",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    spec = json.loads(Path(args[1]).read_text(encoding="utf-8"))
    return run_server(spec) if args[0] == "server" else run_site(spec)


if __name__ == "__main__":
    raise SystemExit(main())
