"""Evaluation: worst case across attacks, masking checks, JSON and SVG output."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from trainguard.adversarial import (
    AdversarialError,
    AttackKind,
    EvalConfig,
    evaluate_robustness,
    render_svg,
)
from trainguard.adversarial.checks import _check_iterative_beats_single

CFG = EvalConfig(eps=(0.05, 0.1, 0.3), steps=10)


def _checks(report):
    return {c.name: c.passed for c in report.checks}


def test_normal_model_passes_every_check_and_worst_case_is_lowest(digits_test, trained_mlp):
    data = digits_test.take(200)
    report = evaluate_robustness(trained_mlp, data.x, data.y, CFG)
    checks = _checks(report)
    assert all(v is not False for v in checks.values()), report.checks
    assert checks["gradient-free-adds-little"] is None  # no square or auto in this run
    assert not report.suspicious
    for eps in CFG.eps:
        worst = report.worst_case_at(eps)
        per_attack = [p.accuracy for p in report.robust if p.eps == eps]
        assert len(per_attack) == 3 and worst <= min(per_attack)
        assert all(a <= report.clean_accuracy for a in per_attack)
    assert report.worst_case_at(0.3) < 0.02  # an undefended model falls to ~0 at eps 0.3
    json.dumps(report.to_dict())  # JSON-able as is


def test_gradient_masked_model_is_flagged(digits_test, masked_model):
    data = digits_test.take(200)
    report = evaluate_robustness(masked_model, data.x, data.y, CFG)
    checks = _checks(report)
    assert report.suspicious
    assert checks["nonzero-input-gradients"] is False
    assert checks["large-eps-accuracy-near-zero"] is False
    assert checks["accuracy-falls-with-eps"] is False
    # the masked model looks "robust": exactly what the checks warn about
    assert report.worst_case_at(0.1) > 0.8


def test_single_step_beating_iterative_is_flagged():
    cfg = EvalConfig(eps=(0.1, 0.2))
    acc = {
        (0.1, AttackKind.FGSM): 0.5,
        (0.1, AttackKind.PGD): 0.4,
        (0.1, AttackKind.APGD): 0.4,
        (0.2, AttackKind.FGSM): 0.1,
        (0.2, AttackKind.PGD): 0.3,
        (0.2, AttackKind.APGD): 0.1,
    }
    result = _check_iterative_beats_single(cfg, cfg.eps, acc, tol=0.01)
    assert result.passed is False and "fgsm 0.100 beats pgd 0.300" in result.detail
    only_pgd = EvalConfig(eps=(0.1,), attacks=(AttackKind.PGD,))
    assert _check_iterative_beats_single(only_pgd, only_pgd.eps, acc, 0.01).passed is None


def test_svg_is_well_formed_with_one_line_per_series(digits_test, trained_mlp):
    data = digits_test.take(64)
    cfg = EvalConfig(eps=(0.1, 0.2), attacks=(AttackKind.FGSM, AttackKind.PGD), steps=5)
    report = evaluate_robustness(trained_mlp, data.x, data.y, cfg)
    svg = render_svg(report)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    assert len(root.findall(f"{ns}polyline")) == 3  # fgsm, pgd, worst case
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "worst case" in texts and "epsilon" in texts


def test_training_mode_restored_and_bad_settings_refused(digits_test, trained_mlp):
    data = digits_test.take(8)
    trained_mlp.train()
    try:
        evaluate_robustness(trained_mlp, data.x, data.y, EvalConfig(eps=(0.1,), steps=2))
        assert trained_mlp.training
    finally:
        trained_mlp.eval()
    with pytest.raises(AdversarialError, match="eps values must be > 0"):
        evaluate_robustness(trained_mlp, data.x, data.y, EvalConfig(eps=(0.0,)))
