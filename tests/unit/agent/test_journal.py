"""Log lines for journald (sd-daemon priority prefixes) and for people (UTC timestamps)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from trainguard.agent.systemd.journal import (
    JournalFormatter,
    TimestampFormatter,
    log_handler,
    under_journald,
)
from trainguard.evidence.incidents import LOG_LEVELS, Severity


def _record(level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord("trainguard.x", level, __file__, 1, msg, None, None)


def test_each_level_gets_its_syslog_priority_on_every_line() -> None:
    f = JournalFormatter()
    assert f.format(_record(logging.CRITICAL, "boom")) == "<2>trainguard.x: boom"
    assert f.format(_record(logging.ERROR, "e")).startswith("<3>")
    assert f.format(_record(logging.WARNING, "w")).startswith("<4>")
    assert f.format(_record(logging.INFO, "i")).startswith("<6>")
    assert f.format(_record(logging.DEBUG, "d")).startswith("<7>")
    lines = f.format(_record(logging.ERROR, "one\ntwo")).splitlines()
    assert lines == ["<3>trainguard.x: one", "<3>two"]


def test_incident_severities_map_to_distinct_priorities() -> None:
    f = JournalFormatter()
    prefixes = {s: f.format(_record(LOG_LEVELS[s], "x"))[:3] for s in Severity}
    assert prefixes == {Severity.CRITICAL: "<2>", Severity.HIGH: "<3>",
                        Severity.MEDIUM: "<4>", Severity.LOW: "<6>"}


def test_journal_stream_is_recognised_only_for_the_right_file(tmp_path: Path) -> None:
    with (tmp_path / "err").open("w") as stream, (tmp_path / "other").open("w") as other:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert under_journald(stream, env)
        assert not under_journald(other, env)  # stderr redirected elsewhere: plain lines
        assert not under_journald(stream, {})
        assert not under_journald(stream, {"JOURNAL_STREAM": "garbage"})
        assert isinstance(log_handler(stream, env).formatter, JournalFormatter)
        assert isinstance(log_handler(other, env).formatter, TimestampFormatter)


def test_elsewhere_lines_carry_a_utc_timestamp() -> None:
    line = TimestampFormatter().format(_record(logging.WARNING, "w"))
    date, level, rest = line.split(" ", 2)
    assert date.endswith("Z") and "T" in date and level == "WARNING" and rest == "trainguard.x: w"

