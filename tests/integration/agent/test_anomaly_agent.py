"""Detections through the daemon's real cycles (`Agent.cycle`), with fake NVML and /proc:

* a miner-like GPU pattern and an exfiltration burst (telemetry -> Scorer -> incidents);
* registered training jobs: a `train.launch` entry names a real launcher process, whose real
  child holds one GPU; the same miner-like pattern there is spared, on an unregistered process
  it is flagged, and once the job's processes exit the GPU is watched again;
* training telemetry (`train.telemetry`, as the launcher forwards it): a loss spike and a rank
  whose updates stay out of line become `byzantine-worker` incidents;
* the multivariate node detector (`[anomaly] node_telemetry = true`): quiet on normal load after
  its first fit, an incident when the GPUs train as before but something pegs the CPUs (a CPU
  miner: no per-GPU or network detector watches that).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import make_home
from trainguard.agent.daemon import Agent
from trainguard.agent.detection import Scorer
from trainguard.agent.telemetry.collector import FakeNvml, TelemetryCollector
from trainguard.core.config import load_config
from trainguard.core.home import Home

pytestmark = pytest.mark.integration

GIB = 1 << 30


class FakeProc:
    """Just the files TelemetryCollector reads, with a transmit counter we control."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "net").mkdir(parents=True)
        (root / "meminfo").write_text("MemTotal: 65536000 kB\nMemAvailable: 32768000 kB\n")
        self.ticks = 0
        self.busy = 0
        self.tx = 0

    def advance(self, tx_bytes: int, busy: float = 0.5) -> None:
        self.ticks += 1000
        self.busy += int(4000 * busy)
        self.tx += tx_bytes
        idle = 4 * self.ticks - self.busy
        (self.root / "stat").write_text(f"cpu  {self.busy} 0 0 {idle} 0 0 0 0\nbtime 1\n")
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
    return make_home(root, node="gpu-node-7", keyring=False)


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


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])


