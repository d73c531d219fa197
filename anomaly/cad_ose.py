"""CAD-OSE: the Contextual Anomaly Detector, open-source edition, as a causal stream detector.

Source: M. Smirnov, "Contextual Anomaly Detector - Open Source Edition" (2016,
https://github.com/smirmik/CAD), as run by the Numenta Anomaly Benchmark
(numenta/NAB, ``nab/detectors/context_ose/cad_ose.py`` and ``context_operator.py``; winner of
NAB's 2016 detector competition). This is a re-implementation of that algorithm for Python 3,
written from the reference code's behaviour (the same facts, semi-contexts, crossing rules and
score), with three deliberate changes, each needed for a streaming security agent:

* **Causal value range.** NAB hands the detector the minimum and maximum of the *whole* file
  (a look into the future). Here the range is that of the probation samples (widened by
  ``margin`` of its span on each side); they are buffered, then replayed once into the model, so
  the first scored sample sees the same trained state NAB's would at that point. Later values
  outside the range are clipped to the end bins. ``headroom`` widens the top (utilisation,
  traffic and latency metrics break out upwards far more often than downwards).
* **Bounded memory.** The reference grows its context memory without limit. Here no new
  context is stored once ``max_contexts`` exist (the model keeps predicting with what it has),
  and the rest-period history is a ring of ``rest`` scores.
* **Deterministic tie-break.** Active contexts are ordered by (hits, left hash, right hash) as
  in the reference; Python 3 hashes of int tuples are stable across runs.

How it scores: each value is quantised to ``bits`` bits; every bit position and value is a
*fact*. A *context* pairs a left semi-context (the previous step's facts plus the ids of the
contexts that fired then, "neurons") with a right one (the facts that followed). Each step the
model (1) measures how much of the current input was *not* predicted by the contexts that fired
on the previous step (prediction error), (2) crosses the current facts with stored contexts to
find active ones and to propose new contexts, (3) predicts the next facts. The raw score is
``(1 - share of selected contexts that fully matched + share of proposed contexts that were
new) / 2`` when the prediction error is non-zero, else 0; it is reported only when no raw score
in the last ``rest`` samples reached ``base_threshold`` (one alert per event). A NaN or
infinite value is neither scored nor learned (it counts towards the probation length, as in
the other detectors; the reference raised on it).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

__all__ = ["CadOse", "CadOseConfig"]

_SENSOR = 65536  # facts 65536 + 2 * bit_position + bit_value, as in the reference
_NEURON = 2 ** 31  # facts 2^31 + context id: the contexts that fired last step


@dataclass(frozen=True)
class CadOseConfig:
    """Settings of `CadOse`; the reference's values, except the bounds it does not have."""

    base_threshold: float = 0.75  # a raw score this high starts a rest period
    rest_fraction: float = 0.2  # rest period = this x probation (NAB: probation / 5)
    max_left_len: int = 7  # longest left semi-context crossed into a new context
    max_active: int = 15  # contexts that become "neurons" for the next step
    bits: int = 3  # value resolution: 2^bits levels
    margin: float = 0.0  # widen the probation range by this share of its span, each side
    headroom: float = 0.0  # and the top by this share more (metrics mostly break out upwards)
    max_contexts: int = 50_000  # memory bound: no new context is stored past this


def _py2_hash(facts: tuple[int, ...]) -> int:
    """CPython 2's hash of a tuple of small ints (64-bit), which the reference ran under.

    It only orders ties between equally active contexts, but the choice of "neurons" feeds
    back into every later step, so the reference's scores are reproduced only with its hash.
    """
    mask = (1 << 64) - 1
    x, mult, n = 0x345678, 1000003, len(facts)
    for y in facts:
        n -= 1
        x = ((x ^ (y if y != -1 else -2)) * mult) & mask
        mult = (mult + 82520 + n + n) & mask
    x = (x + 97531) & mask
    if x >= 1 << 63:
        x -= 1 << 64
    return -2 if x == -1 else x


