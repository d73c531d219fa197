"""`AuditStream` reads every committed entry once, in order, while several writers append, and
`write_stream` resumes from `after_seq` without a gap or a repeat."""

from __future__ import annotations

import io
import json
import threading

from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey
from trainguard.evidence.audit_log import AuditLog
from trainguard.evidence.export import AuditStream, StreamFormat
from trainguard.evidence.export.stream import write_stream


def test_follow_sees_each_entry_once_while_writers_race(home: Home, signer: SigningKey) -> None:
    with AuditLog.open(home.audit_db, "node-1", signer) as log:
        start = log.last_seq()
        done = threading.Event()

        def writer(name: str) -> None:
            with AuditLog.open(home.audit_db, "node-1", signer) as own:
                for i in range(50):
                    own.append("posture.check", name, {"i": i})

        threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(3)]
        for t in threads:
            t.start()
        stream = AuditStream(log, after_seq=start, batch=7)  # small batches: many boundaries
        seen: list[int] = []

        def stopped() -> bool:
            return done.is_set() and stream.after_seq >= log.last_seq()

        def sleep(_: float) -> None:
            if all(not t.is_alive() for t in threads):
                done.set()

        for entry in stream.follow(stopped, sleep, interval=0):
            seen.append(entry.seq)
        for t in threads:
            t.join()
        last = log.last_seq()
    # Every seq once, in order, up to the last one (signed checkpoints are entries too).
    assert seen == list(range(start + 1, last + 1))
    assert len(seen) >= 150


def test_write_stream_resumes_after_seq(home: Home, signer: SigningKey) -> None:
    with AuditLog.open(home.audit_db, "node-1", signer) as log:
        for i in range(10):
            log.append("login", f"user{i}", {})
        out = io.StringIO()

        def render(e):  # noqa: ANN001, ANN202
            record = StreamFormat.JSONL.render(e, product_version="0")
            return record.decode() if record else None

        n = write_stream(AuditStream(log, after_seq=4), out, render, follow=False,
                         stopped=lambda: False, sleep=lambda _s: None)
        seqs = [json.loads(x)["seq"] for x in out.getvalue().splitlines()]
        assert n == len(seqs) and seqs == list(range(5, log.last_seq() + 1))
        only_logins = io.StringIO()
        write_stream(AuditStream(log, kind="login"), only_logins, render, follow=False,
                     stopped=lambda: False, sleep=lambda _s: None)
        kinds = {json.loads(x)["kind"] for x in only_logins.getvalue().splitlines()}
        assert kinds == {"login"}