def _launcher() -> tuple[subprocess.Popen[str], int]:
    """A stand-in for `trainguard train`: a process whose child is the job's worker."""
    code = ("import subprocess, sys, time\n"
            "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
            "print(w.pid, flush=True)\n"
            "time.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def _miner_like(fake: FakeNvml, gpu: int, pid: int, rng: np.random.Generator) -> None:
    fake.set(gpu, util_pct=99 + rng.normal(0, 0.3), power_w=320 + rng.normal(0, 1),
             mem_used_bytes=6 * GIB, processes=[(pid, 6 * GIB, "python3")])


def _incidents(agent: Agent, kind: str) -> list[dict]:
    return [e.data for e in agent.audit.entries(kind="incident") if e.data["kind"] == kind]


def test_registered_job_is_spared_an_unregistered_miner_is_flagged(tmp_path: Path):
    home = _home(tmp_path / "home")
    config = load_config(home.config_path, {})
    clock, proc, fake = Clock(), FakeProc(tmp_path / "proc"), FakeNvml(devices=2)
    rng = np.random.default_rng(1)
    telemetry = TelemetryCollector(nvml=fake, proc_root=proc.root, clock=clock)
    agent = Agent(home, config, clock=clock, checks=lambda h, c: [], telemetry=telemetry,
                  scorer=Scorer(config, clock=clock))
    launcher, worker = _launcher()
    miner, newcomer = _sleeper(), None
    try:
        # what `trainguard train` records after its preflight (the embedded log's shape), and a
        # forged one through the API that claims the miner for another account
        agent.audit.append("train.launch", "alice", {"job": "job-1", "launcher_pid": launcher.pid})
        agent.audit.append("train.launch", "uid:4242(mallory)", {
            "job": "cover", "launcher_pid": miner.pid, "submitted_by": f"uid:{os.getuid() + 1}"})
        for _ in range(150):
            clock.now += 10.0
            _miner_like(fake, 0, worker, rng)
            _miner_like(fake, 1, miner.pid, rng)
            proc.advance(int(2e7))
            assert not agent.cycle().errors
        flagged = {i["evidence"]["gpu"]: i["evidence"] for i in _incidents(agent, "gpu-misuse")}
        assert list(flagged) == [1] and flagged[1]["pids"] == [miner.pid]
        assert {launcher.pid, worker} <= agent.feeds.jobs.pids()
        registered = [e.data for e in agent.audit.entries(kind="agent.job-registered")]
        refused = [e.data for e in agent.audit.entries(kind="agent.job-refused")]
        assert [r["job"] for r in registered] == ["job-1"]
        assert refused == [{"job": "cover", "launch_seq": refused[0]["launch_seq"],
                            "reason": "the launcher does not run under the submitting account"}]

        # the job ends: its PIDs are dropped, and what holds GPU 0 next is judged on its own
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
        newcomer = _sleeper()
        for _ in range(30):
            clock.now += 10.0
            _miner_like(fake, 0, newcomer.pid, rng)
            _miner_like(fake, 1, miner.pid, rng)
            proc.advance(int(2e7))
            assert not agent.cycle().errors
        assert agent.feeds.jobs.jobs == [] and worker not in agent.feeds.jobs.pids()
        gpu0 = [i["evidence"] for i in _incidents(agent, "gpu-misuse") if i["evidence"]["gpu"] == 0]
        assert [e["pids"] for e in gpu0] == [[newcomer.pid]]
    finally:
        agent.close()
        for p in (miner, newcomer):
            if p is not None:
                p.kill()
                p.wait()
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()


def test_training_telemetry_spikes_and_outlier_ranks_become_incidents(tmp_path: Path):
    home = _home(tmp_path / "home")
    config = load_config(home.config_path, {})
    clock, fake, proc = Clock(), FakeNvml(devices=1), FakeProc(tmp_path / "proc")
    telemetry = TelemetryCollector(nvml=fake, proc_root=proc.root, clock=clock)
    agent = Agent(home, config, clock=clock, checks=lambda h, c: [], telemetry=telemetry,
                  scorer=Scorer(config, clock=clock))
    rng = np.random.default_rng(2)
    try:
        for step in range(120):
            loss = 2.0 * np.exp(-step / 200) + rng.normal(0, 0.02)
            ratios = [1.0 + rng.normal(0, 0.05) for _ in range(4)]
            cosines = [0.9 + rng.normal(0, 0.02) for _ in range(4)]
            if step == 80:
                loss = 40.0  # a poisoned batch
            if 95 <= step < 99:
                ratios[3], cosines[3] = 12.0, -0.4  # rank 3 sends scaled, flipped updates
            agent.audit.append("train.telemetry", "uid:1000(trainer)", {
                "job": "job-7", "step": step, "loss": float(loss),
                "grad_norm": float(1.0 + rng.normal(0, 0.05)), "step_time": 0.1,
                "update_norm_ratio": ratios, "update_cosine": cosines,
                "submitted_by": "uid:1000"})
            if step % 10 == 9:
                clock.now += 10.0
                proc.advance(int(2e7))
                assert not agent.cycle().errors
        found = [(i["severity"], i["evidence"]["signal"], i["evidence"]["rank"],
                  i["evidence"]["step"]) for i in _incidents(agent, "byzantine-worker")]
    finally:
        agent.close()
    assert found == [("medium", "loss", None, 80), ("high", "update", 3, 97)]


def _node_agent(tmp_path: Path, devices: int) -> tuple[Agent, Clock, FakeProc, FakeNvml]:
    """A daemon with the node detector on: 10 s cycles, a 2 h warm-up."""
    home = _home(tmp_path / "home")
    with home.config_path.open("a") as f:
        f.write("[agent]\ncycle_seconds = 10\n[anomaly]\nnode_telemetry = true\n"
                "node_warmup_hours = 2\n")
    config = load_config(home.config_path, {})
    clock, proc, fake = Clock(), FakeProc(tmp_path / "proc"), FakeNvml(devices=devices)
    telemetry = TelemetryCollector(nvml=fake, proc_root=proc.root, clock=clock)
    agent = Agent(home, config, clock=clock, checks=lambda h, c: [], telemetry=telemetry)
    return agent, clock, proc, fake


@pytest.mark.slow
def test_node_telemetry_detector_quiet_on_normal_load_then_flags_pegged_cpus(
    tmp_path: Path,
):
    agent, clock, proc, fake = _node_agent(tmp_path, devices=2)
    node_det = agent.scorer.node
    assert node_det is not None  # built from [anomaly], calibrated to 1/day at 10 s
    assert node_det.cfg.interval_s == 10.0 and node_det.cfg.warmup_s == 7200.0
    rng = np.random.default_rng(3)

    def training(i: int, busy: float | None = None) -> None:
        dip = i % 40 < 3  # a pause for eval/checkpoint now and then
        for g in range(2):
            fake.set(g, util_pct=float(np.clip((30 if dip else 94) + rng.normal(0, 2), 0, 100)),
                     power_w=(140 if dip else 300) + rng.normal(0, 12),
                     mem_used_bytes=int((60 + rng.normal(0, 0.5)) * GIB),
                     processes=[(5000 + g, 60 * GIB, "python3")])
        proc.advance(int(rng.lognormal(np.log(3e7), 0.2)),
                     busy=busy if busy is not None else 0.35 + rng.normal(0, 0.03))

    try:
        normal = []
        for i in range(1000):  # 2 h of warm-up (720 cycles), then 47 min scored
            clock.now += 10.0
            training(i)
            normal += agent.cycle().incidents
        assert node_det.ready and node_det.threshold < float("inf")
        assert normal == [], [(e["kind"], e["evidence"]) for e in _incidents(agent, "gpu-misuse")
                              + _incidents(agent, "exfiltration")]
        broken = []
        for i in range(1000, 1012):  # the GPUs train as before while something pegs the CPUs
            clock.now += 10.0
            training(i, busy=0.97)
            broken += agent.cycle().incidents
        node = [i for i in _incidents(agent, "gpu-misuse")
                if i["evidence"]["reason"].startswith("node telemetry")]
    finally:
        agent.close()
    # an alert needs 3 of the last 5 rows over the threshold, and comes once per episode
    assert len(broken) == 1 and len(node) == 1
    evidence = node[0]["evidence"]
    assert evidence["most_unusual"] == "host_cpu_pct"
    assert evidence["false_alarms_per_day"] == 1.0 and evidence["score"] >= evidence["threshold"]


@pytest.mark.slow
def test_node_telemetry_detector_flags_gpu_work_beside_a_registered_job(tmp_path: Path):
    """A registered job (a real launcher and worker) trains on GPUs 0-1; after the warm-up a
    process no job accounts for runs GPU 2 flat out: the node row's `gpu_util_no_job` moves
    and the node detector raises one incident naming it, while the job alone stayed quiet."""
    agent, clock, proc, fake = _node_agent(tmp_path, devices=3)
    rng = np.random.default_rng(5)
    launcher, worker = _launcher()
    miner = _sleeper()

    def cycle(i: int, mining: bool) -> list:
        clock.now += 10.0
        dip = i % 40 < 3
        for g in range(2):
            fake.set(g, util_pct=float(np.clip((30 if dip else 94) + rng.normal(0, 2), 0, 100)),
                     power_w=(140 if dip else 300) + rng.normal(0, 12),
                     mem_used_bytes=int((60 + rng.normal(0, 0.5)) * GIB),
                     processes=[(worker, 60 * GIB, "python3")])
        if mining:
            fake.set(2, util_pct=99 + rng.normal(0, 0.3), power_w=250 + rng.normal(0, 3),
                     mem_used_bytes=2 * GIB, processes=[(miner.pid, 2 * GIB, "python3")])
        else:
            fake.set(2, util_pct=0.0, power_w=55 + rng.normal(0, 2), mem_used_bytes=0,
                     processes=[])
        proc.advance(int(rng.lognormal(np.log(3e7), 0.2)), busy=0.35 + rng.normal(0, 0.03))
        result = agent.cycle()
        assert not result.errors
        return result.incidents

    try:
        agent.audit.append("train.launch", "alice", {"job": "job-1", "launcher_pid": launcher.pid})
        normal = []
        for i in range(1000):  # 2 h of warm-up (720 cycles), then 47 min scored
            normal += cycle(i, mining=False)
        assert worker in agent.feeds.jobs.pids()
        assert agent.scorer.node.ready and normal == []
        for i in range(1000, 1012):
            cycle(i, mining=True)
        node = [i["evidence"] for i in _incidents(agent, "gpu-misuse")
                if i["evidence"]["reason"].startswith("node telemetry")]
    finally:
        agent.close()
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
        miner.kill()
        miner.wait()
    assert len(node) == 1, node
    assert node[0]["most_unusual"] == "gpu_util_no_job"
    assert node[0]["row"]["gpu_util_no_job"] > 90 and node[0]["score"] >= node[0]["threshold"]
