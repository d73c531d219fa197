"""The library side of `trainguard robust eval/train`: load, run, summarise, save.

The CLI stays thin: it parses flags, hands in the artifact scanner and the progress sink,
and prints what these functions return.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from trainguard.adversarial.attacks import Norm
from trainguard.adversarial.certify import CertifyConfig, CertifyReport, certify_robustness
from trainguard.adversarial.data import Dataset, load_dataset
from trainguard.adversarial.errors import AdversarialError, ModelSpecError
from trainguard.adversarial.evaluate import EvalConfig, RobustnessReport, evaluate_robustness
from trainguard.adversarial.models import build_model
from trainguard.adversarial.training import (
    AdversarialStep,
    Method,
    OverfitGuard,
    TrainResult,
    train_adversarial,
)
from trainguard.core.fs import sha256_file

__all__ = [
    "TrainSettings",
    "certify_summary",
    "default_model_spec",
    "eval_summary",
    "load_weights",
    "run_certify",
    "run_eval",
    "run_train",
]

log = logging.getLogger(__name__)

Scanner = Callable[[Path], object]


def default_model_spec(dataset_spec: str) -> str:
    """The reference model for a dataset: digits_cnn for digits, mnist_cnn for MNIST."""
    name = "digits_cnn" if dataset_spec == "digits" else "mnist_cnn"
    return f"trainguard.adversarial.models:{name}"


def load_weights(model: nn.Module, path: Path, scan: Scanner) -> nn.Module:
    """Scan ``path`` with ``scan`` (raises on an unsafe file), then load a state dict into
    ``model`` with ``weights_only=True`` on the CPU (GPU-saved weights load anywhere)."""
    if not path.is_file():
        raise AdversarialError(f"weights file {path} does not exist")
    scan(path)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise ModelSpecError(
            f"{path}: cannot be loaded as weights ({type(exc).__name__}: {exc})",
            tip="save with torch.save(model.state_dict(), PATH)",
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelSpecError(f"{path}: holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelSpecError(
            f"{path}: weights do not fit the model ({first})",
            tip="pass the --model factory these weights were trained with",
        ) from exc
    return model


def eval_summary(report: RobustnessReport, **extra: Any) -> dict[str, Any]:
    """The JSON document `robust eval` prints (accuracies are fractions)."""
    doc = {
        "clean_accuracy": report.clean_accuracy,
        "robust": [
            {"eps": p.eps, "attack": p.attack, "accuracy": p.accuracy} for p in report.robust
        ],
        "worst_case": report.worst_case,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in report.checks],
        "samples": report.samples,
        "norm": report.norm,
        "settings": report.settings,
        "suspected_gradient_masking": report.suspicious,
    }
    doc.update(extra)
    return doc


def _load(
    model_spec: str, weights: Path, dataset_spec: str, scan: Scanner, limit: int | None, device: str
) -> tuple[nn.Module, Dataset, dict[str, Any]]:
    model = load_weights(build_model(model_spec), weights, scan).to(device)
    data = load_dataset(dataset_spec, "test").take(limit)
    _probe(model, data.x[:2].to(device), model_spec, data.name)
    meta = {
        "model": model_spec,
        "weights": str(weights),
        "weights_sha256": sha256_file(weights),
        "dataset": data.name,
    }
    return model, data, meta


def run_certify(
    model_spec: str,
    weights: Path,
    dataset_spec: str,
    cfg: CertifyConfig,
    *,
    scan: Scanner,
    limit: int | None = None,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> tuple[CertifyReport, dict[str, Any]]:
    """Build, scan, load and certify a model (randomized smoothing) on a test split."""
    model, data, meta = _load(model_spec, weights, dataset_spec, scan, limit, device)
    report = certify_robustness(model, data.x.to(device), data.y.to(device), cfg, progress=progress)
    return report, meta


def certify_summary(report: CertifyReport) -> dict[str, Any]:
    """The ``certified`` block of `robust certify` / `robust eval --certify-sigma` output and
    of the robustness-eval audit event (accuracies are fractions, radii in L2)."""
    return {
        "method": "randomized-smoothing",
        "norm": "l2",
        "sigma": report.sigma,
        "n0": report.n0,
        "n": report.n,
        "alpha": report.alpha,
        "samples": report.samples,
        "base_clean_accuracy": report.clean_accuracy,
        "smoothed_accuracy": report.smoothed_accuracy,
        "abstain_rate": report.abstain_rate,
        "mean_certified_radius": report.mean_certified_radius,
        "per_radius": [{"radius": p.radius, "accuracy": p.accuracy} for p in report.per_radius],
    }


def run_eval(
    model_spec: str,
    weights: Path,
    dataset_spec: str,
    cfg: EvalConfig,
    *,
    scan: Scanner,
    limit: int | None = None,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
    certify: CertifyConfig | None = None,
) -> tuple[RobustnessReport, dict[str, Any]]:
    """Build, scan, load and attack a model on the test split of a dataset."""
    model, data, meta = _load(model_spec, weights, dataset_spec, scan, limit, device)
    report = evaluate_robustness(
        model, data.x.to(device), data.y.to(device), cfg, progress=progress
    )
    if certify is not None:
        cert = certify_robustness(
            model, data.x.to(device), data.y.to(device), certify, progress=progress
        )
        meta["certified"] = certify_summary(cert)
    return report, meta


def _probe(model: nn.Module, x: torch.Tensor, model_spec: str, dataset: str) -> None:
    """One forward pass on two samples, so a model that does not fit the data says so plainly
    instead of failing deep inside an attack."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as exc:
        raise ModelSpecError(
            f"the model {model_spec} cannot take {dataset} inputs of shape {tuple(x.shape[1:])}: "
            f"{str(exc).splitlines()[0]}",
            tip="pick a model factory built for this dataset (see `trainguard robust eval --help`)",
        ) from exc
    finally:
        model.train(was_training)
    if out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise ModelSpecError(
            f"the model {model_spec} returned shape {tuple(out.shape)}; expected (batch, classes)",
            tip="the factory must return a classifier that outputs one logit per class",
        )


