"""`trainguard audit verify | audit log [--since T] [--kind K] | audit report`.

Each sub-command lives in one `_register_<name>` function.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import time
from pathlib import Path
from typing import Any

from trainguard.cli.context import Context
from trainguard.core.errors import UsageError
from trainguard.core.fs import atomic_output


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("audit", help="verify, read and report on the audit log")
    audit_sub = p.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    _register_verify(audit_sub)
    _register_seal_genesis(audit_sub)
    _register_log(audit_sub)
    _register_report(audit_sub)


def _register_verify(audit_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = audit_sub.add_parser(
        "verify",
        help="check the hash chain and checkpoint signatures (exit 1 names the first bad entry)",
        description=(
            "Verify every entry's hash chain, the genesis and every signed checkpoint against "
            "the node key, and that no run of entries went unsigned longer than the [audit] "
            "cadence allows. Then sign the tail, send the checkpoints to the [audit] witness and "
            "compare the log with the witness's copies. With --checkpoint FILE (saved earlier "
            "with --save-checkpoint, ideally off the node), also detect a rollback."
        ),
    )
    p.add_argument(
        "--copies",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="an [export] JSON-lines file (repeatable): compare the log with its checkpoints",
    )
    p.add_argument(
        "--no-witness",
        action="store_true",
        help="verify the local log alone, without the [audit] witness (reported in the output)",
    )
    p.add_argument("--checkpoint", type=Path, help="a checkpoint saved earlier: detect rollback")
    p.add_argument(
        "--save-checkpoint", type=Path, help="after success, save the latest checkpoint here"
    )
    p.add_argument(
        "--pubkey", type=Path, help="node public key (default: <home>/keys/node.ed25519.pub)"
    )
    p.add_argument(
        "--segment", type=Path, help="verify an exported segment (JSON) instead of the log"
    )
    p.set_defaults(func=_verify)


def _register_seal_genesis(audit_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = audit_sub.add_parser(
        "seal-genesis",
        help="once, on a home made before signed genesis: verify the log and sign its genesis",
        description=(
            "A home created before trainguard signed a genesis entry has a log that `audit "
            "verify` fails. This verifies that log (chain, checkpoint signatures, checkpoint "
            "count cadence), then appends a legacy genesis signed by the node key that covers "
            "every older entry through the hash chain, and records it in "
            "state/audit-genesis.json. Run it only on a log you trust to be this node's."
        ),
    )
    p.set_defaults(func=_seal_genesis)


def _register_log(audit_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = audit_sub.add_parser("log", help="print audit entries")
    p.add_argument(
        "--since",
        help="epoch seconds, ISO time (2026-01-31T12:00) or age (30m, 2h, 7d); with --follow "
        "or --format jsonl|ocsf a plain integer is a sequence number: start after entry SEQ",
    )
    p.add_argument("--kind", help="exact kind, or a prefix ending in * (policy.*)")
    p.add_argument("--limit", type=int, default=None, help="at most N entries (the newest)")
    # Stream formats for SIEMs (trainguard.evidence.export); `--format` replaces the global flag.
    p.add_argument(
        "--format", dest="log_format", choices=["text", "json", "jsonl", "ocsf"],
        default=argparse.SUPPRESS,
        help="text, json, jsonl (one entry per line) or ocsf (OCSF 1.x events, one per line)",
    )
    p.add_argument("--follow", action="store_true",
                   help="keep printing entries as they are committed (stop with Ctrl-C)")
    p.add_argument("--poll-interval", type=float, default=0.5, metavar="SECONDS",
                   help="with --follow: how often to look for new entries (default 0.5)")
    p.set_defaults(func=_log)


def parse_since(value: str, now: float) -> float:
    """Epoch seconds, an ISO 8601 time (UTC unless it says otherwise) or an age like 90m."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value.strip())
    if m:
        return now - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise UsageError(
            f"cannot read --since {value!r}", tip="use 1700000000, 2026-01-31T12:00 or 2h"
        ) from exc
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def _open_log(ctx: Context) -> Any:
    from trainguard.evidence.embedded import open_embedded_log

    # A missing or replaced log is refused there (exit 2, audit-tampered), never recreated.
    return open_embedded_log(ctx.home.require(), ctx.config)


