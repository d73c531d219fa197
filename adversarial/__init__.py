"""Adversarial robustness for PyTorch models: attacks, adversarial training, honest evaluation.

Importing this package imports torch; the agent imports it only inside CLI handlers.
"""

from trainguard.adversarial.apgd import APGD, APGDT
from trainguard.adversarial.attacks import FGSM, PGD, Attack, Norm, eval_mode
from trainguard.adversarial.autoattack import AutoAttack, Budget
from trainguard.adversarial.certify import CertifyConfig, CertifyReport, certify, certify_robustness
from trainguard.adversarial.data import Dataset, load_dataset, load_digits, load_mnist, read_idx
from trainguard.adversarial.errors import AdversarialError, DatasetError, ModelSpecError
from trainguard.adversarial.evaluate import (
    AttackKind,
    CheckResult,
    EvalConfig,
    RobustnessReport,
    RobustPoint,
    evaluate_robustness,
)
from trainguard.adversarial.fab import FAB, FABT
from trainguard.adversarial.losses import Loss
from trainguard.adversarial.models import build_model, load_factory
from trainguard.adversarial.plot import render_svg
from trainguard.adversarial.square import Square
from trainguard.adversarial.training import (
    AdversarialStep,
    EpochReport,
    Method,
    OverfitGuard,
    TrainResult,
    train_adversarial,
)

__all__ = [
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
]
