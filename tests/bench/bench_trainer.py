"""Trainer benchmarks; prints one JSON object. Ratios against baselines measured in the same run.

1. Throughput: the same training script (tests/bench/_plain_ddp.py: a ~1.06M-parameter MLP,
   AdamW, bf16 autocast, gradient clipping, batch 32, 300 steps, a checkpoint every 100) on 2
   gloo ranks, plain torchrun + DDP vs protected by `Guard` and launched by the trainer's
   launcher (membership, mean through the comm hook, telemetry every 10 steps, replica hash
   every 50, sealed + signed checkpoints through the launcher's key process). Training loop only
   (process start, imports, membership excluded), best of 3 interleaved rounds. Target >= 0.95.
2. Checkpoint save: `CheckpointStore.save` through the key process (data key and signature
   over its unix socket, sealing, hashing) vs plain `torch.save` of the same ~64 MB state to
   the same folder, best of 9 interleaved (and the ratio of medians, and CPU seconds of each,
   which load on a shared machine does not change). Target <= 1.2x.
3. Compression: the plain example (trainer/examples/digits_plain.py, 2 ranks, 3 epochs) with
   aggregation.compress = none | bf16 | powersgd under mean, and bf16 under median: payload
   bytes per step handed to collectives by rank 0, and test accuracy.
4. (--robustness) Robustness ordering (Karimireddy, He, Jaggi 2021) at small scale on CPU: 11
   simulated workers on digits, 4 Byzantine, ALIE and IPM, every rule with worker momentum 0.9,
   in one process with the trainer's own aggregation and attack code.

    .venv/bin/python tests/bench/bench_trainer.py [--quick] [--robustness] [--only throughput,checkpoint_save,compression]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

STEPS, BATCH = 300, 32
SCRIPT = REPO / "tests" / "bench" / "_plain_ddp.py"


def plain(tmp: Path) -> float:
    out = tmp / f"plain-{time.monotonic_ns()}.json"
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(SCRIPT), str(out), str(STEPS), str(BATCH)],
        check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return STEPS / json.loads(out.read_text())["train_seconds"]


def guarded(home, tmp: Path) -> float:
    from support.trainer_jobs import run_job

    out = tmp / f"guarded-{time.monotonic_ns()}.json"
    result, _ = run_job(home, ["telemetry.every=10", "consistency.every=50"], script=SCRIPT,
                        script_args=[str(out), str(STEPS), str(BATCH), "--guard"],
                        checkpoint_dir=tmp / f"ck-{time.monotonic_ns()}", nproc=2, max_restarts=0)
    assert result["status"] == "completed", result
    return STEPS / json.loads(out.read_text())["train_seconds"]


def throughput(home, tmp: Path, rounds: int) -> dict[str, object]:
    from trainguard.trainer.models import mlp

    base, prot = [], []
    for _ in range(rounds):  # interleaved, best of N: other jobs share the 2 cores
        base.append(plain(tmp))
        prot.append(guarded(home, tmp))
    return {
        "parameters": sum(p.numel() for p in mlp(512, 800, 10, 2).parameters()),
        "plain_steps_per_s": round(max(base), 2),
        "guarded_steps_per_s": round(max(prot), 2),
        "guarded_vs_plain_ratio": round(max(prot) / max(base), 3),
        "all_rounds": {"plain": [round(x, 2) for x in base], "guarded": [round(x, 2) for x in prot]},
        "target": ">= 0.95",
    }


def checkpoint_save(home, tmp: Path, rounds: int) -> dict[str, object]:
    import resource
    import statistics

    from trainguard.trainer.checkpoint import CheckpointStore
    from trainguard.trainer.keys import KeyClient
    from trainguard.trainer.launcher import KeyProcess, trust_for
    from trainguard.trainer.rundir import RunDir

    def cpu() -> float:  # this process, all threads (the key process is separate and idle)
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    torch.manual_seed(0)
    state = {"step": 1, "state": {f"layer{i}.weight": torch.randn(1024, 1024) for i in range(16)}}
    size = sum(t.numel() * t.element_size() for t in state["state"].values())
    run = RunDir(tmp / "run")
    run.root.mkdir(mode=0o700)
    proc = KeyProcess(home, run)
    keys = KeyClient(proc.socket)
    try:
        # keep=1: every save also deletes the previous checkpoint (retention, as a job with
        # `keep` does once it has `keep` checkpoints); keep=huge: the save alone
        store = CheckpointStore(tmp / "ck-save", keys, trust_for(home), keep=1)
        alone = CheckpointStore(tmp / "ck-alone", keys, trust_for(home), keep=1 << 30)
        times: dict[str, list[float]] = {k: [] for k in ("fresh", "overwrite", "guard", "alone")}
        cpus: dict[str, list[float]] = {k: [] for k in times}

        def timed(name: str, fn) -> None:  # type: ignore[no-untyped-def]
            c0, t0 = cpu(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpus[name].append(cpu() - c0)

        for i in range(rounds):  # interleaved, round after round
            state["step"] = 1 + i
            fresh = tmp / f"plain-{i}.pt"
            timed("fresh", lambda: torch.save(state, fresh))  # a new file, like step-N.pt
            fresh.unlink()  # outside the clock: the baseline deletes nothing
            timed("overwrite", lambda: torch.save(state, tmp / "plain.pt"))  # truncates the last
            timed("guard", lambda: store.save(state, 1 + i))
            timed("alone", lambda: alone.save(state, 1 + i))
        t0 = time.perf_counter()
        store.load(store.path_for(rounds))
        load_s = time.perf_counter() - t0
    finally:
        keys.close()
        proc.close()
    med = statistics.median
    m = {k: med(v) for k, v in times.items()}
    return {
        "state_mb": round(size / 2**20, 1),
        "rounds": rounds,
        "median_s": {k: round(v, 4) for k, v in m.items()},
        # the target: guard.save (with retention) vs torch.save into a new file
        "save_ratio": round(m["guard"] / m["fresh"], 3),
        "save_alone_ratio": round(m["alone"] / m["fresh"], 3),  # no old checkpoint deleted
        "save_ratio_vs_overwrite": round(m["guard"] / m["overwrite"], 3),
        "save_ratio_best_of": round(min(times["guard"]) / min(times["fresh"]), 3),
        "cpu_s_median": {k: round(med(v), 4) for k, v in cpus.items()},
        "verified_load_s": round(load_s, 4),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "target": "<= 1.2",
    }


def compression(home, tmp: Path, epochs: int) -> dict[str, object]:
    from support.trainer_jobs import EXAMPLES, run_job

    rows = {}
    for method, compress in (("mean", "none"), ("mean", "bf16"), ("mean", "powersgd"),
                             ("median", "none"), ("median", "bf16")):
        result, _ = run_job(home, [f'aggregation.method="{method}"', f'aggregation.compress="{compress}"',
                                   "aggregation.powersgd_start=10"],
                            script=EXAMPLES / "digits_plain.py", nproc=2, max_restarts=0,
                            script_args=["--epochs", str(epochs), "--checkpoint-every", "1000"],
                            checkpoint_dir=tmp / f"ck-{method}-{compress}")
        assert result["status"] == "completed", result
        rows[f"{method}/{compress}"] = {
            "bytes_per_step": round(result["aggregation"]["bytes_sent_rank0"] / result["steps"]),
            "accuracy": round(result["final_accuracy"], 4),
        }
    base = rows["mean/none"]["bytes_per_step"]
    for row in rows.values():
        row["bytes_vs_uncompressed_mean"] = round(row["bytes_per_step"] / base, 3)
    return {"setup": f"digits_plain.py (small CNN), 2 ranks, {epochs} epochs; payload bytes "
                     "handed to collectives by rank 0 per step", "runs": rows}


def simulate(method: str, attack: str | None, *, n: int = 11, f: int = 4, steps: int = 200,
             batch: int = 16, lr: float = 0.5, beta: float = 0.9, seed: int = 0) -> float:
    """n workers in one process; Byzantine rows replaced with the trainer's attack code."""
    from trainguard.trainer.aggregation import aggregate_rows
    from trainguard.trainer.config import Aggregation, AggregationSection, Attack, SimulateSection
    from trainguard.trainer.models import digits_mlp, load_dataset
    from trainguard.trainer.testing.simulate import AttackPlan

    data = load_dataset("digits", 0.25)
    torch.manual_seed(seed)
    model = digits_mlp()
    params = list(model.parameters())
    cfg = AggregationSection(method=Aggregation(method), trim=f, krum_f=f, clip_tau=0.2)
    plan = AttackPlan.from_config(SimulateSection(byzantine_ranks=list(range(n - f, n)),
                                                  attack=Attack(attack))) if attack else None
    shards = [torch.arange(len(data.y_train))[r::n] for r in range(n)]
    momenta: list[torch.Tensor | None] = [None] * n
    center = None
    for step in range(steps):
        rows = []
        for r in range(n):
            g = torch.Generator().manual_seed(seed * 1_000_003 + r * 7919 + step)
            idx = shards[r][torch.randint(len(shards[r]), (batch,), generator=g)]
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
            v = torch.cat([p.grad.flatten() for p in params])
            m = momenta[r]
            momenta[r] = v.clone() if m is None else m.mul_(beta).add_(v, alpha=1 - beta)
            rows.append(momenta[r].clone())
        stacked = torch.stack(rows)
        if plan is not None:
            bad = plan.omniscient_row(stacked) if plan.omniscient else None
            for b in plan.ranks:
                stacked[b] = bad if bad is not None else plan.local(stacked[b])
        agg = aggregate_rows(stacked, cfg, center)
        center = agg.clone()
        with torch.no_grad():
            off = 0
            for p in params:
                p -= lr * agg[off:off + p.numel()].view_as(p)
                off += p.numel()
    with torch.no_grad():
        return float((model(data.x_test).argmax(1) == data.y_test).float().mean())


