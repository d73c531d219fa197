"""JSON output: timestamps are ISO-8601 UTC strings, everywhere `emit` writes."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from trainguard.cli.context import Context, OutputFormat, iso_times, iso_utc
from trainguard.core.home import Home


@given(st.floats(min_value=1e9, max_value=4e9))
def test_iso_round_trips_to_the_millisecond(seconds: float) -> None:
    text = iso_utc(seconds)
    assert text.endswith("Z")
    back = dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    assert abs(back - seconds) < 1e-3


def test_only_time_keys_with_epoch_values_change() -> None:
    data = {"time": 1_800_000_000.0, "expires_at": 1_800_000_000, "steps": 1_800_000_000,
            "nested": [{"created": 1.8e9, "mfa_age_s": 12.5}], "started_at": None,
            "seq_time": True, "since": 5}
    out = iso_times(data)
    assert out["time"] == out["expires_at"] == "2027-01-15T08:00:00Z"
    assert out["steps"] == 1_800_000_000 and out["nested"][0]["mfa_age_s"] == 12.5
    assert out["nested"][0]["created"] == "2027-01-15T08:00:00Z"
    assert out["started_at"] is None and out["seq_time"] is True and out["since"] == 5


def test_emit_writes_iso_times(tmp_path: Path) -> None:
    buf = io.StringIO()
    ctx = Context(home=Home(tmp_path), format=OutputFormat.JSON, stdout=buf)
    ctx.emit({"incident": {"time": 1_800_000_000.25}})
    assert json.loads(buf.getvalue())["incident"]["time"] == "2027-01-15T08:00:00.250Z"
