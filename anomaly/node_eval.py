"""Evaluation of the node detector on simulated node telemetry: false alarms per day on clean
days and detection of injected anomalies, per seed (`tests/bench/bench_node_detector.py`).

`simulate(seed, days, interval_s)` produces the row the agent feeds the detector
(`NODE_COLUMNS` of `trainguard.agent.detection`, here `COLUMNS`) for a node with four GPUs:

* **Jobs**: idle gaps and training jobs alternate; jobs arrive more often in working hours
  (gaps with a median of 40 min from 8 to 20 h, 3 h otherwise) and last hours (log-normal,
  median 5 h). A node's team reruns five recipes (drawn per seed), with small run-to-run
  changes; one job in ten is a new one-off. A recipe draws its GPU count (1, 2 or 4),
  utilisation level, GPU and host memory, CPU per GPU, and whether it is multi-node
  (all-reduce traffic: NIC bytes out ~ in, 80-400 MB/s) or single-node (data loading in, a
  little out). Evaluation pauses every 15-40 min
  (utilisation down for 1-2 min) and checkpoints every 30-90 min (2-4 min, GPUs nearly idle,
  100-400 MB/s out to storage): normal bursts of NIC bytes out, so an exfiltration detector
  must look at more than that column.
* **Registered jobs**: one job in twenty runs outside `trainguard train` (a user's own run), so
  ``gpu_util_no_job`` (utilisation of GPUs no registered job holds) is not always zero.
* **Correlations**: power follows utilisation per GPU; host CPU and NIC traffic follow the
  job's utilisation; steps at job start and stop.
* **Diurnal load** on the host: background CPU and traffic (users, monitoring) over the day.
* **Noise**: utilisation, power, memory, CPU, and log-normal traffic.

Anomalies (`inject`), from a random start on the second simulated day:

* ``exfiltration``: 5-20 min of 100-500 MB/s extra NIC bytes out (the agent's row has
  ``net_tx_excess_log``, bytes sent beyond those received, for it);
* ``miner``: a crypto-miner on the last GPU for 2 h, while that GPU is idle (full utilisation
  and power, 4 % memory, a little CPU, pool traffic);
* ``memory_leak``: host memory grows 8 points an hour for 6 h (capped at 98 %).

The seeds the defaults were chosen on are `DEV_SEEDS`; tests and the benchmark report others.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from trainguard.anomaly.node import NodeTelemetryConfig, NodeTelemetryDetector

__all__ = ["ANOMALIES", "COLUMNS", "DEV_SEEDS", "Injection", "evaluate", "simulate"]

COLUMNS: tuple[str, ...] = (
    "gpu_util_pct", "gpu_mem_frac", "gpu_power_w", "host_cpu_pct", "host_mem_frac",
    "net_tx_log", "net_rx_log", "gpu_util_no_job", "net_tx_excess_log",
)
ANOMALIES: tuple[str, ...] = ("exfiltration", "miner", "memory_leak")
DEV_SEEDS: tuple[int, ...] = tuple(range(20))  # the defaults and columns were chosen on these
_GPUS = 4
_UNREGISTERED = 0.05  # share of jobs a user starts outside `trainguard train` (not registered)
_HOUR = 3600.0


@dataclass(frozen=True)
class Injection:
    """An injected anomaly: samples [start, end)."""

    kind: str
    start: int
    end: int


def simulate(seed: int, days: float, interval_s: float = 30.0,
             inject: str | None = None) -> tuple[Any, Injection | None]:
    """Rows (`COLUMNS`) of `days` of telemetry, and the injected anomaly (None when clean)."""
    rng = np.random.default_rng(seed)
    n = int(days * 86400 / interval_s)
    hour = (np.arange(n) * interval_s / _HOUR) % 24
    util = np.zeros((n, _GPUS))
    mem = np.full((n, _GPUS), 0.005)
    cpu = np.zeros(n)
    host_mem = np.full(n, 0.08)
    tx, rx = np.zeros(n), np.zeros(n)
    held = np.zeros((n, _GPUS), dtype=bool)  # a registered training job holds the GPU
    _jobs(rng, n, interval_s, hour, util, mem, cpu, host_mem, tx, rx, held)
    day = np.clip(np.sin(math.pi * (hour - 7) / 14), 0, None)  # working-hours load on the host
    cpu += 2 + 4 * day + rng.normal(0, 1.2, n)
    host_mem += 0.03 * day + rng.normal(0, 0.003, n)
    tx += 5e4 * (1 + 4 * day) * rng.lognormal(0, 0.4, n)
    rx += 2e5 * (1 + 4 * day) * rng.lognormal(0, 0.4, n)
    busy = util > 0
    util = np.where(busy, np.clip(util + rng.normal(0, 2.0, util.shape), 0, 100), 0.0)
    mem = np.clip(mem + np.where(busy, rng.normal(0, 0.003, mem.shape), 0.0), 0, 1)
    power = 55 + 2.5 * util + rng.normal(0, 5, util.shape)
    injection = None
    if inject is not None:
        injection = _inject(rng, inject, n, interval_s, util, mem, power, cpu, host_mem, tx, rx)
    tx *= rng.lognormal(0, 0.15, n)
    rx *= rng.lognormal(0, 0.15, n)
    rows = np.column_stack([
        util.mean(axis=1), mem.mean(axis=1), power.sum(axis=1), np.clip(cpu, 0, 100),
        np.clip(host_mem, 0, 1), np.log1p(tx), np.log1p(rx), np.where(held, 0.0, util).sum(axis=1),
        np.log1p(np.maximum(0.0, tx - rx)),
    ])
    return rows, injection


def _job_types(rng: Any, n: int) -> list[dict[str, Any]]:
    """The node's workloads: a team reruns a few training recipes, each with its own profile."""
    return [_draw_job(rng) for _ in range(n)]


