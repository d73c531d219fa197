"""`trainguard scan PATH...`: judge model, checkpoint and pickle files without loading them.

Exit codes: 0 when every file is safe (or skipped); 1 when any file is unsafe *or* could not be
judged ("error" verdict: truncated, malformed or unsupported input is never reported safe); 2 on
usage errors (no path given). `--format json` prints {"files": [{"path", "verdict", "format",
"findings": [...]}], "summary": {...}, "skipped": [{"path", "reason"}]}.

Skipped: a file found while walking a folder that no loader reads as a model, i.e. its only
reading is as a text pickle (no PROTO opcode) and that reading fails on a malformed opcode, not by
running out of input, with nothing unsafe before the failure (a CSV, a README, a licence text). A
truncated or binary pickle is a damaged model and stays an error. Loading it fails before anything runs, so it is neither a model to
judge nor an error to chase; it is listed as skipped. A file named on the command line is always
judged, and `require_safe` and the posture checks never skip: skipped is not safe.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trainguard.cli.context import Context


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "scan",
        help="statically scan model/pickle files for code execution (exit 1 if unsafe)",
        description=(
            "Scan files and folders (recursively) by content: pickle protocols 0-5, torch zip "
            "and legacy checkpoints, .npy/.npz, joblib, safetensors. Nothing is unpickled. "
            "Every pickle global must be on the torch/numpy/scikit-learn allowlist."
        ),
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    p.add_argument(
        "--audit", action="store_true", help="record the result in the audit log (kind 'scan')"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.integrity.scanner import ScanReport, scan_path

    report = scan_path(*args.paths)
    named = {p.resolve() for p in args.paths if not p.is_dir()}
    skipped = [f for f in report.files if _not_a_model(f) and Path(f.path).resolve() not in named]
    report = ScanReport(tuple(f for f in report.files if f not in skipped))
    data = report.to_json()
    data["skipped"] = [{"path": f.path, "reason": "not a model: every loader fails on it (a "
                        "malformed pickle, nothing unsafe before the failure)"} for f in skipped]
    ctx.emit(data, _text)
    summary = data["summary"]
    ctx.info(f"{summary['safe']} safe, {summary['unsafe']} unsafe, {summary['error']} error, "
             f"{len(skipped)} skipped (not models)")
    if args.audit:
        ctx.audit.record(
            "scan",
            "cli",
            {
                "paths": [str(p) for p in args.paths],
                "summary": summary,
                "unsafe": [f.path for f in report.unsafe],
                "error": [f.path for f in report.errors],
            },
        )
    return 0 if report.clean else 1


def _not_a_model(f: Any) -> bool:
    """Text-like files only: a binary pickle (PROTO first) or one that merely ran out of input
    is a damaged model, which stays an error."""
    from trainguard.integrity.scanner.report import FindingKind, Verdict

    if f.verdict is not Verdict.ERROR or f.format != "pickle" or not f.findings:
        return False
    if not all(x.kind is FindingKind.PARSE_ERROR for x in f.findings):
        return False
    if any("ran out of input" in x.message or "truncated" in x.message for x in f.findings):
        return False
    try:
        with open(f.path, "rb") as fh:
            head = fh.read(1)
    except OSError:
        return False
    return head != b"\x80"


def _text(data: dict[str, Any]) -> str:
    lines = []
    for f in data["files"]:
        lines.append(f"{f['verdict'].upper():6} {f['path']} ({f['format']})")
        for finding in f["findings"][:10]:
            where = f" at {finding['location']}" if finding["location"] else ""
            lines.append(f"         {finding['kind']}: {finding['message']}{where}")
    for s in data.get("skipped", []):
        lines.append(f"SKIP   {s['path']} ({s['reason']})")
    return "\n".join(lines)
