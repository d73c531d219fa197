"""DDP communication hooks that aggregate gradients with a robust rule, optionally compressed.

`mean` is the plain asynchronous all-reduce (what DDP does by default). The robust rules
all-gather the bucket from every rank (gloo supports all_gather), stack the rows in rank order and
apply a rule from `trainguard.trainer.robust`, so every rank computes the same aggregate. The
hook also accumulates per-rank update statistics for the Byzantine-rank monitor: the squared
norm of each rank's update and its dot product with the aggregate. With the robust rules these
come from the gathered rows (every rank sees every row); with `mean` each rank reports its own,
which a Byzantine rank could falsify; the robust rules are the defence, the statistics evidence.

Every tensor handed to a collective lives on the bucket's device (the process group's device:
CUDA under NCCL, CPU under gloo). Compression (`aggregation.compress`): ``bf16`` sends every
row (all-reduce or all-gather) as bfloat16 and aggregates in the gradient's dtype, halving the
bytes of every rule; ``powersgd`` runs torch's own PowerSGD hook (its state keeps the error
feedback) and is refused at config load for anything but ``mean``. A rank flagged as Byzantine
is excluded from the aggregate under every rule (the mean then becomes a gathered mean).
`HookState.bytes_sent` counts the payload bytes this rank hands to collectives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from trainguard.trainer.config import Aggregation, AggregationSection, Compress
from trainguard.trainer.robust import centered_clip, coordinate_median, krum, trimmed_mean
from trainguard.trainer.testing.simulate import AttackPlan

__all__ = ["HookState", "StepStats", "aggregate_rows", "make_hook", "robust_hook"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepStats:
    """Per-rank update statistics of one step (index = rank): norm / median norm, and
    the cosine to the aggregate that was applied."""

    norm_ratio: list[float]
    cosine: list[float]
    agg_norm: float


@dataclass
class HookState:
    """Mutable per-job state of the hook; the worker sets `step` before each backward."""

    cfg: AggregationSection
    rank: int
    world_size: int
    group: Any = None
    attack: AttackPlan | None = None
    step: int = 0
    observe: bool = True
    excluded: set[int] = field(default_factory=set)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    bytes_sent: int = 0
    powersgd: Any = None  # torch's PowerSGDState when compress = powersgd
    gathered: bool = False  # every rank records every row (HSDP's robust replicate group)
    _norm2: torch.Tensor | None = None
    _dot: torch.Tensor | None = None
    _agg2: float = 0.0
    _momenta: dict[int, torch.Tensor] = field(default_factory=dict)  # id(param) -> slice
    _centers: dict[int, torch.Tensor] = field(default_factory=dict)

    def begin_step(self, step: int, observe: bool) -> None:
        self.step = step
        self.observe = observe
        self._norm2 = torch.zeros(self.world_size, dtype=torch.float64, device=self.device)
        self._dot = torch.zeros(self.world_size, dtype=torch.float64, device=self.device)
        self._agg2 = 0.0

    def _record_rows(self, rows: torch.Tensor, agg: torch.Tensor) -> None:
        if not self.observe or self._norm2 is None or self._dot is None:
            return
        # float32 products: the flags need a few digits, not a float64 copy of every row
        self._norm2 += torch.linalg.vector_norm(rows, dim=1).to(torch.float64) ** 2
        self._dot += (rows.float() @ agg.float()).to(torch.float64)
        self._agg2 += float(agg.float() @ agg.float())

    def _record_own(self, own: torch.Tensor, agg: torch.Tensor) -> None:
        if not self.observe or self._norm2 is None or self._dot is None:
            return
        own, agg = own.float(), agg.float()
        self._norm2[self.rank] += float(own @ own)
        self._dot[self.rank] += float(own @ agg)
        self._agg2 += float(agg @ agg)

    def finish_step(self) -> StepStats | None:
        """Collect the step's statistics (one small all-reduce for `mean`); None if unobserved."""
        if not self.observe or self._norm2 is None or self._dot is None:
            return None
        norm2, dot = self._norm2, self._dot
        if _uses_all_reduce(self):
            packed = torch.stack([norm2, dot])
            dist.all_reduce(packed, group=self.group)
            norm2, dot = packed[0], packed[1]
        agg = max(self._agg2, 1e-30) ** 0.5
        norms = torch.sqrt(norm2).cpu()
        dot = dot.cpu()
        median = float(norms.quantile(0.5))
        ratio = (norms / median if median > 0 else torch.ones_like(norms)).tolist()
        cosine = (dot / torch.clamp(norms * agg, min=1e-30)).tolist()
        if _uses_all_reduce(self):
            # The mean can be dragged by the attacker, so a cosine to it says nothing about who
            # is honest: report it as unknown and let the norm test alone flag ranks.
            cosine = [float("nan")] * self.world_size
        return StepStats(norm_ratio=ratio, cosine=cosine, agg_norm=agg)


