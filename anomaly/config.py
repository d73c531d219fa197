"""Settings of the anomaly area: the `[anomaly]` section of trainguard.toml.

Defaults live here and nowhere else. The streaming defaults are generic (no per-series values):
they were picked from small grids over the NAB development subset in /work/shared/data/nab, with
the last choices (``tail_decay``, ``score_scale``, ``level_alpha``, ``drift_weight``, then
``tail_start`` and ``threshold``, last the noise floor ``z_gate`` with a slower ``tail_decay``
and a smaller ``score_scale``) made on ``realAWSCloudwatch`` alone and checked on the
artificial categories; see anomaly/README.md for the protocol and the numbers. Acceptance is
on NAB categories that are not in that folder.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from trainguard.anomaly.detectors import DetectorSpec

__all__ = ["AnomalyConfig", "StreamConfig", "selected_detector"]


@dataclass(frozen=True)
class StreamConfig:
    """Parameters of one causal univariate detector (`trainguard.anomaly.StreamDetector`)."""

    warmup: int = 300  # samples before any score above 0
    tail_start: int = 30  # samples before the score normalisers learn (-1: at warmup)
    level_alpha: float = 0.03  # EW weight of the robust level
    spread_alpha: float = 0.01  # EW weight of the mean absolute deviation
    season_alpha: float = 0.1  # EW weight of a seasonal bucket when it is visited
    daily_buckets: int = 48  # time-of-day profile (30 min buckets)
    weekly_buckets: int = 168  # day-of-week x hour profile on top of the daily one
    season_gain: float = 0.7  # seasonal model used once its error is < gain * flat error
    clip: float = 3.0  # residuals clipped at clip * spread before they update the baseline
    drift_alpha: float = 0.05  # EW weight of the short-term mean of z (slow changes)
    drift_weight: float = 1.0  # weight of the drift channel in the score (0: off)
    shift_z: float = 3.0  # |z| above this, on one side ...
    shift_run: int = 12  # ... this many samples in a row: a level shift, re-baseline
    tail_quantile: float = 0.99  # with tail_decay = 0: an EW quantile of |z| normalises z
    tail_rate: float = 0.05
    log_z: bool = False
    tail_floor: float = 2.0
    tail_decay: float = 0.9995  # normalise z by its decaying max (per sample; 0: use quantile)
    score_scale: float = 0.75  # score = q^2 / (q^2 + scale^2), q = z / recent max of z
    z_gate: float = 5.0  # noise floor: q of a point is scaled by min(1, |z| / z_gate) (0: off)
    threshold: float = 0.72  # alert when score >= threshold (calibrated, see module doc)
    refractory: int = 200  # samples after an alert in which the score is damped
    refractory_damp: float = 0.5
    min_spread: float = 0.001  # relative floor of the spread (flat lines)
    range_floor: float = 0.0  # z's spread >= this share of the range seen so far (0: off)

    def validate(self) -> list[str]:
        problems = []
        for name in ("level_alpha", "spread_alpha", "season_alpha", "drift_alpha"):
            if not 0.0 < getattr(self, name) <= 1.0:
                problems.append(f"anomaly.stream.{name} must be in (0, 1]")
        if not 0.0 < self.threshold < 1.0:
            problems.append("anomaly.stream.threshold must be in (0, 1)")
        if self.z_gate < 0.0:
            problems.append("anomaly.stream.z_gate must be >= 0 (0: off)")
        if not 0.0 <= self.range_floor < 1.0:
            problems.append("anomaly.stream.range_floor must be in [0, 1) (0: off)")
        if self.tail_start < -1:
            problems.append("anomaly.stream.tail_start must be >= 0 (or -1: at warmup)")
        if self.daily_buckets < 1 or self.weekly_buckets < 0:
            problems.append("anomaly.stream.daily_buckets must be >= 1, weekly_buckets >= 0")
        return problems


@dataclass(frozen=True)
class AnomalyConfig:
    """Everything the anomaly detectors and the agent's Scorer need (flat: one TOML table)."""

    SECTION: ClassVar[str] = "anomaly"

    # streaming detector overrides (the rest of StreamConfig keeps its defaults)
    stream_threshold: float = StreamConfig.threshold
    stream_warmup: int = StreamConfig.warmup
    stream_refractory: int = StreamConfig.refractory
    # learned (IsolationForest) detectors
    target_fpr: float = 0.01
    window: int = 12  # samples per windowed feature
    n_estimators: int = 100
    max_samples: int = 256
    model_path: str = ""  # a skops model for the agent's Scorer; empty: none
    # GPU misuse
    allowed_processes: tuple[str, ...] = ("python", "python3", "torchrun", "pt_main_thread")
    miner_util_pct: float = 90.0
    miner_power_cv: float = 0.05  # coefficient of variation of power below this: steady
    miner_threshold: float = 0.88  # calibrated to 1% FPR on synthetic traces (gpu_eval)
    miner_mem_frac: float = 0.2  # memory held above this fraction of the GPU counts against
    miner_mem_churn: float = 0.02  # relative memory change per sample below this: no churn
    miner_window: int = 60  # samples of EW statistics (10 min at 10 s)
    miner_pause_window: int = 120  # samples without a utilisation pause (20 min at 10 s)
    miner_pause_weight: float = 0.15  # how much pause-free time adds to the signature
    # exfiltration
    exfil_z: float = 8.0
    exfil_min_bytes_per_s: float = 50e6
    # access
    access_max_failures_per_hour: int = 5
    access_z: float = 4.0
    work_hours: tuple[int, int] = (7, 20)  # local hours; exports outside are off-hours
    # training
    loss_z: float = 6.0
    grad_z: float = 6.0
    byzantine_ratio: float = 3.0  # norm / median norm above this is an outlier
    byzantine_cosine: float = 0.0  # cosine to the aggregate below this is an outlier
    byzantine_patience: int = 3
    # multivariate node telemetry in the agent (anomaly.node; numpy only, loaded when on)
    node_telemetry: bool = False
    node_false_alarms_per_day: float = 1.0  # the calibration target of its threshold
    node_warmup_hours: float = 24.0  # clean telemetry before its first fit
    # agent incidents
    incident_cooldown_s: float = 300.0

    def validate(self) -> list[str]:
        problems = list(self.stream_config().validate())
        if not 0.0 < self.target_fpr < 0.5:
            problems.append("anomaly.target_fpr must be in (0, 0.5)")
        if self.window < 1:
            problems.append("anomaly.window must be >= 1")
        if not 0 <= self.work_hours[0] < self.work_hours[1] <= 24:
            problems.append("anomaly.work_hours must be (start, end) with 0 <= start < end <= 24")
        if self.byzantine_patience < 1:
            problems.append("anomaly.byzantine_patience must be >= 1")
        if self.byzantine_ratio <= 1.0:
            problems.append("anomaly.byzantine_ratio must be > 1")
        if not 0.0 < self.node_false_alarms_per_day < 1e6:
            problems.append("anomaly.node_false_alarms_per_day must be > 0")
        if not 1.0 <= self.node_warmup_hours <= 24 * 14:
            problems.append("anomaly.node_warmup_hours must be in [1, 336]")
        return problems

    def stream_config(self) -> StreamConfig:
        """The streaming detector settings with this section's overrides applied."""
        return replace(
            StreamConfig(), threshold=self.stream_threshold, warmup=self.stream_warmup,
            refractory=self.stream_refractory,
        )


