"""Entry points of the federation's processes: ``python -m trainguard.trainer.federated.procs
server|site SPEC.json``. `fl run` writes the spec (paths and addresses only, never key bytes)
and starts one server and N sites; each process reads its own TLS files from disk.

On Flower's deployment engine (engine.py): the server process runs the SuperLink, submits the
federation's app as a run and waits for it to finish; the ServerApp (serverapp.py, started by
the SuperLink) appends one JSON line per round to ``spec["rounds_log"]`` (the launcher turns
each into an audit event), then a final ``{"done": ...}`` line. A site process runs a SuperNode
whose ClientApp (clientapp.py) trains on the site's shard, and exits when the ServerApp's
finish notice arrives.

The strategy and the site's client are built here (`server_strategy`, `site_client`), the one
place the ServerApp and ClientApp take them from.
"""

from __future__ import annotations

import json
import logging
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main", "run_server", "run_site", "server_strategy", "site_client"]

log = logging.getLogger(__name__)

ENGINE = "trainguard.trainer.federated.engine"


def _config(spec: dict[str, Any]):  # type: ignore[no-untyped-def]
    from trainguard.trainer.federated.config import load_fl_config

    return load_fl_config(Path(spec["config"]), spec.get("overrides", []))


def server_strategy(spec: dict[str, Any], cfg: Any,
                    write: Callable[[dict[str, Any]], None]) -> tuple[Any, Callable[[], None]]:
    """The federation's strategy and what to close when the run ends."""
    if spec.get("baseline"):
        return baseline_strategy(cfg, write), lambda: None
    from trainguard.trainer.federated.strategy import Admission, TrainguardStrategy

    admission = Admission(ca_pem=Path(spec["ca"]).read_bytes(), crl_pem=Path(spec["crl"]).read_bytes())
    models, signer = _global_models(spec, cfg, Path(spec["rounds_log"]).parent)
    strategy = TrainguardStrategy(cfg, write, admission, models=models, signer=signer)
    return strategy, (models.close if models is not None else (lambda: None))


def _global_models(spec: dict[str, Any], cfg: Any, run_dir: Path) -> tuple[Any, Any]:
    """The sealed per-round checkpoints (key service of `spec["home"]`) and the signer of the
    model manifests sent to the sites (the server's own certificate key)."""
    from trainguard.core.fs import read_private
    from trainguard.trainer.federated.checkpoints import GlobalModels, ModelSigner
    from trainguard.trainer.federated.model import build_model

    signer = ModelSigner(run=run_dir.name, cert_pem=Path(spec["cert"]).read_bytes(),
                         key_pem=read_private(Path(spec["key"])), crl_pem=Path(spec["crl"]).read_bytes())
    models = None
    if cfg.federation.checkpoints and spec.get("home"):
        models = GlobalModels.open(Path(spec["home"]), run_dir, list(build_model(cfg).state_dict()))
    return models, signer


def baseline_strategy(cfg: Any, write: Callable[[dict[str, Any]], None]) -> Any:
    """BENCHMARK BASELINE (tests/bench/bench_fl.py): Flower's own FedAvg, no TLS, no admission,
    no monitor; writes only the round number and its seconds."""
    from flwr.common import ndarrays_to_parameters
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
    return _Timed(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n,
                  min_available_clients=n,
                  initial_parameters=ndarrays_to_parameters(get_weights(build_model(cfg))))


def site_client(spec: dict[str, Any], cfg: Any) -> Any:
    """The site's Flower client (a NumPyClient) on its own shard, with its admission
    credentials and the trust anchors it verifies every model against."""
    from trainguard.core.fs import read_private
    from trainguard.trainer.federated.client import SiteClient

    credentials = None
    if not spec.get("baseline"):
        credentials = (Path(spec["cert"]).read_bytes(), read_private(Path(spec["key"])))
    trust = None
    if not spec.get("baseline"):  # the site verifies every model it is sent (its CRL if it has one)
        crl = Path(spec["crl"]).read_bytes() if spec.get("crl") else None
        trust = (Path(spec["ca"]).read_bytes(), crl)
    return SiteClient(cfg, spec["site"], credentials, trust=trust)


def _child(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", ENGINE, *args], env=env)


def _end(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _stop_on_sigterm() -> None:
    # Turn SIGTERM into SystemExit so `finally` stops the Flower child processes.
    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def run_server(spec_path: Path) -> int:
    """SuperLink + the federation's run; returns 0 when the run completed."""
    from trainguard.trainer.federated.engine import (
        EngineError,
        connect_host,
        flwr_env,
        start_run,
        superlink_args,
        wait_run,
        write_app,
    )

    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    cfg = _config(spec)
    run_dir = Path(spec["rounds_log"]).parent
    host, _, port = spec["address"].rpartition(":")
    tls = None if spec.get("baseline") else tuple(Path(spec[k]) for k in ("ca", "cert", "key"))
    ca = None if tls is None else tls[0].read_bytes()
    env = flwr_env(run_dir / "flwr")
    _stop_on_sigterm()
    link = _child(["superlink", *superlink_args(host, int(port), tls)], env)  # type: ignore[arg-type]
    control = f"{connect_host(host) if tls else host}:{port}"
    limit = cfg.federation.rounds * cfg.federation.round_timeout + 120
    try:
        run_id = start_run(control, ca, write_app(run_dir / "app"), spec_path)
        log.info("federation run %d submitted to the SuperLink at %s", run_id, control)
        sub, details = wait_run(control, ca, run_id, time.monotonic() + limit, alive=[link])
    except EngineError as exc:
        log.error("%s", exc)
        return 1
    finally:
        _end(link)
    if sub != "completed":
        log.error("the federation's run ended %s: %s", sub, details)
        return 1
    return 0


def run_site(spec: dict[str, Any]) -> int:
    """A SuperNode for this site until the ServerApp's finish notice: 0 when it came and the
    site was admitted, 1 when it was refused, 3 when the SuperNode ended first."""
    from trainguard.core.fs import write_private
    from trainguard.trainer.federated.engine import flwr_env, free_port, supernode_args

    work = Path(spec["work"])
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    marker = work / "finished"
    marker.unlink(missing_ok=True)
    spec = {**spec, "finish_marker": str(marker)}
    spec_path = work / "site.json"
    write_private(spec_path, json.dumps(spec).encode())
    ca = None if spec.get("baseline") else Path(spec["ca"])  # BENCHMARK BASELINE only: no TLS
    task_secret = work / "task.secret"  # fresh per run: only this site's ClientApp takes tasks
    write_private(task_secret, secrets.token_bytes(32))
    _stop_on_sigterm()
    node = _child(["supernode", *supernode_args(spec["address"], ca, spec_path, free_port(),
                                                float(spec.get("max_wait_time", 120.0)),
                                                task_secret)],
                  flwr_env(work / "flwr"))
    try:
        while node.poll() is None and not marker.exists():
            time.sleep(0.2)
        if marker.exists():
            time.sleep(1.0)  # let the SuperNode send its answer to the finish notice
    finally:
        _end(node)
    if not marker.exists():
        log.error("the SuperNode exited with code %s before the federation finished", node.returncode)
        return 3
    if not json.loads(marker.read_text(encoding="utf-8")).get("admitted"):
        log.error("the server refused this site at admission (see the server's audit log)")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("server", "site"):
        print("usage: python -m trainguard.trainer.federated.procs server|site SPEC.json",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args[0] == "server":
        return run_server(Path(args[1]))
    return run_site(json.loads(Path(args[1]).read_text(encoding="utf-8")))


if __name__ == "__main__":
    raise SystemExit(main())
