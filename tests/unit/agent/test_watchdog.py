"""The watchdog ping proves progress: it stops when cycles stop completing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import make_home
from trainguard.agent.daemon import Agent
from trainguard.agent.systemd.sdnotify import Notifier
from trainguard.core.config import load_config
from trainguard.core.home import Home


class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__("@unused", watchdog_usec=20_000)  # ping every 10 ms
        self.fields: list[dict[str, str]] = []

    def notify(self, **fields: str) -> bool:
        self.fields.append(fields)
        return True


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="tgw", dir="/tmp"))  # a short path for the socket
    home: Home = make_home(root / "h")
    config = load_config(home.config_path, {})
    a = Agent(home, config, notifier=RecordingNotifier(), checks=lambda h, c: [],
              telemetry=None, scorer=None)
    yield a
    a.close()


def _pings(agent: Agent, seconds: float) -> list[dict[str, Any]]:
    notifier = agent.notifier
    assert isinstance(notifier, RecordingNotifier)
    notifier.fields.clear()

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent._watchdog(stop))
        await asyncio.sleep(seconds)
        stop.set()
        await task

    asyncio.run(run())
    return notifier.fields


def test_pings_while_cycles_complete(agent: Agent) -> None:
    agent.progress_at = time.monotonic()
    assert any(f.get("WATCHDOG") == "1" for f in _pings(agent, 0.1))


def test_a_stalled_cycle_stops_the_pings_and_says_so(agent: Agent) -> None:
    agent.progress_at = time.monotonic() - agent.stall_deadline() - 1
    sent = _pings(agent, 0.1)
    assert not any("WATCHDOG" in f for f in sent)
    statuses = [f["STATUS"] for f in sent if "STATUS" in f]
    assert len(statuses) == 1 and statuses[0].startswith("stalled")


def test_a_completed_cycle_counts_as_progress(agent: Agent) -> None:
    agent.progress_at = 0.0
    agent.cycle()
    assert time.monotonic() - agent.progress_at < 5
