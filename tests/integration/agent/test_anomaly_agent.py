"""A miner-like GPU pattern (FakeNvml) and an exfiltration burst (a fake /proc/net/dev) flow
through the real TelemetryCollector, the Scorer and the daemon's cycle into incidents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from trainguard.agent.daemon import Agent
from trainguard.agent.detection import Scorer
from trainguard.agent.telemetry.collector import FakeNvml, TelemetryCollector
from trainguard.core.config import load_config
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey

pytestmark = pytest.mark.integration

GIB = 1 << 30


class FakeProc:
    """Just the files TelemetryCollector reads, with a transmit counter we control."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "net").mkdir(parents=True)
        (root / "meminfo").write_text("MemTotal: 65536000 kB\nMemAvailable: 32768000 kB\n")
        self.ticks = 0
        self.tx = 0

    def advance(self, tx_bytes: int) -> None:
        self.ticks += 1000
        self.tx += tx_bytes
        (self.root / "stat").write_text(f"cpu  {self.ticks} 0 {self.ticks} {self.ticks * 2} 0 0 0 0\n")
        (self.root / "net" / "dev").write_text(
            "Inter-|   Receive                                                |  Transmit\n"
            " face |bytes    packets errs drop fifo frame compressed multicast|bytes ...\n"
            f"  eth0: 1000 10 0 0 0 0 0 0 {self.tx} 10 0 0 0 0 0 0\n"
            "    lo: 5 1 0 0 0 0 0 0 5 1 0 0 0 0 0 0\n"
        )


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _home(root: Path) -> Home:
    home = Home(root)
    home.create_dirs()
    home.config_path.write_text('[node]\nname = "gpu-node-7"\n')
    home.config_path.chmod(0o600)
    SigningKey.generate().save(home.node_signing_key)
    return home


def test_miner_and_exfiltration_become_incidents(tmp_path: Path):
    home = _home(tmp_path / "home")
    config = load_config(home.config_path, {})
    clock, proc, fake = Clock(), FakeProc(tmp_path / "proc"), FakeNvml(devices=1)
    rng = np.random.default_rng(0)
    telemetry = TelemetryCollector(nvml=fake, proc_root=proc.root, clock=clock)
    agent = Agent(home, config, clock=clock, checks=lambda h, c: [], telemetry=telemetry,
                  scorer=Scorer(config, clock=clock))
    try:
        incidents = []
        for i in range(260):
            clock.now += 10.0
            miner = i >= 60
            fake.set(0, util_pct=99 + rng.normal(0, 0.3) if miner else 20 + rng.normal(0, 8),
                     power_w=320 + rng.normal(0, 1) if miner else 90 + rng.normal(0, 15),
                     mem_used_bytes=6 * GIB if miner else int((10 + rng.normal(0, 1)) * GIB),
                     processes=[(31337, 6 * GIB, "python3")] if miner else [])
            burst = i == 250
            proc.advance(int(8e9) if burst else int(rng.lognormal(np.log(2e7), 0.3)))
            report = agent.cycle()
            assert not report.errors
            incidents += report.incidents
        entries = [e for e in agent.audit.entries(kind="incident")]
    finally:
        agent.close()
    kinds = [e.data["kind"] for e in entries]
    assert "gpu-misuse" in kinds and "exfiltration" in kinds
    misuse = next(e for e in entries if e.data["kind"] == "gpu-misuse")
    assert misuse.data["evidence"]["pids"] == [31337]
    exfil = next(e for e in entries if e.data["kind"] == "exfiltration")
    assert exfil.data["evidence"]["channel"] == "net"
    assert len(incidents) == len(entries)
