"""The comm hook and the membership round across real gloo processes (3 ranks, FileStore)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from support.dist_group import spawn

WORLD = 3


def _init(rank: int, store_path: str) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, WORLD)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))


def _hook_worker(rank: int, store_path: str, out_dir: str, method: str, byz: bool,
                 exclude: bool = False, compress: str = "none") -> None:
    from torch.nn.parallel import DistributedDataParallel
    from trainguard.trainer.aggregation import HookState, robust_hook
    from trainguard.trainer.config import Aggregation, AggregationSection, Attack, SimulateSection
    from trainguard.trainer.testing.simulate import AttackPlan

    _init(rank, store_path)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
        ddp = DistributedDataParallel(model)
        attack = AttackPlan.from_config(SimulateSection(byzantine_ranks=[2], attack=Attack.SIGN_FLIP)) if byz else None
        from trainguard.trainer.config import Compress

        state = HookState(AggregationSection(method=Aggregation(method), momentum=0.0,
                                             compress=Compress(compress)),
                          rank=rank, world_size=WORLD, attack=attack)
        if exclude:
            state.excluded.add(2)
        ddp.register_comm_hook(state, robust_hook)
        x, y = _data(rank)
        for step in range(2):  # step 2 runs on DDP's rebuilt buckets
            state.begin_step(step, True)
            model.zero_grad()
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
            stats = state.finish_step()
        torch.save({"grads": [p.grad.clone() for p in model.parameters()], "cosine": stats.cosine,
                    "bytes": state.bytes_sent},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    # One shared task plus a little rank noise, so honest gradients point the same way.
    g = torch.Generator().manual_seed(100)
    x, y = torch.randn(16, 5, generator=g), torch.randint(3, (16,), generator=g)
    return x + 0.05 * torch.randn(16, 5, generator=torch.Generator().manual_seed(rank)), y


def _local_grads(rank: int) -> torch.Tensor:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    x, y = _data(rank)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _spawn(fn, tmp_path: Path, *args) -> None:
    store = str(tmp_path / "store")
    spawn(fn, (store, str(tmp_path), *args), WORLD)


@pytest.mark.parametrize("method", ["median", "centered-clip"])
def test_hook_gives_every_rank_the_same_aggregate_of_the_true_rows(tmp_path: Path, method: str) -> None:
    from trainguard.trainer.aggregation import aggregate_rows
    from trainguard.trainer.config import Aggregation, AggregationSection

    _spawn(_hook_worker, tmp_path, method, False)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    flat = [torch.cat([g.flatten() for g in r["grads"]]) for r in results]
    assert all(torch.equal(flat[0], f) for f in flat[1:])  # bit-identical on every rank
    # DDP packs a bucket in reverse parameter order; one bucket holds this whole model.
    rows = torch.stack([_local_grads(r) for r in range(WORLD)])
    cfg = AggregationSection(method=Aggregation(method), momentum=0.0)
    expected = aggregate_rows(rows, cfg)
    if method == "centered-clip":  # the second step clips around the first step's aggregate
        expected = aggregate_rows(rows, cfg, center=expected)
    assert torch.allclose(flat[0], expected, atol=1e-6)


def test_sign_flipping_rank_is_outvoted_by_the_median_and_shows_in_its_cosine(tmp_path: Path) -> None:
    _spawn(_hook_worker, tmp_path, "median", True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    cos = results[0]["cosine"]
    assert cos[2] < 0 < min(cos[0], cos[1])
    assert results[1]["cosine"] == cos  # every rank sees the same statistics


def _membership_worker(rank: int, store_path: str, out_dir: str, rogue: int) -> None:
    from trainguard.trainer.errors import MembershipError
    from trainguard.trainer.membership import prove_membership

    _init(rank, store_path)
    try:
        key = os.urandom(32) if rank == rogue else b"k" * 32
        try:
            prove_membership(key, "job-1")
            outcome = "ok"
        except MembershipError as exc:
            outcome = exc.message
        Path(out_dir, f"m{rank}.txt").write_text(outcome)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("rogue", [-1, 1])
def test_membership_round_passes_only_when_every_rank_knows_the_key(tmp_path: Path, rogue: int) -> None:
    _spawn(_membership_worker, tmp_path, rogue)
    outcomes = [Path(tmp_path, f"m{r}.txt").read_text() for r in range(WORLD)]
    if rogue < 0:
        assert outcomes == ["ok"] * WORLD
    else:
        honest = [o for r, o in enumerate(outcomes) if r != rogue]
        assert all(f"[{rogue}]" in o for o in honest), outcomes


def _consistency_worker(rank: int, store_path: str, out_dir: str, odd_rank: int) -> None:
    from trainguard.trainer.consistency import check_replicas
    from trainguard.trainer.errors import ReplicaDivergence

    _init(rank, store_path)
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        if rank == odd_rank:
            with torch.no_grad():
                model.bias[0] += 1e-7  # one ulp-scale difference is enough
        try:
            outcome = "agreed:" + check_replicas(model)[:8]
        except ReplicaDivergence as exc:
            outcome = "diverged:" + exc.message
        Path(out_dir, f"c{rank}.txt").write_text(outcome)
    finally:
        dist.destroy_process_group()


def test_replica_divergence_is_seen_by_every_rank(tmp_path: Path) -> None:
    _spawn(_consistency_worker, tmp_path, 1)
    outcomes = [Path(tmp_path, f"c{r}.txt").read_text() for r in range(WORLD)]
    assert all(o.startswith("diverged:") and "[1]" in o for o in outcomes), outcomes


def test_excluded_rank_no_longer_moves_the_mean(tmp_path: Path) -> None:
    _spawn(_hook_worker, tmp_path, "mean", True, True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    flat = torch.cat([g.flatten() for g in results[0]["grads"]])
    honest = torch.stack([_local_grads(0), _local_grads(1)]).mean(dim=0)
    assert torch.allclose(flat, honest, atol=1e-6)  # the sign-flipping rank 2 is ignored


@pytest.mark.parametrize("method", ["mean", "median"])
def test_bf16_compression_halves_the_bytes_and_keeps_the_aggregate(tmp_path: Path, method: str) -> None:
    from trainguard.trainer.aggregation import aggregate_rows
    from trainguard.trainer.config import Aggregation, AggregationSection

    full, half = tmp_path / "full", tmp_path / "half"
    full.mkdir()
    half.mkdir()
    _spawn(_hook_worker, full, method, False, False, "none")
    _spawn(_hook_worker, half, method, False, False, "bf16")
    f = torch.load(full / "rank0.pt", weights_only=True)
    h = torch.load(half / "rank0.pt", weights_only=True)
    assert h["bytes"] * 2 == f["bytes"] > 0
    flat_h = torch.cat([g.flatten() for g in h["grads"]])
    expected = aggregate_rows(torch.stack([_local_grads(r) for r in range(WORLD)]),
                              AggregationSection(method=Aggregation(method)))
    assert flat_h.dtype == torch.float32
    assert torch.allclose(flat_h, expected, rtol=2e-2, atol=2e-3)  # bfloat16 keeps ~3 digits