@dataclass(frozen=True)
class TrainSettings:
    dataset: str
    method: Method
    eps: float
    epochs: int
    model: str | None = None
    seed: int = 0
    batch_size: int = 64
    lr: float = 2e-3
    steps: int = 10
    beta: float = 6.0
    holdout_fraction: float = 0.1
    device: str = "cpu"
    norm: Norm = Norm.LINF
    sigma: float = 0.25


def _split_holdout(data: Dataset, fraction: float) -> tuple[Dataset, Dataset]:
    n_hold = max(1, int(len(data) * fraction))
    train = Dataset(data.name, data.x[:-n_hold], data.y[:-n_hold], data.clip)
    hold = Dataset(data.name + "-holdout", data.x[-n_hold:], data.y[-n_hold:], data.clip)
    return train, hold


def run_train(
    s: TrainSettings, progress: Callable[[str], None] | None = None
) -> tuple[nn.Module, TrainResult, dict[str, Any]]:
    """Train a model with the chosen method; the last ``holdout_fraction`` of the training
    split is held out for the catastrophic-overfitting guard (not trained on)."""
    torch.manual_seed(s.seed)
    spec = s.model or default_model_spec(s.dataset)
    model = build_model(spec).to(s.device)
    train, holdout = _split_holdout(load_dataset(s.dataset, "train"), s.holdout_fraction)
    step = AdversarialStep(
        s.method, s.eps, steps=s.steps, beta=s.beta, seed=s.seed, norm=s.norm, sigma=s.sigma
    )
    attacked = s.eps > 0 and s.method not in (Method.STANDARD, Method.GAUSSIAN)
    guard = OverfitGuard(eps=s.eps, norm=s.norm) if attacked else None

    def on_epoch(r: Any) -> None:
        if progress:
            hold = (
                ""
                if r.holdout_pgd_accuracy is None
                else f", holdout PGD acc {r.holdout_pgd_accuracy:.3f}"
            )
            progress(
                f"epoch {r.epoch}/{s.epochs}: loss {r.loss:.4f}, train acc {r.train_accuracy:.3f}{hold}"
            )

    result = train_adversarial(
        model,
        train,
        step,
        epochs=s.epochs,
        batch_size=s.batch_size,
        lr=s.lr,
        holdout=holdout,
        guard=guard,
        seed=s.seed,
        progress=on_epoch,
    )
    test = load_dataset(s.dataset, "test")
    model.eval()
    with torch.no_grad():
        logits = model(test.x.to(s.device))
        clean = float((logits.argmax(1).cpu() == test.y).float().mean())
    summary = {
        "model": spec,
        "dataset": s.dataset,
        "method": s.method.value,
        "eps": s.eps,
        "norm": s.norm.value,
        "sigma": s.sigma if s.method is Method.GAUSSIAN else None,
        "epochs_run": len(result.epochs),
        "stopped_early": result.stopped_early,
        "restored_epoch": result.restored_epoch,
        "reason": result.reason,
        "test_clean_accuracy": round(clean, 6),
        "epochs": [asdict(r) for r in result.epochs],
    }
    return model, result, summary
