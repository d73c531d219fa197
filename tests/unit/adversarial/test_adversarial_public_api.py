"""The public names of trainguard.adversarial are pinned: removing one breaks users."""

import trainguard.adversarial as adv

EXPECTED = {
    "APGD",
    "APGDT",
    "FAB",
    "FABT",
    "FGSM",
    "PGD",
    "AdversarialError",
    "AdversarialStep",
    "Attack",
    "AttackKind",
    "AutoAttack",
    "Budget",
    "CertifyConfig",
    "CertifyReport",
    "CheckResult",
    "Dataset",
    "DatasetError",
    "EpochReport",
    "EvalConfig",
    "Loss",
    "Method",
    "ModelSpecError",
    "Norm",
    "OverfitGuard",
    "RobustPoint",
    "RobustnessReport",
    "Square",
    "TrainResult",
    "build_model",
    "certify",
    "certify_robustness",
    "eval_mode",
    "evaluate_robustness",
    "load_dataset",
    "load_digits",
    "load_factory",
    "load_mnist",
    "read_idx",
    "render_svg",
    "train_adversarial",
}


def test_public_names_are_pinned_and_importable():
    assert set(adv.__all__) == EXPECTED
    assert all(getattr(adv, name) is not None for name in adv.__all__)