def _draw_job(rng: Any) -> dict[str, Any]:
    g = int(rng.choice([1, 2, 4], p=[0.25, 0.25, 0.5]))
    multi = bool(rng.random() < 0.3)  # multi-node: all-reduce, bytes out ~ bytes in
    rate = rng.uniform(8e7, 4e8) * g / 4 if multi else rng.uniform(5e6, 8e7) * g / 4
    return {"g": g, "level": rng.uniform(75, 98), "mem": rng.uniform(0.35, 0.92),
            "cpu": g * rng.uniform(4, 12), "host_mem": rng.uniform(0.1, 0.4), "rx": rate,
            "tx": rate * rng.uniform(0.9, 1.1) if multi else rng.uniform(2e5, 3e6)}


def _jobs(rng: Any, n: int, dt: float, hour: Any, util: Any, mem: Any, cpu: Any,
          host_mem: Any, tx: Any, rx: Any, held: Any) -> None:
    """Idle gaps and training jobs, written into the arrays in place. A job reruns one of the
    node's recipes (small run-to-run changes) or, one time in ten, is a new one-off; one in
    `_UNREGISTERED` runs outside `trainguard train` (its GPUs are not marked `held`)."""
    types = _job_types(rng, 5)
    i = 0
    while i < n:
        median_gap = 0.67 if 8 <= hour[i] < 20 else 3.0
        i += int(rng.lognormal(math.log(median_gap * _HOUR), 0.7) / dt)
        if i >= n:
            return
        end = min(n, i + int(np.clip(rng.lognormal(math.log(5 * _HOUR), 0.8), 0.3 * _HOUR,
                                     30 * _HOUR) / dt))
        job = _draw_job(rng) if rng.random() < 0.1 else types[int(rng.integers(len(types)))]
        g, level = job["g"], float(np.clip(job["level"] + rng.normal(0, 1.5), 50, 99))
        shape = np.full(end - i, level)
        out = np.zeros(end - i)
        _pauses(rng, shape, out, dt, level)
        util[i:end, :g] = shape[:, None]
        held[i:end, :g] = rng.random() >= _UNREGISTERED
        mem[i:end, :g] = np.clip(job["mem"] + rng.normal(0, 0.01), 0.05, 0.98)
        load = shape / level
        cpu[i:end] += job["cpu"] * rng.lognormal(0, 0.05) * load
        host_mem[i:end] += job["host_mem"] + rng.normal(0, 0.01)
        rx[i:end] += job["rx"] * rng.lognormal(0, 0.1) * load
        tx[i:end] += job["tx"] * rng.lognormal(0, 0.1) * load + out
        i = end


