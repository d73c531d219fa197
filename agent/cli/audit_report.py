"""`trainguard audit report`: evidence mapped to controls, in HTML, Markdown, JSON and OSCAL."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trainguard.agent.cli.context import Context
from trainguard.core.errors import UsageError
from trainguard.core.home import atomic_output


def register(audit_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = audit_sub.add_parser(
        "report",
        help="write the audit report (HTML, Markdown, JSON, OSCAL)",
        description=(
            "Gather evidence from this node and, with --node, from remote agents over mTLS; "
            "verify each node's audit log; map everything to NIST SP 800-53 r5 controls and "
            "MITRE ATLAS techniques. Exit 1 when a control is not satisfied or a log fails."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("trainguard-report"), help="output folder")
    p.add_argument("--formats", default="html,md,json,oscal", help="comma-separated: html,md,json,oscal")
    p.add_argument("--node", action="append", default=[], metavar="URL",
                   help="remote agent (tls://HOST:PORT); repeat for more nodes")
    p.add_argument("--cert", type=Path, help="client certificate for --node (default: this node's)")
    p.add_argument("--key", type=Path, help="client key for --node")
    p.add_argument("--ca", type=Path, help="cluster CA for --node (default: this home's)")
    p.add_argument("--no-local", action="store_true", help="only the --node agents, not this node")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.agent.report.formats import parse_formats
    from trainguard.agent.report.gather import RemoteNode, build_report

    home = ctx.home.require()
    formats = parse_formats(args.formats)
    if not formats:
        raise UsageError("no report format given", tip="pass --formats html,md,json,oscal")
    if args.no_local and not args.node:
        raise UsageError("--no-local needs at least one --node URL")
    remotes = [
        RemoteNode(url, args.cert or home.pki_dir / "node.crt", args.key or home.pki_dir / "node.key",
                   args.ca or home.pki_dir / "ca.crt")
        for url in args.node
    ]
    _check_remotes(remotes)
    out: Path = args.out
    _check_out(out)  # before gathering: a wrong --out should not cost a whole evidence pull
    report = build_report(home, ctx.config, remotes, include_local=not args.no_local, progress=ctx.info)
    rendered = {fmt: fmt.formatter() for fmt in formats}
    paths = _write_all(out, {f: (fm.suffix, fm.render(report)) for f, fm in rendered.items()})
    counts = report.counts()
    ctx.audit.record("audit-report", "cli", {"score": report.score, "counts": counts, "paths": paths,
                                             "nodes": [n.name for n in report.nodes]})
    failed_nodes = [n.name for n in report.nodes if not n.log_verified or n.rolled_back]
    data: dict[str, Any] = {"report": paths, "score": report.score, "controls": counts,
                            "nodes": [{"name": n.name, "log_verified": n.log_verified, "rolled_back": n.rolled_back}
                                      for n in report.nodes]}

    def text(d: dict[str, Any]) -> str:
        lines = [f"score {d['score']:.1f}/100: " + ", ".join(f"{v} {k}" for k, v in d["controls"].items())]
        lines += [f"  {k}: {v}" for k, v in d["report"].items()]
        if failed_nodes:
            lines.append("nodes whose log failed verification or went backwards: " + ", ".join(failed_nodes))
        return "\n".join(lines)

    ctx.emit(data, text)
    return 1 if counts["not-satisfied"] or failed_nodes else 0


def _check_remotes(remotes: list[Any]) -> None:
    """Local mistakes in --node/--cert/--key/--ca are usage errors (exit 2); left to the gather
    step they would show up as every node being "unreachable", a finding (exit 1)."""
    for r in remotes:
        rest = r.url.split("://", 1)[1] if "://" in r.url else r.url
        scheme = r.url.split("://", 1)[0] if "://" in r.url else "tls"
        host, sep, port = rest.rstrip("/").rpartition(":")
        if scheme != "tls" or not sep or not host or not port.isdigit():
            raise UsageError(f"bad --node address {r.url!r}", tip="use tls://HOST:PORT")
        for flag, path in (("--cert", r.cert), ("--key", r.key), ("--ca", r.ca)):
            if not Path(path).is_file():
                raise UsageError(
                    f"{flag} {path} is not a file",
                    tip="--node needs a client certificate, its key and the cluster CA "
                    "(default: this home's pki/node.crt, pki/node.key, pki/ca.crt)",
                )


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(
            f"--out {out} exists and is not a folder",
            tip="--out names a folder for the report files; pass a new or existing folder",
        )


def _write_all(out: Path, texts: dict[Any, tuple[str, str]]) -> dict[str, str]:
    """Write every format or none: on a failure, files written by this run are removed (and
    the folder, if this run made it), so a half report never passes for a whole one."""
    made = not out.exists()
    written: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for suffix, text in texts.values():
            path = out / f"trainguard-report.{suffix}"
            with atomic_output(path, mode=0o640) as tmp:
                tmp.write_text(text, encoding="utf-8")
            written.append(path)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        where = exc.filename or out
        raise UsageError(
            f"cannot write the report to {out}: {where}: {exc.strerror or exc}",
            tip="choose a writable --out folder; the files of this run were removed",
        ) from exc
    return {fmt.value: str(out / f"trainguard-report.{suffix}") for fmt, (suffix, _) in texts.items()}
