"""`trainguard audit log --follow | --format jsonl|ocsf [--since SEQ]`: the audit log as a stream
a SIEM (or `jq`) can read line by line.

Each entry is one line, flushed as soon as it is written. With ``--follow`` the command polls
the log by sequence number (`trainguard.evidence.export.AuditStream`) and keeps going until
SIGINT, SIGTERM or a closed pipe, each of which ends it cleanly with exit 0. ``--since SEQ``
resumes after entry SEQ: a consumer that keeps the last `seq` (jsonl) or `metadata.sequence`
(ocsf) it stored and restarts with it neither skips nor repeats an entry.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from trainguard.cli.context import Context
from trainguard.core.errors import UsageError
from trainguard.evidence.audit_chain import AuditEntry

__all__ = ["log_stream"]


def _start_after(log: Any, since: str | None, parse_since: Callable[[str, float], float]) -> int:
    """The sequence number to start after: `since` as a sequence number when it is a plain
    integer, else as a time (the first entry at or after it)."""
    if not since:
        return 0
    text = since.strip()
    if text.isdigit():
        return int(text)
    t = parse_since(text, time.time())
    first = next(iter(log.entries(since=t, limit=1)), None)
    return int(first.seq) - 1 if first is not None else int(log.last_seq())


def _renderer(fmt: str, text: Callable[[list[dict[str, Any]]], str]) -> Callable[[AuditEntry], str | None]:
    from trainguard.evidence.export import StreamFormat, product_version

    if fmt == "text":
        return lambda entry: text([entry.to_dict()])
    stream_format = StreamFormat(fmt)
    version = product_version()

    def render(entry: AuditEntry) -> str | None:
        record = stream_format.render(entry, product_version=version)
        return None if record is None else record.decode()

    return render


def log_stream(
    args: argparse.Namespace,
    ctx: Context,
    fmt: str,
    open_log: Callable[[Context], Any],
    text: Callable[[list[dict[str, Any]]], str],
    parse_since: Callable[[str, float], float],
) -> int:
    from trainguard.evidence.export import AuditStream
    from trainguard.evidence.export.stream import write_stream

    if fmt == "json":
        raise UsageError("--follow cannot write one JSON document",
                         tip="use --format jsonl for one JSON object per line")
    if args.follow and args.limit is not None:
        raise UsageError("--limit does not apply to --follow",
                         tip="use --since SEQ to choose where the stream starts")
    if args.poll_interval <= 0:
        raise UsageError(f"--poll-interval must be > 0, not {args.poll_interval}",
                         tip="leave it out for 0.5 s")
    render = _renderer(fmt, text)
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    with open_log(ctx) as log:
        after = _start_after(log, args.since, parse_since)
        stream = AuditStream(log, after_seq=after, kind=args.kind)
        if args.limit is not None:  # the newest N of the selection: read it all, print the tail
            lines = [line for e in _read_all(stream) if (line := render(e)) is not None]
            for line in lines[-args.limit:]:
                ctx.stdout.write(line + "\n")
            ctx.stdout.flush()
            return 0
        # SIGINT like SIGTERM: a flag the loop checks between polls, never an exception
        # raised inside the log's reads (a Ctrl-C there once left a follower hanging)
        previous = ({sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
                    if args.follow else {})
        try:
            write_stream(stream, ctx.stdout, render, follow=args.follow,
                         stopped=lambda: stopping, sleep=time.sleep,
                         interval=args.poll_interval)
        except KeyboardInterrupt:
            pass  # Ctrl-C ends a follow: not an error
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, and keep the interpreter's final
            # flush from writing into the closed pipe.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, ctx.stdout.fileno())
            os.close(devnull)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 0


def _read_all(stream: Any) -> list[AuditEntry]:
    out: list[AuditEntry] = []
    while batch := stream.poll():
        out += batch
    return out
