"""The agent's Scorer on telemetry Samples built from the posture helper's FakeNvml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from trainguard.agent.detection import LEARNED_COLUMNS, Scorer
from trainguard.agent.telemetry.collector import FakeNvml, HostSample, Sample
from trainguard.anomaly.config import AnomalyConfig
from trainguard.anomaly.domain import AccessEvent
from trainguard.evidence.incidents import IncidentKind, Severity

GIB = 1 << 30


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _host(tx_rate: float | None) -> HostSample:
    return HostSample(10.0, 8 * GIB, 64 * GIB, 0, 0, {}, 1e5, tx_rate)


def _drive(scorer, fake, clock, cycles, tx=lambda i: 2e6 * (1 + 0.1 * np.sin(i)), start=0):
    found = []
    for i in range(start, start + cycles):
        clock.now += 10.0
        gpus = [fake.read(k) for k in range(fake.device_count())]
        found.append(scorer.observe(Sample(clock.now, gpus, _host(tx(i)))))
    return found


def test_foreign_process_and_miner_signature_become_gpu_misuse():
    clock, fake = Clock(), FakeNvml(devices=2)
    scorer = Scorer(AnomalyConfig(), clock=clock)
    rng = np.random.default_rng(0)
    # GPU 0: a miner hiding as python; GPU 1: a foreign binary
    fake.script(0, [{"util_pct": 99 + rng.normal(0, 0.3), "power_w": 310 + rng.normal(0, 1),
                     "mem_used_bytes": 5 * GIB, "processes": [(4242, 5 * GIB, "python3")]}
                    for _ in range(300)])
    fake.set(1, processes=[(777, GIB, "xmrig")], util_pct=50.0)
    found = [d for batch in _drive(scorer, fake, clock, 300) for d in batch]
    kinds = {(d.kind, d.evidence["gpu"], d.evidence["reason"]) for d in found}
    assert (IncidentKind.GPU_MISUSE, 1, "process not allowed by policy") in kinds
    assert (IncidentKind.GPU_MISUSE, 0,
            "miner usage signature, no registered training job") in kinds
    assert all(d.severity is Severity.HIGH for d in found)
    # a persisting foreign process is repeated once per anomaly.incident_cooldown_s (300 s):
    # 300 cycles of 10 s -> 10 times; the miner signature is reported once until it clears
    assert sum(1 for d in found if d.evidence["gpu"] == 1) == 10
    assert sum(1 for d in found if d.evidence["gpu"] == 0) == 1


def test_registered_training_job_is_not_a_miner():
    clock, fake = Clock(), FakeNvml()
    scorer = Scorer(AnomalyConfig(), clock=clock, registered_pids=lambda: {4242})
    fake.set(0, util_pct=99.0, power_w=300.0, mem_used_bytes=5 * GIB,
             processes=[(4242, 5 * GIB, "python3")])
    assert not any(_drive(scorer, fake, clock, 300))


def test_exfiltration_burst_on_the_network_and_pcie():
    clock, fake = Clock(), FakeNvml()
    scorer = Scorer(AnomalyConfig(), clock=clock)
    assert not any(_drive(scorer, fake, clock, 200))
    fake.set(0, pcie_tx_bytes_s=12e9)
    burst = _drive(scorer, fake, clock, 1, tx=lambda i: 800e6, start=200)[0]
    channels = {d.evidence["channel"] for d in burst if d.kind is IncidentKind.EXFILTRATION}
    assert channels == {"net", "pcie0"}


def test_access_events_go_through_the_same_gate():
    clock = Clock()
    scorer = Scorer(None, clock=clock)
    out = []
    for k in range(10):
        out += scorer.observe_access(AccessEvent(clock.now + k, "mallory", "mfa-failure"))
    assert [d.kind for d in out] == [IncidentKind.ACCESS_ANOMALY]


def test_learned_model_from_config_is_loaded_and_scores(tmp_path: Path):
    from trainguard.anomaly.learned import fit_detector, save_detector

    rng = np.random.default_rng(1)
    base = np.column_stack([rng.normal(50, 5, 3000), rng.normal(0.5, 0.02, 3000),
                            rng.normal(200, 10, 3000), rng.normal(60, 1, 3000),
                            rng.normal(1500, 10, 3000), rng.normal(1e6, 1e4, 3000),
                            rng.normal(20, 2, 3000), rng.normal(2e6, 1e5, 3000)])
    path = tmp_path / "gpu.skops"
    save_detector(fit_detector(base, LEARNED_COLUMNS, window=4, target_fpr=0.01), path)
    clock, fake = Clock(), FakeNvml()
    scorer = Scorer(AnomalyConfig(model_path=str(path), window=4), clock=clock)
    fake.set(0, util_pct=100.0, power_w=700.0, temp_c=90.0, sm_clock_mhz=1980.0,
             mem_used_bytes=79 * GIB)
    found = [d for b in _drive(scorer, fake, clock, 5) for d in b]
    assert any(d.evidence["reason"].startswith("learned model") for d in found)


def test_importing_the_scorer_pulls_in_neither_sklearn_nor_torch():
    code = ("import sys, trainguard.agent.detection as d; d.Scorer(None); "
            "print('sklearn' in sys.modules, 'torch' in sys.modules, 'skops' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_training_records_spikes_ranks_and_garbage():
    clock = Clock()
    scorer = Scorer(AnomalyConfig(), clock=clock)
    rng = np.random.default_rng(5)
    found = []
    for step in range(60):
        loss = 40.0 if step == 50 else 1.0 + rng.normal(0, 0.01)
        found += scorer.observe_training("j", {"step": step, "loss": loss, "grad_norm": None}, 0.0)
    assert [(d.kind, d.severity, d.evidence["signal"], d.evidence["step"]) for d in found] == [
        (IncidentKind.BYZANTINE_WORKER, Severity.MEDIUM, "loss", 50)]
    # values that are not numbers are skipped, never guessed
    for bad in ({"step": "61", "loss": 1e9}, {"step": True, "loss": 1e9},
                {"step": 62, "loss": "1e9"}, {"step": 63, "update_norm_ratio": [1, "x"],
                                              "update_cosine": [1, 1]}):
        assert scorer.observe_training("j", bad, 0.0) == []
    # a world size change restarts the rank monitor instead of failing
    for step in range(70, 76):
        n = 2 if step < 73 else 3
        assert scorer.observe_training("j", {"step": step, "update_norm_ratio": [1.0] * n,
                                             "update_cosine": [1.0] * n}, 0.0) == []


def test_training_detectors_are_bounded_and_freed():
    from trainguard.agent.detection import MAX_JOBS

    scorer = Scorer(None)
    for k in range(MAX_JOBS + 10):
        scorer.observe_training(f"job-{k}", {"step": 1, "loss": 1.0}, 0.0)
    assert len(scorer._jobs) == MAX_JOBS and "job-0" not in scorer._jobs
    scorer.forget_job(f"job-{MAX_JOBS + 9}")
    assert len(scorer._jobs) == MAX_JOBS - 1


def test_node_detector_only_when_enabled_and_then_calibrated_to_the_cycle():
    code = ("import sys; from trainguard.agent.detection import Scorer;"
            "from trainguard.anomaly.config import AnomalyConfig as A;"
            "s = Scorer(A()); print('trainguard.anomaly.node' in sys.modules, s.node is None);"
            "s = Scorer(A(node_telemetry=True, node_false_alarms_per_day=2.0,"
            " node_warmup_hours=6), interval_s=15.0);"
            "print('sklearn' in sys.modules, s.node.cfg.false_alarms_per_day, s.node.cfg.interval_s,"
            " s.node.cfg.warmup_s)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # numpy only: scikit-learn stays out of the agent with the node detector on
    assert out.stdout.split() == ["False", "True", "False", "2.0", "15.0", "21600.0"]


def test_node_row_couples_gpu_work_with_jobs_and_bytes_out_with_bytes_in():
    fake = FakeNvml(devices=3)
    fake.set(0, util_pct=90.0, processes=[(100, GIB, "python3")])  # the registered job's worker
    fake.set(1, util_pct=80.0, processes=[(100, GIB, "python3"), (777, GIB, "python3")])
    fake.set(2, util_pct=99.0, processes=[(777, GIB, "xmrig")])  # nothing registered here
    sample = Sample(0.0, [fake.read(k) for k in range(3)], _host(1e6))
    scorer = Scorer(AnomalyConfig())
    assert scorer.node_row(sample, {100})["gpu_util_no_job"] == 99.0
    assert scorer.node_row(sample, set())["gpu_util_no_job"] == 90.0 + 80.0 + 99.0
    assert scorer.node_row(sample, {100, 777})["gpu_util_no_job"] == 0.0
    # bytes sent beyond those received (1e6 out, 1e5 in); none when receiving more
    assert scorer.node_row(sample)["net_tx_excess_log"] == np.log1p(1e6 - 1e5)
    quiet = Sample(0.0, sample.gpus, _host(5e4))
    assert scorer.node_row(quiet)["net_tx_excess_log"] == 0.0
    assert np.isnan(scorer.node_row(Sample(0.0, sample.gpus, _host(None)))["net_tx_excess_log"])
