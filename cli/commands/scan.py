"""`trainguard scan PATH...`: judge model, checkpoint and pickle files without loading them.

Exit codes: 0 when every file is safe; 1 when any file is unsafe *or* could not be judged
("error" verdict: truncated, malformed or unsupported input is never reported safe); 2 on usage
errors (no path given). `--format json` prints {"files": [{"path", "verdict", "format",
"findings": [...]}], "summary": {...}}.
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
    from trainguard.integrity.scanner import scan_path

    report = scan_path(*args.paths)
    data = report.to_json()
    ctx.emit(data, _text)
    summary = data["summary"]
    ctx.info(f"{summary['safe']} safe, {summary['unsafe']} unsafe, {summary['error']} error")
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


def _text(data: dict[str, Any]) -> str:
    lines = []
    for f in data["files"]:
        lines.append(f"{f['verdict'].upper():6} {f['path']} ({f['format']})")
        for finding in f["findings"][:10]:
            where = f" at {finding['location']}" if finding["location"] else ""
            lines.append(f"         {finding['kind']}: {finding['message']}{where}")
    return "\n".join(lines)