class _Memory:
    """The context memory (the reference's ContextOperator), left and right halves."""

    __slots__ = ("facts", "semi_ids", "semi_vals", "crossed", "contexts", "new_id", "max_left",
                 "max_contexts")

    def __init__(self, max_left: int, max_contexts: int) -> None:
        self.max_left, self.max_contexts = max_left, max_contexts
        self.facts: list[dict[int, list[list]]] = [{}, {}]  # fact -> semi-contexts holding it
        self.semi_ids: list[dict[int, int]] = [{}, {}]  # hash(facts) -> semi-context id
        # semi-context: [matched facts now, length, number matched, {right id: context id}]
        self.semi_vals: list[list[list]] = [[], []]
        self.crossed: list[list[list]] = [[], []]
        # context: [times selected, facts predicted right, times fully active, right facts,
        #           zero-level flag, left hash, right hash]
        self.contexts: list[list] = []
        # id of the zero-level context stored this step, skipped when updating. The reference
        # resets it to False, which equals 0, so context 0 is skipped on ordinary steps too;
        # kept, so scores match the reference's.
        self.new_id = 0

    def _semi(self, side: int, facts: tuple[int, ...]) -> tuple[int, int]:
        h = _py2_hash(facts)
        ids = self.semi_ids[side]
        sid = ids.get(h)
        if sid is None:
            sid = ids[h] = len(ids)
            val: list = [[], len(facts), 0, {}] if side == 0 else [[], len(facts), 0]
            self.semi_vals[side].append(val)
            for f in facts:
                self.facts[side].setdefault(f, []).append(val)
        return h, sid

    def add(self, pairs: list[tuple[tuple[int, ...], tuple[int, ...]]], zero: bool) -> int:
        """Store contexts not seen yet; with ``zero``, return 1 if the one pair was new."""
        added = 0
        for left, right in pairs:
            if len(self.contexts) >= self.max_contexts:
                return added
            lh, lid = self._semi(0, left)
            rh, rid = self._semi(1, right)
            links = self.semi_vals[0][lid][3]
            cid = links.get(rid)
            if cid is None:
                cid = links[rid] = len(self.contexts)
                added += 1
                self.contexts.append([0, 0, 0, right, zero, lh, rh])
                if zero:
                    self.new_id = cid
                    return 1
            elif zero:
                self.contexts[cid][4] = True
                return 0
        return added

    def _cross(self, side: int, facts: tuple[int, ...]) -> list[list]:
        for val in self.crossed[side]:
            val[0] = []
            val[2] = 0
        index = self.facts[side]
        for f in facts:
            for val in index.get(f, ()):
                val[0].append(f)
        crossed = []
        for val in self.semi_vals[side]:
            k = val[2] = len(val[0])
            if k:
                crossed.append(val)
        self.crossed[side] = crossed
        return crossed

    def activate(self, facts: tuple[int, ...], new_flag: bool) -> tuple[list, int, list]:
        """Cross the input with right halves: active contexts, number selected, proposals."""
        self._cross(1, facts)
        active, selected, proposals = [], 0, []
        right_vals = self.semi_vals[1]
        for lval in self.crossed[0]:
            full_left = lval[1] == lval[2]
            for rid, cid in sorted(lval[3].items()):
                if cid == self.new_id:
                    continue
                ctx = self.contexts[cid]
                rfacts, rlen, rhit = right_vals[rid]
                if full_left:
                    selected += 1
                    ctx[0] += rlen
                    if rhit > 0:
                        ctx[1] += rhit
                        if rlen == rhit:
                            ctx[2] += 1
                            active.append((ctx[2], ctx[5], ctx[6], cid))
                        elif ctx[4] and new_flag and lval[2] <= self.max_left:
                            proposals.append((tuple(lval[0]), tuple(rfacts)))
                elif ctx[4] and new_flag and rhit > 0 and lval[2] <= self.max_left:
                    proposals.append((tuple(lval[0]), tuple(rfacts)))
        self.new_id = 0
        return active, selected, proposals

    def predict(self, facts: tuple[int, ...], proposals: list) -> tuple[int, set[int]]:
        """Store proposals, cross the left halves, return (new contexts, predicted facts)."""
        added = self.add(proposals, zero=False) if proposals else 0
        best, chosen = 0.0, []
        for lval in self._cross(0, facts):
            if lval[1] != lval[2]:
                continue
            for cid in lval[3].values():
                ctx = self.contexts[cid]
                w = ctx[1] / ctx[0] if ctx[0] else 0.0
                if w > best:
                    best, chosen = w, [ctx]
                elif w == best:
                    chosen.append(ctx)
        predicted: set[int] = set()
        for ctx in chosen:
            predicted.update(ctx[3])
        return added, predicted


