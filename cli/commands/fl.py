"""`trainguard fl run CONFIG.toml --sites N`: a federation on this machine on Flower's deployment
engine: one SuperLink (with the ServerApp) and N SuperNodes (with the ClientApp) as separate
processes on 127.0.0.1, TLS from the cluster CA, every round audited. `fl server` and `fl site`
run the two halves on their own.

Flower, torch and the trainer are imported inside the handlers only; without Flower installed
every `fl` command stops with exit 3 and names the `federated` extra.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from trainguard.cli.context import Context
from trainguard.core.errors import EXIT_FINDINGS, EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("fl", help="federated learning across sites (Flower)")
    s = p.add_subparsers(dest="fl_command", required=True, metavar="COMMAND")
    run = s.add_parser("run", help="run a server and N sites on 127.0.0.1 (laptop, demo, tests)",
                       usage="trainguard fl run CONFIG.toml [--sites N] [--set KEY=VALUE ...]")
    run.add_argument("config", type=Path, help="federation config (see trainer/examples/fl-digits.toml)")
    run.add_argument("--sites", type=int, default=None,
                     help="number of sites, named site-1..site-N (default: federation.sites)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key with a TOML value (repeatable)")
    run.add_argument("--user", default=None, help="require this logged-in trainguard user")
    run.add_argument("--otp", default=None, help="TOTP code for a step-up, if the session needs one")
    run.add_argument("--project", default="default", help="policy domain (default %(default)s)")
    run.add_argument("--timeout", type=float, default=None, help="stop the federation after N seconds")
    run.set_defaults(func=handle_run)

    srv = s.add_parser("server", help="run the federation's server (sites join with `fl site`)",
                       usage="trainguard fl server CONFIG.toml --listen HOST:PORT [--name DNS ...]")
    srv.add_argument("config", type=Path, help="federation config")
    srv.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to listen on")
    srv.add_argument("--name", dest="names", action="append", default=[], metavar="DNS",
                     help="DNS name the sites connect to (repeatable; default localhost)")
    srv.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key with a TOML value (repeatable)")
    srv.add_argument("--user", default=None, help="require this logged-in trainguard user")
    srv.add_argument("--otp", default=None, help="TOTP code for a step-up, if the session needs one")
    srv.add_argument("--project", default="default", help="policy domain (default %(default)s)")
    srv.add_argument("--timeout", type=float, default=None, help="stop after N seconds")
    srv.set_defaults(func=handle_server)

    site = s.add_parser("site", help="run one site: train on this site's data, join the server",
                        usage="trainguard fl site CONFIG.toml --site NAME --server HOST:PORT "
                              "[--cert F --key F --ca F]")
    site.add_argument("config", type=Path, help="federation config (the same file as the server's)")
    site.add_argument("--site", required=True, metavar="NAME", help="this site's name (site-N)")
    site.add_argument("--server", required=True, metavar="HOST:PORT", help="the server's address")
    site.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key with a TOML value (repeatable)")
    for flag, default in (("--cert", "node.crt"), ("--key", "node.key"), ("--ca", "ca.crt")):
        site.add_argument(flag, type=Path, default=None,
                          help=f"from `pki issue NAME --kind node` (default: <home>/pki/{default})")
    site.set_defaults(func=handle_site)


def _require_flower() -> None:
    from trainguard.trainer.errors import TrainerError

    try:
        import flwr  # noqa: F401
    except ImportError as exc:
        raise TrainerError(
            f"Flower is not installed ({exc}); `trainguard fl` runs on Flower's deployment engine",
            tip="install the federated extra: pip install 'trainguard[federated]' "
                "(pinned in constraints.txt; `make test` and `make demo` install it)") from exc


def handle_server(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.core.errors import UsageError

    host = args.listen.rpartition(":")[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - refusing it, not binding it
        # flwr 1.42's SuperExec reaches the SuperLink's Runtime API at the bind address, a
        # bind-all address as 127.0.0.1, which no cluster certificate names
        raise UsageError(f"--listen {args.listen}: the SuperLink needs a named address",
                         tip="listen on the interface the sites reach, e.g. --listen "
                             "fl.example.org:9093 --name fl.example.org, or 127.0.0.1:PORT")
    args.sites = None
    return handle_run(args, ctx, server_only=True)


def handle_site(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.core.errors import UsageError
    from trainguard.trainer.federated.config import load_fl_config
    from trainguard.trainer.federated.procs import run_site

    _require_flower()
    config_path = args.config.expanduser().absolute()
    cfg = load_fl_config(config_path, args.overrides)
    if args.site not in cfg.sites:
        raise UsageError(f"site {args.site!r} is not among {cfg.sites}",
                         tip="pass --site site-N with N up to federation.sites")
    pki = ctx.home.pki_dir
    paths = {k: (getattr(args, k) or pki / d).expanduser().absolute()
             for k, d in (("cert", "node.crt"), ("key", "node.key"), ("ca", "ca.crt"))}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise UsageError(f"missing TLS files: {', '.join(missing)}",
                         tip=f"on the CA's home: trainguard pki issue {args.site} --kind node --out DIR")
    ctx.info(f"{args.site}: joining {args.server} over TLS (server verified against {paths['ca']})")
    work = ctx.home.state_dir / "fl" / f"{args.site}-{time.strftime('%Y%m%d-%H%M%S')}"
    for d in (ctx.home.root, ctx.home.state_dir, work.parent):  # private at every level
        d.mkdir(mode=0o700, exist_ok=True)
    spec = {"config": str(config_path), "overrides": args.overrides, "address": args.server,
            "site": args.site, "work": str(work), **{k: str(v) for k, v in paths.items()}}
    code = run_site(spec)
    status = {0: "finished", 1: "refused"}.get(code, "failed")
    ctx.emit({"site": args.site, "server": args.server, "status": status},
             lambda d: f"{d['site']}: federation {d['status']}")
    return code


def handle_run(args: argparse.Namespace, ctx: Context, *, server_only: bool = False) -> int:
    from trainguard.agent.api.client import report_incident
    from trainguard.core.errors import UsageError
    from trainguard.trainer.federated.config import load_fl_config
    from trainguard.trainer.federated.run import launch_federation, prepare_federation
    from trainguard.trainer.preflight import check_authorization

    _require_flower()
    home = ctx.home.require()
    if args.sites is not None and args.sites < 1:
        raise UsageError(f"--sites {args.sites}: need at least one site", tip="pass --sites 3")
    config_path = args.config.expanduser().absolute()
    # Validate before asking for authorization: a typo should not cost an MFA code.
    load_fl_config(config_path, [*args.overrides,
                                 *([f"federation.sites={args.sites}"] if args.sites else [])])
    audit = ctx.audit
    step, decision = check_authorization(home, ctx.config, audit, f"/fl/{config_path.stem}",
                                         args.project, otp=args.otp, user=args.user)
    if server_only:
        plan = prepare_federation(home, config_path, args.overrides, None, audit,
                                  listen=args.listen, server_names=tuple(args.names or ["localhost"]),
                                  local_sites=False)
    else:
        plan = prepare_federation(home, config_path, args.overrides, args.sites, audit)
    cfg = plan.config
    event: dict[str, Any] = {
        "run": plan.run_id, "config": str(config_path), "overrides": plan.overrides,
        "sites": cfg.sites, "rounds": cfg.federation.rounds,
        "aggregation": cfg.aggregation.method.value, "principal": decision.principal,
        "mfa_age_s": decision.mfa_age_s, "transport": "tls", "address": plan.address,
    }
    if cfg.simulate.active:
        event["simulate_test_facility"] = True
        ctx.info("warning: [simulate] is set: chosen sites send poisoned updates (TEST FACILITY)")
    audit.record("fl.launch", decision.principal, event)
    ctx.info(f"federation {plan.run_id}: {len(cfg.sites)} sites, {cfg.federation.rounds} rounds, "
             f"{cfg.aggregation.method.value}, TLS from the cluster CA")

    def report(kind: str, severity: str, evidence: Any) -> Any:
        return report_incident(home, ctx.config, kind, severity, evidence)

    result = launch_federation(plan, audit, report, principal=decision.principal,
                               timeout=args.timeout)
    result["authorize"] = {"principal": decision.principal, "detail": step.detail}
    audit.record("fl.finish", decision.principal, {
        "run": plan.run_id, "status": result["status"], "rounds": result["rounds"],
        "final_accuracy": result["final_accuracy"],
        "excluded": [s["name"] for s in result["sites"] if s["excluded"]],
        "incidents": [i["kind"] for i in result["incidents"]],
    })
    ctx.emit(result, _render)
    return EXIT_OK if result["status"] == "completed" and not result["incidents"] else EXIT_FINDINGS


def _render(r: dict[str, Any]) -> str:
    acc = r.get("final_accuracy")
    lines = [
        f"federation {r['run_id']}: {r['status']}" + (f" ({r['reason']})" if r.get("reason") else ""),
        f"  rounds {r['rounds']}, aggregation {r['aggregation']}"
        + (f", accuracy {acc:.4f}" if acc is not None else ""),
    ]
    lines += [f"  {s['name']}: joined {s['rounds_joined']} rounds"
              + (", EXCLUDED" if s["excluded"] else "") for s in r["sites"]]
    lines += [f"  incident {i['kind']}: site {i['site']} (round {i['round']})" for i in r["incidents"]]
    return "\n".join(lines)