def _pauses(rng: Any, util: Any, out: Any, dt: float, level: float) -> None:
    """Evaluation pauses and checkpoints (with their upload) inside one job, in place."""
    n = len(util)
    j = int(rng.uniform(15, 40) * 60 / dt)
    while j < n:  # evaluation: utilisation drops for 1-2 min
        util[j:j + max(1, int(rng.uniform(60, 120) / dt))] = level * 0.35
        j += int(rng.uniform(15, 40) * 60 / dt)
    j = int(rng.uniform(30, 90) * 60 / dt)
    while j < n:  # checkpoint: GPUs nearly idle, the file goes out to storage
        span = max(1, int(rng.uniform(120, 240) / dt))
        util[j:j + span] = level * 0.1
        out[j:j + span] += rng.uniform(1e8, 4e8)
        j += int(rng.uniform(30, 90) * 60 / dt)


def _inject(rng: Any, kind: str, n: int, dt: float, util: Any, mem: Any, power: Any,
            cpu: Any, host_mem: Any, tx: Any, rx: Any) -> Injection:
    lo, hi = int(86400 / dt) + int(2 * _HOUR / dt), n - int(8 * _HOUR / dt)
    if hi <= lo:
        raise ValueError("simulate at least 2 days to inject an anomaly")
    if kind == "exfiltration":
        start = int(rng.integers(lo, hi))
        end = start + max(1, int(rng.uniform(5, 20) * 60 / dt))
        tx[start:end] += rng.uniform(1e8, 5e8)
    elif kind == "miner":
        idle = np.flatnonzero(util[lo:hi, -1] == 0) + lo
        start = int(rng.choice(idle)) if len(idle) else lo
        end = start + int(2 * _HOUR / dt)
        free = util[start:end, -1] == 0
        util[start:end, -1] = np.where(free, np.clip(rng.normal(99.5, 0.4, end - start), 0, 100),
                                       util[start:end, -1])
        power[start:end, -1] = np.where(free, rng.normal(250, 4, end - start),
                                        power[start:end, -1])
        mem[start:end, -1] = np.where(free, 0.04, mem[start:end, -1])
        cpu[start:end] += 1.5
        tx[start:end] += 2e4
        rx[start:end] += 2e4
    elif kind == "memory_leak":
        start = int(rng.integers(lo, hi))
        end = start + int(6 * _HOUR / dt)
        host_mem[start:end] += 0.08 * np.arange(end - start) * dt / _HOUR
        host_mem[start:end] = np.minimum(host_mem[start:end], 0.98)
    else:
        raise ValueError(f"unknown anomaly {kind!r}; known: {', '.join(ANOMALIES)}")
    return Injection(kind, start, min(end, n))


def _run(rows: Any, cfg: NodeTelemetryConfig,
         columns: Sequence[str] = COLUMNS) -> tuple[Any, dict[str, float]]:
    """Feed `rows` (`columns` of them) to a fresh detector; returns alert flags and timings."""
    rows = rows[:, [COLUMNS.index(c) for c in columns]]
    det = NodeTelemetryDetector(columns, cfg)
    alerts = np.zeros(len(rows), dtype=bool)
    fit_s = score_s = 0.0
    fits = scored = 0
    for i, row in enumerate(rows.tolist()):
        fits_before, t0 = det.fits, time.perf_counter()
        r = det.observe(i * cfg.interval_s, row)
        took = time.perf_counter() - t0
        if det.fits != fits_before:
            fit_s, fits = fit_s + took, fits + 1
        elif r.ready:
            score_s, scored = score_s + took, scored + 1
        alerts[i] = r.alert
    return alerts, {"fit_s": fit_s / max(fits, 1), "score_us": 1e6 * score_s / max(scored, 1),
                    "fits": fits}


