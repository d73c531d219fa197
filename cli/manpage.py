"""The `trainguard(1)` man page, generated from the argparse tree (so it never drifts from the
CLI). `trainguard agent install-unit` installs it, and the unit's ``Documentation=`` points at it.
"""

from __future__ import annotations

import argparse
import datetime as dt

__all__ = ["render_manpage"]


def _roff(text: str) -> str:
    out = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line
                     for line in out.splitlines())


def _commands(parser: argparse.ArgumentParser, path: list[str]) -> list[tuple[list[str], argparse.ArgumentParser]]:
    found: list[tuple[list[str], argparse.ArgumentParser]] = []
    for action in parser._actions:  # argparse has no public API for walking the tree
        if isinstance(action, argparse._SubParsersAction):
            for name, child in dict.fromkeys(action.choices.items()):
                found.append(([*path, name], child))
                found.extend(_commands(child, [*path, name]))
    return found


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines: list[str] = []
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction | argparse._SubParsersAction) or a.help == argparse.SUPPRESS:
            continue
        if a.dest in ("home", "format", "verbose") and a.option_strings:
            continue  # global flags, described once
        flags = ", ".join(a.option_strings) or (a.metavar if isinstance(a.metavar, str) else a.dest.upper())
        if a.option_strings and a.nargs != 0:
            flags += " " + (a.metavar if isinstance(a.metavar, str) else a.dest.upper())
        lines += [".TP", f"\\fB{_roff(flags)}\\fR", _roff(a.help or "")]
    return lines


def render_manpage(parser: argparse.ArgumentParser, *, version: str) -> str:
    """troff source of trainguard(1) for `parser` (the CLI's root parser)."""
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    lines = [
        f'.TH TRAINGUARD 1 "{today}" "trainguard {_roff(version)}" "User Commands"',
        ".SH NAME",
        "trainguard \\- security and compliance for GPU training clusters",
        ".SH SYNOPSIS",
        "\\fBtrainguard\\fR [\\fB\\-\\-home\\fR \\fIDIR\\fR] [\\fB\\-\\-format\\fR text|json]"
        " [\\fB\\-v\\fR] \\fICOMMAND\\fR ...",
        ".SH DESCRIPTION",
        _roff(parser.description or ""),
        ".SH GLOBAL OPTIONS",
        ".TP", "\\fB\\-\\-home\\fR \\fIDIR\\fR",
        "the trainguard home (default: $TRAINGUARD_HOME, /var/lib/trainguard under systemd)",
        ".TP", "\\fB\\-\\-format\\fR text|json", "output format on stdout",
        ".TP", "\\fB\\-v\\fR, \\fB\\-\\-verbose\\fR", "more logging on stderr; tracebacks on errors",
        ".SH COMMANDS",
    ]
    for path, child in _commands(parser, []):
        lines += [".SS " + _roff("trainguard " + " ".join(path)), _roff(child.description or "")]
        lines += _options(child)
    lines += [
        ".SH EXIT STATUS",
        "0 clean; 1 findings, failed verification or access denied; 2 usage or configuration "
        "error; 3 internal error.",
        ".SH FILES",
        ".TP", "\\fI/var/lib/trainguard\\fR", "the node's home under systemd (keys, audit log)",
        ".TP", "\\fI/run/trainguard/agent.sock\\fR",
        "the agent's socket for accounts that cannot read the home",
        ".SH SEE ALSO",
        "\\fBsystemd.service\\fR(5), \\fBjournalctl\\fR(1)",
    ]
    return "\n".join(lines) + "\n"
