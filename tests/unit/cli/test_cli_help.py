"""A CLI that explains itself: every command has a description, every argument a help text, one
placeholder style for sub-commands, and `--version`."""

from __future__ import annotations

import argparse
import subprocess
import sys

from trainguard.cli.main import build_parser

_GLOBAL = {"home", "format", "verbose", "help", "version"}


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):  # noqa: ANN202
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, (*path, name))


def test_every_command_has_a_description_and_every_argument_help() -> None:
    no_desc, no_help, metavars = [], [], set()
    for path, parser in _walk(build_parser()):
        if path and not parser.description:
            no_desc.append(" ".join(path))
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                metavars.add(a.metavar)
            elif a.dest not in _GLOBAL and not a.help:
                no_help.append(f"{' '.join(path)}: {a.dest}")
    assert not no_desc, f"commands without a description: {no_desc}"
    assert not no_help, f"arguments without help: {no_help}"
    assert metavars == {"COMMAND"}, f"one placeholder style for sub-commands: {metavars}"


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    out = subprocess.run([sys.executable, "-m", "trainguard.cli.main", "--version"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"trainguard {version('trainguard')}"


def test_one_flag_per_concept_project_with_domain_as_a_deprecated_alias() -> None:
    parser = build_parser()
    args = parser.parse_args(["authz", "check", "--user", "a", "--action", "x", "--resource", "r",
                              "--project", "vision"])
    assert args.domain == "vision"
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        old = parser.parse_args(["policy", "show", "--domain", "vision"])
    assert old.domain == "vision" and "--domain is deprecated; use --project" in err.getvalue()
    assert "--domain" not in parser._subparsers._group_actions[0].choices["user"].format_help()


def test_shell_completion_offers_commands_and_flags(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    out = tmp_path / "completions"
    env = {**os.environ, "_ARGCOMPLETE": "1", "_ARGCOMPLETE_IFS": "\n",
           "_ARGCOMPLETE_STDOUT_FILENAME": str(out), "COMP_LINE": "trainguard ke", "COMP_POINT": "13"}
    subprocess.run([sys.executable, "-m", "trainguard.cli.main"], env=env, timeout=60,
                   capture_output=True)
    assert out.read_text().split() == ["key"]
    env.update(COMP_LINE="trainguard key rotate --o", COMP_POINT="25")
    subprocess.run([sys.executable, "-m", "trainguard.cli.main"], env=env, timeout=60,
                   capture_output=True)
    assert "--otp" in out.read_text().split()
