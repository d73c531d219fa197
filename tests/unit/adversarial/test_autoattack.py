"""The AutoAttack sequence in evaluation: worst case over its components, per-component
figures in the report, and the gradient-free check that flags a masked model."""

from __future__ import annotations

import pytest
import torch
from trainguard.adversarial import AttackKind, AutoAttack, Budget, EvalConfig, evaluate_robustness
from trainguard.adversarial.runner import TrainSettings, run_train
from trainguard.adversarial.training import Method

FAST = EvalConfig(eps=(0.05, 0.1), attacks=(AttackKind.AUTO,), budget=Budget.FAST)


def _by_attack(report, eps):
    return {p.attack: p.accuracy for p in report.robust if p.eps == eps}


def test_sequence_only_removes_points_and_reports_progress(digits_test, trained_mlp):
    x, y = digits_test.x[:96], digits_test.y[:96]
    lines: list[str] = []
    result = AutoAttack(trained_mlp, 0.08, budget="fast", progress=lines.append).run(x, y)
    previous = result.clean
    for name in ("apgd-ce", "apgd-t", "fab-t", "square"):
        now = result.robust_after[name]
        assert not (now & ~previous).any(), f"{name} revived a broken point"
        previous = now
    with torch.no_grad():
        assert torch.equal(trained_mlp(result.x_adv).argmax(1) == y, result.robust)
    assert (result.x_adv - x).abs().max() <= 0.08 + 1e-6
    assert [line.split()[2].rstrip(":") for line in lines] == [
        "auto/apgd-ce",
        "auto/apgd-t",
        "auto/fab-t",
        "auto/square",
    ]


def test_report_keeps_its_shape_with_per_component_entries(digits_test, trained_mlp):
    data = digits_test.take(96)
    report = evaluate_robustness(trained_mlp, data.x, data.y, FAST)
    names = [p.attack for p in report.robust if p.eps == 0.1]
    assert names == ["auto/apgd-ce", "auto/apgd-t", "auto/fab-t", "auto/square", "auto"]
    acc = _by_attack(report, 0.1)
    assert acc["auto"] == acc["auto/square"] <= acc["auto/apgd-ce"] <= report.clean_accuracy
    assert report.worst_case_at(0.1) == acc["auto"]
    checks = {c.name: c.passed for c in report.checks}
    assert checks["gradient-free-adds-little"] is True, report.checks
    assert report.settings["budget"] == "fast"


def test_masked_model_is_flagged_by_square_and_by_the_checks(digits_test, masked_model):
    data = digits_test.take(96)
    cfg = EvalConfig(eps=(0.1, 0.3), attacks=(AttackKind.AUTO,), budget=Budget.FAST)
    report = evaluate_robustness(masked_model, data.x, data.y, cfg)
    checks = {c.name: c for c in report.checks}
    assert checks["gradient-free-adds-little"].passed is False
    assert "square broke" in checks["gradient-free-adds-little"].detail
    assert checks["nonzero-input-gradients"].passed is False
    acc = _by_attack(report, 0.3)
    # the gradient attacks see nothing; Square takes the model apart
    assert acc["auto/fab-t"] > 0.7 and acc["auto"] < 0.1
    assert report.suspicious


@pytest.mark.slow
def test_auto_finds_at_least_as_much_as_the_best_single_attack_on_a_trained_model():
    """The digits model that `robust train` makes (FGSM-RS), as in the README."""
    torch.manual_seed(0)
    settings = TrainSettings(dataset="digits", method=Method.FGSM_RS, eps=0.1, epochs=4)
    model, _, _ = run_train(settings)
    from trainguard.adversarial import load_digits

    test = load_digits("test").take(100)
    cfg = EvalConfig(
        eps=(0.15,),
        attacks=(AttackKind.FGSM, AttackKind.PGD, AttackKind.APGD, AttackKind.AUTO),
        steps=25,
        budget=Budget.FAST,
    )
    report = evaluate_robustness(model, test.x, test.y, cfg)
    for eps in cfg.eps:
        acc = _by_attack(report, eps)
        best_single = min(acc["fgsm"], acc["pgd"], acc["apgd"])
        assert acc["auto"] <= best_single, acc
    assert not report.suspicious, report.checks


def test_sequence_runs_on_a_three_class_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    x = torch.rand(24, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    result = AutoAttack(model, 0.3, budget="fast").run(x, y)
    assert torch.equal(result.robust_after["apgd-t"], result.robust_after["apgd-ce"])
    assert result.robust.sum() < 24
