"""File checks: home and key file modes; plaintext checkpoints in the checkpoint folders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from trainguard.agent.checks import CheckContext, Outcome, Severity, register_check
from trainguard.crypto import is_sealed

_MAX_FILES = 100_000  # a bounded walk: a huge folder cannot stall the agent's cycle
_LISTED = 20


@register_check(
    "home-modes",
    "Home folders are 0700 and key files 0600",
    severity=Severity.HIGH,
    controls=("AC-3", "AC-6", "SC-12", "SC-28"),
)
def home_modes(ctx: CheckContext) -> Outcome:
    home = ctx.home
    if not home.root.is_dir():
        return Outcome.fail(
            f"no trainguard home at {home.root}",
            {"home": str(home.root)},
            "create it with `trainguard init`",
        )
    problems = home.check_modes()
    symlinks = [str(p) for d in (home.keys_dir, home.pki_dir) if d.is_dir()
                for p in sorted(d.iterdir()) if p.is_symlink()]
    evidence = {
        "home": str(home.root),
        "loose": [{"path": str(p.path), "mode": f"{p.mode:04o}", "expected": f"{p.expected:04o}"}
                  for p in problems],
        "symlinks": symlinks,
    }
    if problems or symlinks:
        fixes = "; ".join(f"chmod {p.expected:o} {p.path}" for p in problems)
        if symlinks:
            fixes += ("; " if fixes else "") + "replace symlinks in keys/ and pki/ with real files"
        what = len(problems) + len(symlinks)
        return Outcome.fail(f"{what} path(s) in the home are too open", evidence, fixes)
    return Outcome.passed("home folders and key files have private modes", evidence)


def _candidates(root: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if suffixes and not name.endswith(suffixes):
                continue
            if p.is_symlink() or not p.is_file():
                continue
            count += 1
            if count > _MAX_FILES:
                return
            yield p


@register_check(
    "plaintext-checkpoints",
    "Checkpoints at rest are sealed (no plaintext checkpoint files)",
    severity=Severity.HIGH,
    controls=("SC-28", "SC-28(1)"),
    atlas=("AML.T0035",),
)
def plaintext_checkpoints(ctx: CheckContext) -> Outcome:
    cfg = ctx.checks
    dirs = [Path(d).expanduser() for d in cfg.checkpoint_dirs]
    if not dirs:
        return Outcome.not_applicable(
            "no checkpoint folders configured ([checks] checkpoint_dirs)"
        )
    plaintext: list[str] = []
    unreadable: list[str] = []
    sealed = 0
    missing = [str(d) for d in dirs if not d.is_dir()]
    for d in dirs:
        if not d.is_dir():
            continue
        for p in _candidates(d, tuple(cfg.checkpoint_suffixes)):
            if not os.access(p, os.R_OK):
                unreadable.append(str(p))  # the agent cannot vouch for it either way
            elif is_sealed(p):
                sealed += 1
            else:
                plaintext.append(str(p))
    evidence = {
        "folders": [str(d) for d in dirs],
        "missing_folders": missing,
        "sealed": sealed,
        "plaintext_count": len(plaintext),
        "plaintext": plaintext[:_LISTED],
        "unreadable": unreadable[:_LISTED],
    }
    if plaintext:
        return Outcome.fail(
            f"{len(plaintext)} plaintext checkpoint file(s) at rest",
            evidence,
            "seal them with `trainguard seal IN OUT` and delete the plaintext, or let the trainer "
            "write sealed checkpoints",
        )
    if missing or unreadable:
        return Outcome.warn(
            f"{len(missing)} checkpoint folder(s) missing, {len(unreadable)} file(s) unreadable "
            "to the agent",
            evidence,
            "fix [checks] checkpoint_dirs, and let the agent's user read the checkpoint folders",
        )
    return Outcome.passed(f"all {sealed} checkpoint file(s) are sealed", evidence)