def robustness(steps: int) -> dict[str, object]:
    methods = ["mean", "median", "trimmed-mean", "centered-clip", "krum"]
    table = {a or "none": {m: round(simulate(m, a, steps=steps), 4) for m in methods}
             for a in (None, "alie", "ipm")}
    return {
        "setup": f"digits MLP, 11 workers (4 Byzantine), {steps} steps, batch 16, worker momentum 0.9",
        "accuracy": table,
        "centered_clip_beats_median": {a: table[a]["centered-clip"] > table[a]["median"]
                                       for a in ("alie", "ipm")},
        "paper_anchor": "CIFAR-10, 25 workers: CC 86.6% (ALIE) / 89.1% (IPM); CM ~50%",
    }


def main() -> None:
    from support import make_home

    torch.set_num_threads(1)
    quick = "--quick" in sys.argv
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        home = make_home(tmp / "home")
        sections = {
            "throughput": lambda: throughput(home, tmp, 1 if quick else 3),
            "checkpoint_save": lambda: checkpoint_save(home, tmp, 5 if quick else 21),
            "compression": lambda: compression(home, tmp, 3),
        }
        only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else list(sections)
        out: dict[str, object] = {}
        for name in only:
            out[name] = sections[name]()
            print(json.dumps({name: out[name]}), file=sys.stderr, flush=True)  # progress
    if "--robustness" in sys.argv:
        out["robustness"] = robustness(80 if quick else 150)
    out["bench_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