class CadOse:
    """CAD-OSE for one stream: ``score(t, x)`` in [0, 1] (`UnivariateDetector`)."""

    def __init__(
        self, config: CadOseConfig | None = None, *, probation: int = 750,
        value_range: tuple[float, float] | None = None,
    ) -> None:
        """``value_range``: the series' known bounds (utilisation 0..100, say) instead of the
        probation's; NAB's reference passes the whole file's, which is not causal."""
        self.cfg = c = config or CadOseConfig()
        self.probation = max(int(probation), 1)
        self._buffer: list[float] | None = []
        self._n = 0  # probation samples seen (NaN included)
        self._max_bin = 2 ** c.bits - 1
        self._lo, self._step = 0.0, 1.0
        self._mem = _Memory(c.max_left_len, c.max_contexts)
        self._left: tuple[int, ...] = ()
        self._predicted: set[int] = set()
        rest = max(int(c.rest_fraction * self.probation), 1)
        self._recent: deque[float] = deque([1.0], maxlen=rest)
        if value_range is not None:
            self._set_range(*value_range)
            self._buffer = None

    def state_size(self) -> int:
        m = self._mem
        return (len(self._buffer or ()) + len(self._recent) + len(m.contexts)
                + len(m.semi_vals[0]) + len(m.semi_vals[1]))

    def score(self, t: float, x: float) -> float:
        finite = -math.inf < x < math.inf  # NaN or infinite: not scored, not learned
        if self._buffer is not None:
            self._n += 1  # such a value still counts towards the probation length
            if finite:
                self._buffer.append(x)
            if self._n >= self.probation and self._buffer:  # none finite yet: wait for one
                self._calibrate()
            return 0.0
        return self._step_value(x) if finite else 0.0

    def _calibrate(self) -> None:
        values, self._buffer = self._buffer or [], None
        lo, hi = min(values), max(values)
        span = hi - lo
        c = self.cfg
        self._set_range(lo - c.margin * span, hi + (c.margin + c.headroom) * span)
        for v in values:  # replay: the model learns the probation period as NAB's would
            self._step_value(v)

    def _set_range(self, lo: float, hi: float) -> None:
        full = hi - lo
        self._lo = lo
        self._step = (full if full > 0 else self._max_bin) / self._max_bin

    def _step_value(self, x: float) -> float:
        q = (x - self._lo) / self._step  # clamped before int(): beyond float range is an end bin
        level = 0 if not q > 0.0 else self._max_bin if q >= self._max_bin else int(q)
        facts = tuple(_SENSOR + 2 * b + ((level >> b) & 1) for b in range(self.cfg.bits))
        predicted = self._predicted
        error = sum(1 << b for b, f in enumerate(facts) if f not in predicted)
        self._predicted, matched, novel = self._learn(facts)
        raw = (1.0 - matched + novel) / 2.0 if error else 0.0
        out = raw if max(self._recent) < self.cfg.base_threshold else 0.0
        self._recent.append(raw)
        return out

    def _learn(self, facts: tuple[int, ...]) -> tuple[set[int], float, float]:
        mem = self._mem
        proposals: set = set()
        new_flag = False
        if self._left:
            pair = (self._left, facts)
            proposals.add(pair)
            new_flag = mem.add([pair], zero=True) == 1
        active, selected, crossed = mem.activate(facts, new_flag)
        proposals.update(crossed)
        matched = len(active) / selected if selected else 0.0
        active.sort()
        neurons = {_NEURON + a[3] for a in active[-self.cfg.max_active:]}
        self._left = tuple(sorted(set(facts) | neurons))
        added, predicted = mem.predict(self._left, crossed)
        added += 1 if new_flag else 0
        novel = added / len(proposals) if new_flag and proposals else 0.0
        return predicted, matched, novel