def _uses_all_reduce(state: HookState) -> bool:
    return (
        not state.gathered
        and state.cfg.method is Aggregation.MEAN
        and not state.excluded
        and not (state.attack and state.attack.omniscient)
    )


def _load(store: dict[int, torch.Tensor], bucket: dist.GradBucket) -> torch.Tensor | None:
    """Per-parameter state laid out in this bucket's order. DDP rebuilds (reorders) its
    buckets after the first step, so state is kept per parameter, never per bucket."""
    parts = [store.get(id(p)) for p in bucket.parameters()]
    if any(x is None for x in parts):
        return None
    return torch.cat(parts)  # type: ignore[arg-type]


def _save(store: dict[int, torch.Tensor], bucket: dist.GradBucket, flat: torch.Tensor) -> None:
    offset = 0
    for p in bucket.parameters():
        store[id(p)] = flat[offset : offset + p.numel()].clone()
        offset += p.numel()


def _wire_dtype(state: HookState, dtype: torch.dtype) -> torch.dtype:
    return torch.bfloat16 if state.cfg.compress is Compress.BF16 else dtype


def _gather(buf: torch.Tensor, state: HookState) -> torch.Tensor:
    """All rows in rank order, gathered straight into one (n, d) tensor on the bucket's
    device (bfloat16 on the wire with compress = bf16); NaN becomes 0."""
    wire = _wire_dtype(state, buf.dtype)
    stacked = torch.empty((state.world_size, buf.numel()), dtype=wire, device=buf.device)
    dist.all_gather(list(stacked.unbind(0)), buf.to(wire), group=state.group)
    state.bytes_sent += buf.numel() * stacked.element_size()
    return stacked.to(buf.dtype).nan_to_num_(nan=0.0)