# The univariate detector `anomaly detect` and `anomaly eval` run, as `anomaly eval --select`
# chose it (see trainguard.anomaly.selection and the README's per-fold table): the best worst-
# fold objective among the candidates within the 5 us streaming budget (in a bank), threshold
# re-chosen on all 28 files of the shared NAB subset. Frozen here and nowhere else: the max of
# the stream detector with a resolution floor of 1 % of the range seen so far
# (`StreamConfig.range_floor`), the range breakout (`trainguard.anomaly.spatial`, tolerance
# 0.05), a recall channel, the stream without the floor that rests for 400 samples once it
# reaches 0.6 (one alert per event), and a temporal-context channel, jump novelty
# (`trainguard.anomaly.transition.JumpNovelty`: 10 bins across the probation range, jumps of
# 4 bins or more, tolerance 1, the level left must have been left twice before), reported only
# once the next 2 values stayed beyond the value the jump left (`hold`), quiet for 400 samples
# after any novel jump scoring 0.6 (held or not); alert at 0.73, no rest period on the maximum. `make_detector` runs it as
# one `FusedStreamMax`, `make_bank` as an `EnsembleBank` (both score as the plain `Ensemble`).
SELECTED_NAME = "ensemble"
SELECTED_PARAMS: tuple[tuple[str, float], ...] = ()
SELECTED_COMBINE = "max"
# (detector, settings, rest period in samples (0: none), score that starts it)
SELECTED_MEMBERS: tuple[tuple[str, tuple[tuple[str, float], ...], int, float], ...] = (
    ("stream", (("range_floor", 0.01),), 0, 0.7),
    ("spatial", (("tolerance", 0.05),), 0, 0.7),
    ("stream", (), 400, 0.6),
    ("jump", (("bins", 10), ("min_jump", 4), ("tolerance", 1.0), ("min_count", 2), ("hold", 2),
              ("quiet", 400), ("quiet_at", 0.6)), 0, 0.7),
)
SELECTED_THRESHOLD = 0.73
SELECTED_REST = 0  # samples reported as 0 after a score >= SELECTED_REST_AT (0: no rest period)
SELECTED_REST_AT = 0.7


def selected_detector() -> DetectorSpec:
    """The frozen default as a `DetectorSpec` (built lazily: the registry imports this module)."""
    from trainguard.anomaly.detectors import DetectorSpec

    members = tuple(DetectorSpec(name, SELECTED_THRESHOLD, params, rest=rest, rest_at=at)
                    for name, params, rest, at in SELECTED_MEMBERS)
    return DetectorSpec(
        SELECTED_NAME, SELECTED_THRESHOLD, SELECTED_PARAMS, members=members,
        combine=SELECTED_COMBINE, rest=SELECTED_REST, rest_at=SELECTED_REST_AT,
        label="selected: max(stream range floor 0.01, spatial 0.05, stream rest 400 @ 0.6, "
              "jump 10/4/1.0 hold 2 quiet 400 @ 0.6)")
