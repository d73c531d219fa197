"""`fl run`: one server and N sites as separate processes on 127.0.0.1, TLS from the cluster CA.

Layout of a run (``<home>/state/fl/<run id>/``, 0700)::

    server/           the server's TLS certificate and key (issued by the cluster CA, SAN localhost)
    sites/site-i/     each site's own home: pki/ca.crt, pki/node.crt, pki/node.key, its config,
                      state/fl/ (its SuperNode's spec, FLWR_HOME and finish marker)
    app/, flwr/       the Flower app folder submitted as the run, the SuperLink's FLWR_HOME
    *.json            the process specs (paths only), rounds.jsonl (one line per round), logs/

The federation runs on Flower's deployment engine (engine.py): the server process runs the
SuperLink and submits the run, each site process a SuperNode. Every connection between them is
TLS: the SuperLink presents a certificate issued by the cluster CA and every SuperNode verifies
it against the cluster CA. Sites prove their cluster identity at admission (membership.py);
the TLS handshake itself is not mutual (see the README).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.core.fs import write_private
from trainguard.core.home import Home
from trainguard.crypto.pki import ClusterCA, IdentityKind
from trainguard.evidence.sink import AuditSink
from trainguard.trainer.federated.config import FederationConfig, load_fl_config

__all__ = ["FederationPlan", "launch_federation", "prepare_federation"]

log = logging.getLogger(__name__)

Reporter = Callable[[str, str, dict[str, Any]], Any]
SERVER_NAME = "fl-server"


def _free_port() -> int:
    from trainguard.trainer.federated.engine import free_port

    return free_port()


@dataclass(frozen=True)
class FederationPlan:
    run_id: str
    run_dir: Path
    config_path: Path
    overrides: list[str]
    config: FederationConfig
    address: str
    server_spec: Path
    site_specs: dict[str, Path] = field(default_factory=dict)


def _issue(ca: ClusterCA, name: str, folder: Path, *, dns: tuple[str, ...] = ()) -> tuple[Path, Path, Path]:
    cert, key = ca.issue(name, IdentityKind.NODE, dns_names=dns)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = (folder / "ca.crt", folder / "node.crt", folder / "node.key")
    write_private(paths[0], ca.ca_path.read_bytes())
    write_private(paths[1], cert)
    write_private(paths[2], key)
    return paths


def _site_home(root: Path, site: str) -> Home:
    home = Home(root)
    home.create_dirs()
    write_private(home.config_path, f'[node]\nname = "{site}"\n'.encode())
    return home


def prepare_federation(home: Home, config_path: Path, overrides: list[str], sites: int | None,
                       audit: AuditSink, *, listen: str | None = None,
                       server_names: tuple[str, ...] = ("localhost",),
                       local_sites: bool = True) -> FederationPlan:
    """Validate the config, create the run folder, site homes and TLS files, write the specs.

    `listen` (HOST:PORT, default a free port on 127.0.0.1) and `server_names` (the DNS names the
    sites will use, put in the server certificate) are for `fl server`; with `local_sites` off
    no site home is made here (each site runs `fl site` with its own certificate)."""
    overrides = list(overrides) + ([f"federation.sites={sites}"] if sites is not None else [])
    cfg = load_fl_config(config_path, overrides)
    ca = ClusterCA.open(home.pki_dir)
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
    run_dir = home.state_dir / "fl" / run_id
    for d in (run_dir.parent, run_dir, run_dir / "logs"):  # every level private, not just the last
        d.mkdir(mode=0o700, exist_ok=d != run_dir)
        d.chmod(0o700)
    bind = listen or f"127.0.0.1:{_free_port()}"
    address = f"localhost:{bind.rpartition(':')[2]}"
    ca_crt, cert, key = _issue(ca, SERVER_NAME, run_dir / "server", dns=server_names)
    audit.record("cert-issued", "fl", {"name": SERVER_NAME, "kind": "node", "run": run_id})
    base = {"config": str(config_path.absolute()), "overrides": overrides}
    server_spec = run_dir / "server.json"
    crl = ca.crl_path if ca.crl_path.exists() else ca.write_crl()
    server_spec.write_text(json.dumps({**base, "address": bind,
                                       "ca": str(ca_crt), "cert": str(cert), "key": str(key),
                                       "crl": str(crl), "home": str(home.root),
                                       "rounds_log": str(run_dir / "rounds.jsonl")}))
    site_specs = {}
    for site in cfg.sites if local_sites else []:
        site_home = _site_home(run_dir / "sites" / site, site)
        s_ca, s_cert, s_key = _issue(ca, site, site_home.pki_dir)
        audit.record("cert-issued", "fl", {"name": site, "kind": "node", "run": run_id})
        spec = run_dir / f"{site}.json"
        spec.write_text(json.dumps({**base, "address": address, "site": site, "ca": str(s_ca),
                                    "cert": str(s_cert), "key": str(s_key), "crl": str(crl),
                                    "home": str(site_home.root),
                                    "work": str(site_home.state_dir / "fl")}))
        site_specs[site] = spec
    return FederationPlan(run_id, run_dir, config_path, overrides, cfg, address, server_spec, site_specs)


def _spawn(role: str, spec: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with log_path.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "trainguard.trainer.federated.procs", role,
                                 str(spec)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop each process (it stops its Flower children), then anything left in its session
    (ClientApp processes between two messages)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        try:
            os.killpg(p.pid, signal.SIGKILL)  # each was started in its own session
        except (ProcessLookupError, PermissionError):
            pass


def launch_federation(plan: FederationPlan, audit: AuditSink, report: Reporter,
                      *, principal: str, timeout: float | None = None) -> dict[str, Any]:
    """Run the server and the sites to the end; every round becomes an audit event and every
    newly flagged site a byzantine-worker incident. Returns the result JSON."""
    cfg = plan.config
    logs = plan.run_dir / "logs"
    server = _spawn("server", plan.server_spec, logs / "server.log")
    sites = {s: _spawn("site", spec, logs / f"{s}.log") for s, spec in plan.site_specs.items()}
    rounds_log = plan.run_dir / "rounds.jsonl"
    limit = timeout if timeout is not None else cfg.federation.rounds * cfg.federation.round_timeout + 120
    deadline = time.monotonic() + limit
    records: list[dict[str, Any]] = []
    incidents: list[dict[str, Any]] = []
    state: dict[str, Any] = {"seen": 0, "done": None}
    status, reason = "completed", None

    def drain() -> None:
        lines = rounds_log.read_text().splitlines() if rounds_log.exists() else []
        complete = [ln for ln in lines if ln.endswith("}")]
        for line in complete[state["seen"]:]:
            rec = json.loads(line)
            if rec.get("done"):
                state["done"] = rec
                continue
            if "admission" in rec:
                _admission(plan, rec, audit, report, incidents, principal)
                continue
            records.append(rec)
            _record_round(plan, rec, audit, principal)
            for site in rec["newly_flagged"]:
                evidence = {"run": plan.run_id, "site": site, "round": rec["round"],
                            "flag_after": cfg.aggregation.flag_after,
                            "excluded": site in rec["excluded"],
                            "stats": next(s for s in rec["stats"] if s["site"] == site)}
                report("byzantine-worker", "high", evidence)
                incidents.append({"kind": "byzantine-worker", **evidence})
            for refusal in rec.get("model_refused", []):  # a site refused the global model
                evidence = {"run": plan.run_id, "round": rec["round"], **refusal}
                report("checkpoint-tampered", "critical", evidence)
                incidents.append({"kind": "checkpoint-tampered", **evidence})
        state["seen"] = len(complete)

    try:
        while True:
            drain()
            if server.poll() is not None:
                drain()
                break
            if time.monotonic() > deadline:
                status, reason = "timeout", f"no result after {limit:.0f} s"
                break
            time.sleep(0.2)
    finally:
        _stop([server, *sites.values()])
    done = state["done"]
    if status == "completed" and (server.returncode != 0 or done is None):
        status, reason = "failed", f"server exited with code {server.returncode} (see {logs / 'server.log'})"
    return _result(plan, records, done, incidents, status, reason)


def _admission(plan: FederationPlan, rec: dict[str, Any], audit: AuditSink, report: Reporter,
               incidents: list[dict[str, Any]], principal: str) -> None:
    audit.record("fl.admission", principal, {"run": plan.run_id, **rec})
    if rec["admission"] == "refused":
        evidence = {"run": plan.run_id, "site": rec["site"], "reason": rec["reason"],
                    "round": rec["round"]}
        report("membership-failure", "high", evidence)
        incidents.append({"kind": "membership-failure", **evidence})


def _record_round(plan: FederationPlan, rec: dict[str, Any], audit: AuditSink, principal: str) -> None:
    audit.record("fl.round", principal, {
        "run": plan.run_id, "round": rec["round"], "sites": rec["sites"],
        "excluded": rec["excluded"], "update_norms": rec["update_norms"],
        "accuracy": rec["accuracy"], "epsilon": (rec.get("privacy") or {}).get("epsilon"),
        "privacy": rec.get("privacy"), "checkpoint": rec.get("checkpoint"),
        "model_refused": rec.get("model_refused", []),
    })


def _result(plan: FederationPlan, records: list[dict[str, Any]], done: dict[str, Any] | None,
            incidents: list[dict[str, Any]], status: str, reason: str | None) -> dict[str, Any]:
    cfg = plan.config
    refused = {i["site"] for i in incidents if i["kind"] == "membership-failure"}
    excluded = (set(records[-1]["excluded"]) if records else set()) | refused
    joined = {s: sum(s in r["sites"] for r in records) for s in cfg.sites}
    return {
        "status": status, "reason": reason, "run_id": plan.run_id, "run_dir": str(plan.run_dir),
        "rounds": len(records), "final_accuracy": records[-1]["accuracy"] if records else None,
        "aggregation": cfg.aggregation.method.value,
        "sites": [{"name": s, "rounds_joined": joined[s], "excluded": s in excluded,
                   "admitted": s not in refused and joined[s] > 0} for s in cfg.sites],
        "incidents": incidents, "checkpoints": [r["checkpoint"] for r in records if r.get("checkpoint")],
        "privacy": next((r["privacy"] for r in reversed(records) if r.get("privacy")), None),
        "bytes_per_round": [{"round": r["round"], "up": r["bytes_up"], "down": r["bytes_down"],
                             "up_uncompressed": r.get("bytes_up_uncompressed"),
                             "compress": r.get("compress")} for r in records],
        "round_seconds": [round(r["seconds"], 3) for r in records],
        "accuracy_per_round": [round(r["accuracy"], 4) for r in records],
        "simulate": {"test_facility": True, "byzantine_sites": cfg.simulate.byzantine_sites,
                     "attack": cfg.simulate.attack.value} if cfg.simulate.active else None,
        "transport": {"engine": "flwr deployment engine (SuperLink/SuperNode)", "tls": True,
                      "ca": "cluster"},
    }