def _verify(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.evidence.audit_log import verify_segment
    from trainguard.evidence.embedded import audit_config

    # An exported segment checked against a given key needs no home (an auditor's laptop);
    # everything else reads this home, so a missing home is named before any key file.
    if args.segment is None or args.pubkey is None:
        ctx.home.require()
    if args.save_checkpoint is not None and args.save_checkpoint.is_dir():
        raise UsageError(
            f"--save-checkpoint {args.save_checkpoint} is a directory", tip="give a file name"
        )
    key = _load_key(args.pubkey, ctx)
    trusted = _read_checkpoint(args.checkpoint) if args.checkpoint else None
    # An auditor's laptop (segment + key, no home) holds the segment to the default cadence.
    cfg = audit_config(ctx.config) if args.segment is None or args.pubkey is None else None
    cadence = (cfg or _default_audit_config()).cadence()
    witness: dict[str, Any] | None = None
    if args.segment:
        segment = _read_json(args.segment, "segment", _SEGMENT_TIP, garbled=_bad_segment)
        report = verify_segment(
            segment, key, trusted_checkpoint=trusted, require_genesis=True, cadence=cadence
        )
    else:
        report, witness = _verify_home_log(ctx, key, trusted, no_witness=args.no_witness)
    data = {"ok": True, "key_id": key.key_id, **report.to_dict()}
    if witness is not None:
        data["witness"] = witness
    if args.copies:
        data["export_copies"] = _compare_exports(args.copies, args.segment, ctx, report, key)
    if args.save_checkpoint and report.last_checkpoint is not None:
        _save_checkpoint(args.save_checkpoint, report.last_checkpoint.to_dict())
        data["saved_checkpoint"] = str(args.save_checkpoint)
    elif args.save_checkpoint:
        ctx.info(f"nothing saved to {args.save_checkpoint}: the log has no signed checkpoint yet")
    ctx.emit(data, _verify_text)
    return 0


def _default_audit_config() -> Any:
    from trainguard.evidence.config import AuditConfig

    return AuditConfig()


def _verify_home_log(
    ctx: Context, key: Any, trusted: Any, *, no_witness: bool
) -> tuple[Any, dict[str, Any] | None]:
    """Verify the home's log (genesis record, chain, cadence), sign its tail, and compare it
    with the witness copies. Every failure is a failed verification (exit 1)."""
    from trainguard.evidence.audit_genesis import RESTORE_TIP, AuditLogMissing, AuditLogReplaced
    from trainguard.evidence.audit_log import AuditLogInvalid, AuditLogUnreadable
    from trainguard.evidence.embedded import (
        audit_config,
        check_genesis_record,
        open_embedded_log,
        record_tampering,
    )

    home = ctx.home.require()
    cfg = audit_config(ctx.config)
    if not home.audit_db.exists():  # the same incident as any other command's refusal
        msg = AuditLogMissing(home.audit_db).message
        record_tampering(home, ctx.config, msg)
        raise AuditLogInvalid(msg + " (audit-tampered)", tip=RESTORE_TIP)
    try:
        with open_embedded_log(home, ctx.config, check_genesis=False) as log:
            try:
                check_genesis_record(home, log)
            except AuditLogReplaced as exc:
                record_tampering(home, ctx.config, exc.message)
                raise AuditLogInvalid(exc.message + " (audit-tampered)", tip=RESTORE_TIP) from exc
            report = log.verify(
                key, trusted_checkpoint=trusted, require_genesis=True, cadence=cfg.cadence()
            )
            report = _sign_tail(log, report)
            witness = None if no_witness else _compare_witness(ctx, home, log, report, key)
    except AuditLogUnreadable as exc:  # a log that cannot be read is a failed verification
        raise exc.as_tampered() from exc
    if no_witness and cfg.witness:
        witness = {"witness": cfg.witness, "compared": False, "reason": "--no-witness"}
    return report, witness


def _sign_tail(log: Any, report: Any) -> Any:
    """Sign the verified tail now (only after it verified, so a forged tail is never signed)."""
    import dataclasses

    cp = log.checkpoint(force=True)
    if cp is None:
        return report
    seq = report.last_seq + 1
    (row,) = list(log.raw_rows(seq, seq))
    return dataclasses.replace(
        report,
        entries=report.entries + 1,
        checkpoints=report.checkpoints + 1,
        last_seq=seq,
        last_hash=bytes(row[7]).hex(),
        last_checkpoint=cp,
        unsigned_tail=0,
    )


def _compare_witness(ctx: Context, home: Any, log: Any, report: Any, key: Any) -> dict[str, Any] | None:
    from trainguard.agent.api.witness import fetch_copies, push_checkpoints
    from trainguard.core.errors import AgentError, IntegrityError
    from trainguard.evidence.audit_witness import compare_with_copies
    from trainguard.evidence.embedded import audit_config

    url = audit_config(ctx.config).witness
    if not url:
        return None
    try:
        pushed = push_checkpoints(home, ctx.config, log, recheck=True)
        copies = fetch_copies(home, url, ctx.config.node.name)
    except AgentError as exc:
        raise IntegrityError(
            f"cannot compare the log with its witness {url}: {exc.message}",
            tip="bring the witness back (or fix [audit] witness); `audit verify --no-witness` "
            "checks the local log alone",
        ) from exc
    hashes = log.hashes_at([c.seq for c in copies.checkpoints])
    compared = compare_with_copies(
        [copies],
        log_id=report.genesis.log_id if report.genesis else None,
        last_seq=report.last_seq,
        hashes=hashes,
        verify_key=key,
    )
    if pushed is not None and pushed.conflicts:
        raise IntegrityError(
            f"the witness {url} holds another history of this log "
            f"({pushed.conflicts[0].get('reason')})",
            tip="treat this node's log as rewritten; compare it with the witness copies",
        )
    return {"witness": url, "compared": True, "checkpoints_compared": compared,
            "sent": pushed.sent if pushed else 0}


def _compare_exports(paths: list[Path], segment: Path | None, ctx: Context, report: Any,
                     key: Any) -> int:
    """Compare the verified log with the checkpoint copies in exported JSON-lines files."""
    from trainguard.evidence.audit_witness import compare_with_copies, copies_from_export

    node = report.genesis.node if report.genesis else ctx.config.node.name
    copies = []
    for path in paths:
        try:
            with path.open(encoding="utf-8") as f:
                copies.append(copies_from_export(f, node, f"export {path}"))
        except FileNotFoundError as exc:
            raise UsageError(f"no such export file: {path}", tip=_EXPORT_TIP) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read export file {path}: {exc}", tip=_EXPORT_TIP) from exc
    wanted = sorted({c.seq for w in copies for c in w.checkpoints})
    if segment is not None:
        raw = _read_json(segment, "segment", _SEGMENT_TIP, garbled=_bad_segment)
        hashes = {int(e["seq"]): str(e["hash"]) for e in raw.get("entries", [])}
    else:
        from trainguard.evidence.embedded import open_embedded_log

        with open_embedded_log(ctx.home.require(), ctx.config) as log:
            hashes = log.hashes_at(wanted)
    return compare_with_copies(
        copies, log_id=report.genesis.log_id if report.genesis else None,
        last_seq=report.last_seq, hashes=hashes, verify_key=key,
    )


_EXPORT_TIP = "pass the JSON-lines files written by the [export] file destination"
_CHECKPOINT_TIP = "pass a file saved earlier with `trainguard audit verify --save-checkpoint FILE`"
_SEGMENT_TIP = "pass a segment exported from a node's audit log (JSON)"


def _load_key(path: Path | None, ctx: Context) -> Any:
    from trainguard.core.errors import TrainguardError
    from trainguard.crypto.signing import VerifyKey

    try:
        return VerifyKey.load(path or ctx.home.node_verify_key)
    except TrainguardError as exc:
        # `trainguard init` refuses an existing home, so its tip would send users in circles.
        tip = (
            "pass the node's public key (keys/node.ed25519.pub in that node's home)"
            if path
            else "restore keys/node.ed25519.pub from a backup of this home, or pass --pubkey"
        )
        raise type(exc)(exc.message, tip=tip) from exc


def _read_checkpoint(path: Path) -> Any:
    from trainguard.core.errors import IntegrityError
    from trainguard.evidence.audit_log import Checkpoint

    # A saved checkpoint is a trust anchor: one that cannot be read fails verification (exit 1)
    # rather than being skipped; a path that does not exist is a usage error (exit 2).
    raw = _read_json(path, "checkpoint", _CHECKPOINT_TIP, garbled=_bad_cp)
    try:
        return Checkpoint.from_dict(raw)
    except IntegrityError as exc:
        raise _bad_cp(path) from exc


def _bad_cp(path: Path) -> Exception:
    from trainguard.core.errors import IntegrityError

    return IntegrityError(f"{path} is not a trainguard audit checkpoint", tip=_CHECKPOINT_TIP)


def _bad_segment(path: Path) -> Exception:
    from trainguard.core.errors import IntegrityError

    return IntegrityError(f"{path} is not a trainguard audit segment", tip=_SEGMENT_TIP)


def _save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    from trainguard.core.fs import write_private

    try:
        write_private(path, json.dumps(checkpoint, indent=2).encode())
    except OSError as exc:
        raise UsageError(
            f"cannot save the checkpoint to {path}: {exc.strerror or exc}",
            tip="choose a writable location, ideally off this node",
        ) from exc


def _read_json(path: Path, what: str, tip: str, garbled: Any = None) -> Any:
    """The JSON in `path`; exit 2 naming the file when it cannot be read, `garbled(path)` (or
    exit 2) when it is not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UsageError(f"no such {what} file: {path}", tip=tip) from exc
    except IsADirectoryError as exc:
        raise UsageError(f"{what} {path} is a directory, not a file", tip=tip) from exc
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}", tip=tip) from exc
    except UnicodeDecodeError as exc:
        if garbled is not None:
            raise garbled(path) from exc
        raise UsageError(f"{what} {path} is not a text file", tip=tip) from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        if garbled is not None:
            raise garbled(path) from exc
        raise UsageError(f"{what} {path} is not valid JSON ({exc})", tip=tip) from exc


def _verify_text(d: dict[str, Any]) -> str:
    cp = d["last_checkpoint"]
    lines = [
        f"audit log OK: {d['entries']} entries (seq {d['first_seq']}..{d['last_seq']}), "
        f"{d['checkpoints']} signed checkpoints, node key {d['key_id']}",
        f"last checkpoint covers entry {cp['seq']}" if cp else "no signed checkpoint yet",
    ]
    if d["unsigned_tail"]:
        lines.append(
            f"{d['unsigned_tail']} entries after the last checkpoint are protected by the chain only"
        )
    g = d.get("genesis")
    if g:
        lines.append(
            f"genesis: log {g['log_id']} at entry {g['seq']}"
            + (" (sealed after older entries)" if g["legacy"] else "")
        )
    if "export_copies" in d:
        lines.append(f"exported copies: {d['export_copies']} checkpoints match")
    w = d.get("witness")
    if w and w.get("compared"):
        lines.append(
            f"witness {w['witness']}: {w['checkpoints_compared']} checkpoint copies match"
        )
    elif w:
        lines.append(f"witness {w['witness']} NOT compared ({w['reason']})")
    return "\n".join(lines)


def _seal_genesis(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.core.errors import TrainguardError
    from trainguard.crypto.signing import SigningKey
    from trainguard.evidence.audit_chain import Cadence
    from trainguard.evidence.embedded import (
        audit_config,
        genesis_record_path,
        open_embedded_log,
        seal_genesis,
    )

    home = ctx.home.require()
    key = _load_key(None, ctx)
    try:
        signer = SigningKey.load(home.node_signing_key)
    except TrainguardError as exc:
        raise UsageError(
            f"sealing the genesis needs the node signing key: {exc.message}",
            tip="run it as the user that owns the home (root under systemd)",
        ) from exc
    if genesis_record_path(home).exists():
        raise UsageError("this home's audit log already has a signed genesis",
                         tip="nothing to do; `trainguard audit verify` checks it")
    with open_embedded_log(home, ctx.config, check_genesis=False) as log:
        if log.genesis() is not None:
            raise UsageError("the audit log already has a genesis but the home has no record of it",
                             tip="restore state/audit-genesis.json from a backup of this home")
        # The old writer signed by count only: hold the history to that before vouching for it.
        cadence = Cadence(audit_config(ctx.config).cadence().max_entries, float("inf"))
        report = log.verify(key, cadence=cadence)
    genesis = seal_genesis(home, ctx.config, signer)
    data = {"sealed": True, "log_id": genesis.log_id, "genesis_seq": genesis.seq,
            "legacy_entries": report.entries}
    ctx.emit(data, lambda d: f"sealed: genesis of log {d['log_id']} at entry {d['genesis_seq']}, "
                             f"covering {d['legacy_entries']} older entries")
    return 0


def _log(args: argparse.Namespace, ctx: Context) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError(
            f"--limit must be at least 1, not {args.limit}", tip="leave it out for all"
        )
    fmt = getattr(args, "log_format", None) or ctx.format.value
    if args.follow or fmt in ("jsonl", "ocsf"):
        from trainguard.cli.audit_stream import log_stream

        return log_stream(args, ctx, fmt, _open_log, _log_text, parse_since)
    ctx.format = type(ctx.format)(fmt)
    since = parse_since(args.since, time.time()) if args.since else None
    with _open_log(ctx) as log:
        entries = [e.to_dict() for e in log.entries(since=since, kind=args.kind)]
    if args.limit is not None:
        entries = entries[-args.limit :]
    ctx.emit(entries, _log_text)
    return 0


def _log_text(entries: list[dict[str, Any]]) -> str:
    out = []
    for e in entries:
        when = dt.datetime.fromtimestamp(e["time"], dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        data = json.dumps(e["data"], sort_keys=True, separators=(",", ":"))
        out.append(f"{e['seq']:>7} {when} {e['kind']:<24} {e['actor']:<18} {data}")
    return "\n".join(out) or "(no entries)"


# ---- audit report -----------------------------------------------------------------------


def _register_report(audit_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = audit_sub.add_parser(
        "report",
        help="write the audit report (HTML, Markdown, JSON, OSCAL, PDF)",
        description=(
            "Gather evidence from this node and, with --node, from remote agents over mTLS; "
            "verify each node's audit log; map everything to NIST SP 800-53 r5 controls and "
            "MITRE ATLAS techniques. OSCAL writes the assessment results and the assessment plan "
            "they import; pdf prints the HTML report with headless Chromium (install `chromium`). "
            "Synthetic incidents from `hooks test` are left out of the evidence and the score. "
            "Exit 1 when a control is not satisfied or a log fails."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("trainguard-report"), help="output folder")
    p.add_argument("--formats", default=_default_formats(),
                   help="comma-separated: html,md,json,oscal,pdf (default: html,md,json,oscal)")
    p.add_argument("--node", action="append", default=[], metavar="URL",
                   help="remote agent (tls://HOST:PORT); repeat for more nodes")
    p.add_argument("--cert", type=Path, help="client certificate for --node (default: this node's)")
    p.add_argument("--key", type=Path, help="client key for --node")
    p.add_argument("--ca", type=Path, help="cluster CA for --node (default: this home's)")
    p.add_argument("--no-local", action="store_true", help="only the --node agents, not this node")
    p.set_defaults(func=run)


def _default_formats() -> str:
    from trainguard.report.formats import DEFAULT_FORMATS

    return DEFAULT_FORMATS


def run(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.report.formats import ReportFormat, parse_formats
    from trainguard.report.gather import RemoteNode, build_report
    from trainguard.report.render_pdf import require_chromium

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
    # Likewise a missing Chromium (exit 2 with the package to install), before any evidence.
    chromium = require_chromium() if ReportFormat.PDF in formats else None
    report = build_report(home, ctx.config, remotes, include_local=not args.no_local, progress=ctx.info)
    if chromium is not None:
        ctx.info(f"printing the PDF with {chromium}")
    files = {fmt: fmt.outputs(report, chromium=chromium) for fmt in formats}
    paths, written = _write_all(out, files)
    counts = report.counts()
    ctx.audit.record("audit-report", "cli", {"score": report.score, "counts": counts, "paths": paths,
                                             "nodes": [n.name for n in report.nodes],
                                             "report_id": report.report_id})
    failed_nodes = [n.name for n in report.nodes if not n.log_verified or n.rolled_back]
    data: dict[str, Any] = {"report": paths, "files": written, "report_id": report.report_id,
                            "score": report.score, "controls": counts,
                            "nodes": [{"name": n.name, "log_verified": n.log_verified, "rolled_back": n.rolled_back}
                                      for n in report.nodes]}

    def text(d: dict[str, Any]) -> str:
        lines = [f"score {d['score']:.1f}/100: " + ", ".join(f"{v} {k}" for k, v in d["controls"].items())]
        lines.append(f"report id {d['report_id']}")
        lines += [f"  {path}" for path in d["files"]]
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


def _write_all(out: Path, files: dict[Any, dict[str, bytes]]) -> tuple[dict[str, str], list[str]]:
    """Write every format or none: on a failure, files written by this run are removed (and
    the folder, if this run made it), so a half report never passes for a whole one.
    Returns each format's own file and every file written (OSCAL adds its plan)."""
    from trainguard.report.formats import BASENAME

    made = not out.exists()
    written: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for outputs in files.values():
            for suffix, content in outputs.items():
                path = out / f"{BASENAME}.{suffix}"
                with atomic_output(path, mode=0o640) as tmp:
                    tmp.write_bytes(content)
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
    own = {fmt.value: str(out / f"{BASENAME}.{next(iter(outputs))}") for fmt, outputs in files.items()}
    return own, [str(p) for p in written]
