"""`trainguard` entry point: argparse root, global flags, one error handler, exit codes.

Shell completion: `eval "$(register-python-argcomplete trainguard)"` (argcomplete).

Exit codes (DESIGN "CLI contract"): 0 clean, 1 findings or denied, 2 usage or config error,
3 internal. Data goes to stdout, logs and diagnostics to stderr; tracebacks only with -v.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType

from trainguard.cli.commands import (
    agent,
    anomaly,
    audit,
    authz,
    check,
    checkpoint,
    demo,
    deps,
    fl,
    hooks,
    init,
    key,
    login,
    pki,
    policy,
    robust,
    scan,
    seal,
    sign,
    train,
    user,
)
from trainguard.cli.context import Context, OutputFormat
from trainguard.core.errors import EXIT_INTERNAL, EXIT_USAGE, TrainguardError
from trainguard.core.home import Home

# One module per command group, in help order. Each defines `register(subparsers) -> None`;
# every sub-parser sets `func(args, ctx) -> int`. Modules import heavy libraries (torch,
# scikit-learn) inside their handlers only, so `trainguard --help` stays fast.
COMMANDS: tuple[ModuleType, ...] = (
    init,
    seal,
    key,
    sign,
    pki,
    user,
    login,
    authz,
    policy,
    agent,
    check,
    deps,
    scan,
    audit,
    hooks,
    anomaly,
    robust,
    train,
    checkpoint,
    fl,
    demo,
)

log = logging.getLogger("trainguard")


def _add_global_flags(p: argparse.ArgumentParser) -> None:
    """Flags accepted before and after any sub-command (`trainguard --home X key list` and
    `trainguard key list --home X`). SUPPRESS keeps a later parser from resetting a value an
    earlier one set."""
    p.add_argument(
        "--home",
        default=argparse.SUPPRESS,
        help="trainguard home directory (default: $TRAINGUARD_HOME or ~/.trainguard)",
    )
    if "--format" not in p._option_string_actions:  # `audit log` has its own (stream formats)
        p.add_argument(
            "--format",
            choices=[f.value for f in OutputFormat],
            default=argparse.SUPPRESS,
            help="output format on stdout (default: text)",
        )
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="more logging on stderr; tracebacks on errors",
    )


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out: list[argparse.ArgumentParser] = []
    for action in parser._actions:  # argparse has no public API for walking the tree
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                out.append(child)
                out.extend(_subparsers(child))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainguard",
        description="Security and compliance for GPU training clusters.",
        epilog="Exit codes: 0 clean, 1 findings or denied, 2 usage or config error, 3 internal.",
    )
    _add_global_flags(parser)
    parser.add_argument("--version", action="version", version=f"trainguard {_version()}",
                        help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    _describe(parser)
    for child in _subparsers(parser):
        if "--home" not in child._option_string_actions:
            _add_global_flags(child)
    return parser


# Examples shown under each command's --help; a test runs every one of them (in a folder with
# data.csv, data/ and model.pt, against a fresh home in $TRAINGUARD_HOME), so they stay true.
EXAMPLES: dict[tuple[str, ...], tuple[str, ...]] = {
    (): ("trainguard check", "trainguard --format json audit verify"),
    ("seal",): ("trainguard seal data.csv data.csv.tgs",
                "tar c data | trainguard seal - - > data.tar.tgs"),
    ("unseal",): ("trainguard unseal data.csv.tgs copy.csv",),
    ("scan",): ("trainguard scan model.pt", "trainguard scan --format json data"),
    ("sign",): ("trainguard sign data",),
    ("verify",): ("trainguard verify data",),
    ("key", "list"): ("trainguard key list",),
    ("audit", "verify"): ("trainguard audit verify",),
    ("audit", "log"): ("trainguard audit log --kind 'key-*' --limit 20",),
    ("check",): ("trainguard check --id home-modes", "trainguard check --list"),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trainguard")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _describe(parser: argparse.ArgumentParser) -> None:
    """Every command's `--help` opens with a description: its one-line help where the module
    gave no longer text."""
    for action in parser._actions:  # argparse has no public API for walking the tree
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            for name, child in action.choices.items():
                if not child.description and helps.get(name):
                    text = str(helps[name])
                    child.description = text[0].upper() + text[1:] + "."
                _describe(child)
    _add_examples(parser)


def _add_examples(parser: argparse.ArgumentParser) -> None:
    words = tuple(parser.prog.split()[1:])
    examples = EXAMPLES.get(words)
    if examples:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        lines = "\n".join(f"  $ {e}" for e in examples)
        parser.epilog = f"{parser.epilog}\n\n" if parser.epilog else ""
        parser.epilog += f"examples:\n{lines}"


def _configure_logging(verbose: int, *, daemon: bool) -> None:
    """Short lines for commands; for the agent (a daemon) journal priorities under systemd and
    UTC timestamps elsewhere (`trainguard.agent.systemd.journal`)."""
    level = logging.WARNING - 10 * min(verbose, 2)
    if daemon:
        from trainguard.agent.systemd.journal import log_handler

        logging.basicConfig(level=min(level, logging.INFO),
                            handlers=[log_handler(sys.stderr, os.environ)])
        return
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if argv is None and "_ARGCOMPLETE" in os.environ:  # shell completion (argcomplete)
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", 0) or 0
    daemon = getattr(args, "command", None) == "agent" and getattr(args, "agent_command", "") == "run"
    _configure_logging(verbose, daemon=daemon and not getattr(args, "once", False))
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    ctx = Context(
        home=Home.resolve(getattr(args, "home", None), dict(os.environ)),
        format=OutputFormat(getattr(args, "format", None) or "text"),
        verbose=verbose,
        environ=dict(os.environ),
    )
    try:
        code = args.func(args, ctx)
        return int(code or 0)
    except TrainguardError as exc:
        if verbose:
            traceback.print_exc(file=sys.stderr)
        print(exc.diagnostics(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into exit 3
        if verbose:
            traceback.print_exc(file=sys.stderr)
        print(
            f"error: internal error: {type(exc).__name__}: {exc}\n"
            "Tip: re-run with -v for a traceback and report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