def evaluate(clean_seeds: Sequence[int], anomaly_seeds: Sequence[int], *, days: float = 4.0,
             interval_s: float = 30.0, config: NodeTelemetryConfig | None = None,
             anomalies: Sequence[str] = ANOMALIES,
             columns: Sequence[str] = COLUMNS) -> dict[str, Any]:
    """False alarms per day after the warm-up on clean runs of `days` (one per clean seed), and
    detection and delay of each anomaly (one 2-day run per anomaly seed and kind). The
    detector sees `columns` (default all, the agent's row).

    Returns a JSON-ready dict: the budget, per-seed and mean false alarms per day, per kind
    the share detected, median delay in minutes and false alarms outside the anomaly, the mean
    fit and score times, and the process's peak RSS.
    """
    cfg = replace(config or NodeTelemetryConfig(), interval_s=interval_s)
    warm = cfg.samples(cfg.warmup_s)
    per_day = 86400 / interval_s
    fa: dict[str, float] = {}
    timings = []
    for seed in clean_seeds:
        rows, _ = simulate(seed, days, interval_s)
        alerts, timing = _run(rows, cfg, columns)
        timings.append(timing)
        fa[str(seed)] = round(float(alerts[warm:].sum()) / ((len(rows) - warm) / per_day), 3)
    detection: dict[str, Any] = {}
    for kind in anomalies:
        found, delays, outside = 0, [], 0
        for seed in anomaly_seeds:
            rows, inj = simulate(seed, 2.0, interval_s, inject=kind)
            assert inj is not None
            alerts, timing = _run(rows, cfg, columns)
            timings.append(timing)
            grace = inj.end + cfg.samples(cfg.cooldown_s)
            hits = np.flatnonzero(alerts[inj.start:grace])
            if len(hits):
                found += 1
                delays.append(float(hits[0]) * interval_s / 60)
            outside += int(alerts[warm:inj.start].sum() + alerts[grace:].sum())
        detection[kind] = {
            "detected": f"{found}/{len(anomaly_seeds)}",
            "rate": round(found / max(len(anomaly_seeds), 1), 3),
            "median_delay_min": round(float(np.median(delays)), 1) if delays else None,
            "false_alarms_outside_anomaly": outside,
        }
    mean_fa = float(np.mean(list(fa.values()))) if fa else 0.0
    lo, hi = _bootstrap_ci(list(fa.values()))
    return {
        "model": cfg.model, "interval_s": interval_s,
        "false_alarms_per_day_budget": cfg.false_alarms_per_day,
        "clean_days_per_seed": days - cfg.warmup_s / 86400,
        "false_alarms_per_day": {
            "per_seed": fa, "mean": round(mean_fa, 3),
            "ratio_to_budget": round(mean_fa / cfg.false_alarms_per_day, 3),
            "clean_days": round(len(fa) * (days - cfg.warmup_s / 86400), 2),
            "ci95_over_seeds": [round(lo, 3), round(hi, 3)]},
        "detection": detection,
        "fit_s_mean": round(float(np.mean([t["fit_s"] for t in timings])), 4),
        "score_us_per_sample": round(float(np.median([t["score_us"] for t in timings])), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _bootstrap_ci(values: Sequence[float], n: int = 10_000) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the mean over seeds (seeds resampled whole, so
    alarms that cluster within one node's days widen it); fixed randomness."""
    if not values:
        return 0.0, 0.0
    x = np.asarray(values, dtype=np.float64)
    means = x[np.random.default_rng(0).integers(0, len(x), (n, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)
