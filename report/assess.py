"""Turn evidence into a status per control and a summary score.

A control is *not satisfied* when any of its evidence failed, errored or warned (a warning
means the control could not be confirmed; OSCAL has no state between satisfied and not),
*satisfied* when evidence exists and all of it passed (or is not applicable), *not applicable* when all its evidence is not-applicable, and
*manual* when no source of it produced evidence (an auditor must look). A node whose log failed
verification makes every log-derived item of that node count as failed, never merged silently.

Score: severity-weighted share of satisfied controls among those decided (satisfied or not
satisfied), 0-100. Manual and not-applicable controls do not move the score.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from trainguard.report.model import (
    Control,
    ControlAssessment,
    ControlStatus,
    EvidenceItem,
    EvidenceStatus,
)

WEIGHTS = {"low": 1.0, "medium": 2.0, "high": 3.0, "critical": 5.0}

# The one sentence every format prints in its header (kept next to the rule it states).
SCORING_METHOD = (
    "Score = 100 x the severity-weighted share of decided controls that are satisfied "
    "(weights: " + ", ".join(f"{k} {v:g}" for k, v in WEIGHTS.items()) + "); a control with any "
    "failed, erroring or warning evidence counts as not satisfied; manual and not-applicable "
    "controls are excluded from the score."
)


def _matches(source: str, item: EvidenceItem) -> bool:
    return item.source == source


def assess_control(control: Control, evidence: Iterable[EvidenceItem]) -> ControlAssessment:
    items = tuple(e for e in evidence if any(_matches(s, e) for s in control.sources))
    if not items:
        status = ControlStatus.MANUAL
    elif any(e.status in (EvidenceStatus.FAIL, EvidenceStatus.ERROR, EvidenceStatus.WARN) for e in items):
        status = ControlStatus.NOT_SATISFIED
    elif all(e.status is EvidenceStatus.NOT_APPLICABLE for e in items):
        status = ControlStatus.NOT_APPLICABLE
    else:
        status = ControlStatus.SATISFIED
    return ControlAssessment(control, status, items)


def assess(
    controls: Sequence[Control], evidence: Sequence[EvidenceItem]
) -> tuple[tuple[ControlAssessment, ...], float]:
    results = tuple(assess_control(c, evidence) for c in controls)
    decided = [r for r in results if r.status in (ControlStatus.SATISFIED, ControlStatus.NOT_SATISFIED)]
    total = sum(WEIGHTS[r.control.severity] for r in decided)
    good = sum(WEIGHTS[r.control.severity] for r in decided if r.status is ControlStatus.SATISFIED)
    score = round(100.0 * good / total, 1) if total else 0.0
    return results, score