def aggregate_rows(
    rows: torch.Tensor,
    cfg: AggregationSection,
    center: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply the configured rule to (n, d) rows. `center` is the previous aggregate (CC)."""
    method = cfg.method
    if method is Aggregation.MEAN:
        return rows.mean(dim=0)
    if method is Aggregation.MEDIAN:
        return coordinate_median(rows)
    if method is Aggregation.TRIMMED_MEAN:
        return trimmed_mean(rows, cfg.trim)
    if method is Aggregation.CENTERED_CLIP:
        finite = torch.where(torch.isfinite(rows), rows, torch.zeros_like(rows))
        c = center if center is not None else torch.zeros_like(rows[0])
        return centered_clip(finite, c, cfg.clip_tau, cfg.clip_iters)
    if method is Aggregation.KRUM:
        finite = torch.where(torch.isfinite(rows), rows, torch.zeros_like(rows))
        f = min(cfg.krum_f, max(0, (rows.shape[0] - 3) // 2))
        return krum(finite, f, min(cfg.krum_m, rows.shape[0] - f))[0]
    raise ValueError(f"unknown aggregation {method}")


def _prepare(state: HookState, bucket: dist.GradBucket) -> torch.Tensor:
    """The update this rank sends: worker momentum (centered clipping), then any simulated attack."""
    buf = bucket.buffer()
    if state.cfg.method is Aggregation.CENTERED_CLIP and state.cfg.momentum > 0:
        m = _load(state._momenta, bucket)
        beta = state.cfg.momentum
        m = buf.clone() if m is None else m.mul_(beta).add_(buf, alpha=1 - beta)
        _save(state._momenta, bucket, m)
        buf.copy_(m)
    plan = state.attack
    if plan is not None and plan.step_active(state):
        if plan.omniscient:
            true_rows = _gather(buf, state)  # the attacker sees the honest updates first
            if state.rank in plan.ranks:
                buf.copy_(plan.omniscient_row(true_rows))
        elif state.rank in plan.ranks:
            buf.copy_(plan.local(buf))
    return buf


def robust_hook(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """The DDP comm hook: register with `ddp.register_comm_hook(state, robust_hook)`."""
    buf = _prepare(state, bucket)
    if _uses_all_reduce(state):
        own = buf.clone() if state.observe else None
        if state.powersgd is not None:
            return _powersgd(state, bucket, own)
        wire = buf.div_(state.world_size).to(_wire_dtype(state, buf.dtype))
        state.bytes_sent += wire.numel() * wire.element_size()
        fut = dist.all_reduce(wire, group=state.group, async_op=True).get_future()

        def _done(f: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
            agg = f.value()[0]
            if agg.dtype != buf.dtype:
                agg = buf.copy_(agg)
            if own is not None:
                state._record_own(own, agg)
            return agg

        return fut.then(_done)
    rows = _gather(buf, state)
    keep = [i for i in range(state.world_size) if i not in state.excluded]
    kept = rows[keep] if len(keep) < state.world_size else rows
    agg = aggregate_rows(kept, state.cfg, _load(state._centers, bucket))
    if state.cfg.method is Aggregation.CENTERED_CLIP:
        _save(state._centers, bucket, agg)
    state._record_rows(rows, agg)
    if agg.storage_offset() or not agg.is_contiguous():
        agg = agg.clone()  # DDP reads the result from the start of its storage
    out: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    out.set_result(agg)
    return out


def _powersgd(
    state: HookState, bucket: dist.GradBucket, own: torch.Tensor | None
) -> torch.futures.Future[torch.Tensor]:
    """torch's PowerSGD hook (error feedback in its state); counts the bytes it sends."""
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

    ps = state.powersgd
    warm = ps.iter < ps.start_powerSGD_iter
    fut = psgd.powerSGD_hook(ps, bucket)
    state.bytes_sent += _powersgd_bytes(ps, bucket, warm)

    def _done(f: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
        agg = f.value()
        if own is not None:
            state._record_own(own, agg)
        return agg

    return fut.then(_done)


def _powersgd_bytes(ps: Any, bucket: dist.GradBucket, warm: bool) -> int:
    """Payload of one PowerSGD bucket: the uncompressed tensors plus P and Q (torch's rule:
    a matrix is compressed when n*m > min_compression_rate * (n + m) * rank)."""
    size = bucket.buffer().element_size()
    if warm:
        return bucket.buffer().numel() * size
    total = 0
    for g in bucket.gradients():
        if g.ndim <= 1:
            total += g.numel()
            continue
        n, m = g.shape[0], g.numel() // g.shape[0]
        r = min(n, m, ps.matrix_approximation_rank)
        if n * m > ps.min_compression_rate * (n + m) * r:
            total += (n + m) * r
        else:
            total += g.numel()
    return total * size


def make_hook(model: torch.nn.Module, state: HookState) -> None:
    """Register the aggregation hook on a DDP `model` (PowerSGD state when configured)."""
    if state.cfg.compress is Compress.POWERSGD:
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

        state.powersgd = psgd.PowerSGDState(
            process_group=state.group,
            matrix_approximation_rank=state.cfg.powersgd_rank,
            start_powerSGD_iter=max(2, state.cfg.powersgd_start),
            use_error_feedback=True,
            warm_start=True,
        )
    model.register_comm_hook(state, robust_hook)  # type: ignore[operator]


# DDP inspects the hook's annotations at registration; postponed (string) annotations fail its check.
robust_hook.__annotations__ = {
    "state": HookState,
    "bucket": dist.GradBucket,
    "return": torch.futures.Future[torch.Tensor],
}
