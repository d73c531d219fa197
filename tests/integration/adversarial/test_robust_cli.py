"""`trainguard robust train` then `robust eval` / `robust certify` on digits through the real CLI."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "trainguard.adversarial.models:digits_cnn"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("robust") / "digits.pt"


def test_train_then_eval_on_digits(cli, tmp_path, trained):
    home = tmp_path / "home"
    assert cli("init", "--home", home, "--admin", "alice", "--node", "n1", env=ONE_THREAD).code == 0

    r = cli(
        "robust",
        "train",
        "--dataset",
        "digits",
        "--method",
        "fgsm-rs",
        "--eps",
        "0.1",
        "--epochs",
        "3",
        "--out",
        trained,
        "--seed",
        "1",
        "--home",
        home,
        "--format",
        "json",
        env=ONE_THREAD,
    )
    assert r.code == 0, r.stderr
    assert "epoch 3/3" in r.stderr  # progress on stderr, JSON on stdout
    summary = r.json()
    assert summary["method"] == "fgsm-rs" and summary["epochs_run"] == 3
    assert trained.is_file() and not list(trained.parent.glob(".*.part"))

    out, svg = tmp_path / "eval.json", tmp_path / "eval.svg"
    r = cli(
        "robust",
        "eval",
        "--model",
        MODEL,
        "--weights",
        trained,
        "--dataset",
        "digits",
        "--eps",
        "0.1,0.3",
        "--attack",
        "all",
        "--budget",
        "fast",
        "--steps",
        "5",
        "--limit",
        "64",
        "--svg",
        svg,
        "--out",
        out,
        "--home",
        home,
        "--format",
        "json",
        env=ONE_THREAD,
    )
    assert r.code in (0, 1), r.stderr
    doc = r.json()
    assert 0.0 <= doc["clean_accuracy"] <= 1.0 and doc["samples"] == 64
    auto = ("auto/apgd-ce", "auto/apgd-t", "auto/fab-t", "auto/square", "auto")
    assert [(p["eps"], p["attack"]) for p in doc["robust"]] == [
        (e, a) for e in (0.1, 0.3) for a in ("fgsm", "pgd", "apgd", *auto)
    ]
    assert all(0.0 <= p["accuracy"] <= doc["clean_accuracy"] for p in doc["robust"])
    for point in doc["worst_case"]["per_eps"]:
        assert point["accuracy"] <= min(
            p["accuracy"] for p in doc["robust"] if p["eps"] == point["eps"]
        )
    names = {c["name"] for c in doc["checks"]}
    assert names == {
        "accuracy-falls-with-eps",
        "iterative-beats-single-step",
        "large-eps-accuracy-near-zero",
        "nonzero-input-gradients",
        "gradient-free-adds-little",
    }
    assert all(set(c) == {"name", "passed", "detail"} for c in doc["checks"])
    assert r.code == (1 if any(c["passed"] is False for c in doc["checks"]) else 0)
    assert svg.read_text().startswith("<svg")
    assert out.read_text().strip().startswith("{")
    assert doc["audit"]["recorded"] is True

    log = cli("audit", "log", "--kind", "robustness-eval", "--home", home, "--format", "json")
    assert log.code == 0, log.stderr
    events = log.json()
    assert events and events[-1]["data"]["weights_sha256"] == doc["weights_sha256"]
    data = events[-1]["data"]
    assert data["evidence"] == "empirical" and data["certified"] is None
    assert data["attacks"] == ["fgsm", "pgd", "apgd", "auto"] and data["budget"] == "fast"
    assert data["empirical"] == doc["robust"]
    assert data["worst_case"] == doc["worst_case"]["per_eps"]
    assert "auto/square:" in r.stderr  # progress of the sequence on stderr


def test_default_attack_is_auto_and_eval_can_certify(cli, tmp_path, trained):
    if not trained.is_file():
        pytest.skip("needs the model of test_train_then_eval_on_digits")
    home = tmp_path / "home"
    assert cli("init", "--home", home, "--admin", "alice", "--node", "n1", env=ONE_THREAD).code == 0
    r = cli(
        "robust",
        "eval",
        "--model",
        MODEL,
        "--weights",
        trained,
        "--dataset",
        "digits",
        "--eps",
        "0.1",
        "--budget",
        "fast",
        "--limit",
        "48",
        "--certify-sigma",
        "0.25",
        "--certify-n",
        "200",
        "--home",
        home,
        "--format",
        "json",
        env=ONE_THREAD,
    )
    assert r.code in (0, 1), r.stderr
    doc = r.json()
    assert [p["attack"] for p in doc["robust"]][-1] == "auto"
    cert = doc["certified"]
    assert cert["method"] == "randomized-smoothing" and cert["sigma"] == 0.25
    assert cert["per_radius"][0]["radius"] == 0.0
    log = cli("audit", "log", "--kind", "robustness-eval", "--home", home, "--format", "json")
    data = log.json()[-1]["data"]
    assert data["evidence"] == "empirical+certified" and data["certified"] == cert


def test_gaussian_training_then_certify(cli, tmp_path):
    home = tmp_path / "home"
    assert cli("init", "--home", home, "--admin", "alice", "--node", "n1", env=ONE_THREAD).code == 0
    weights = tmp_path / "smooth.pt"
    r = cli(
        "robust",
        "train",
        "--dataset",
        "digits",
        "--method",
        "gaussian",
        "--sigma",
        "0.5",
        "--epochs",
        "2",
        "--model",
        "trainguard.adversarial.models:digits_mlp",
        "--out",
        weights,
        "--home",
        home,
        "--format",
        "json",
        env=ONE_THREAD,
    )
    assert r.code == 0, r.stderr
    assert r.json()["method"] == "gaussian" and r.json()["sigma"] == 0.5
    r = cli(
        "robust",
        "certify",
        "--model",
        "trainguard.adversarial.models:digits_mlp",
        "--weights",
        weights,
        "--dataset",
        "digits",
        "--sigma",
        "0.5",
        "--n",
        "300",
        "--n0",
        "30",
        "--radii",
        "0,0.5,1",
        "--limit",
        "40",
        "--home",
        home,
        "--format",
        "json",
        env=ONE_THREAD,
    )
    assert r.code == 0, r.stderr
    cert = r.json()["certified"]
    accs = [p["accuracy"] for p in cert["per_radius"]]
    assert [p["radius"] for p in cert["per_radius"]] == [0.0, 0.5, 1.0]
    assert accs == sorted(accs, reverse=True) and accs[0] > 0.5
    assert "certified 40/40 samples" in r.stderr
    text = cli(
        "robust",
        "certify",
        "--model",
        "trainguard.adversarial.models:digits_mlp",
        "--weights",
        weights,
        "--dataset",
        "digits",
        "--sigma",
        "0.5",
        "--n",
        "50",
        "--limit",
        "4",
        "--home",
        home,
        env=ONE_THREAD,
    )
    assert text.code == 0 and "radius 0.5" in text.stdout
    log = cli("audit", "log", "--kind", "robustness-eval", "--home", home, "--format", "json")
    data = log.json()[-1]["data"]
    assert data["evidence"] == "certified" and data["norm"] == "l2" and data["empirical"] == []


def test_l2_adversarial_training_and_flag_errors(cli, tmp_path):
    home = tmp_path / "home"
    r = cli(
        "robust",
        "train",
        "--dataset",
        "digits",
        "--method",
        "pgd",
        "--norm",
        "l2",
        "--eps",
        "1.0",
        "--steps",
        "3",
        "--epochs",
        "1",
        "--out",
        tmp_path / "l2.pt",
        "--home",
        home,
        "--format",
        "json",
        env=ONE_THREAD,
    )
    assert r.code == 0, r.stderr
    assert r.json()["norm"] == "l2"
    r = cli(
        "robust",
        "train",
        "--dataset",
        "digits",
        "--method",
        "pgd",
        "--epochs",
        "1",
        "--out",
        tmp_path / "x.pt",
        "--home",
        home,
        env=ONE_THREAD,
    )
    assert r.code == 2 and "needs --eps" in r.stderr
    r = cli(
        "robust",
        "eval",
        "--model",
        MODEL,
        "--weights",
        tmp_path / "l2.pt",
        "--dataset",
        "digits",
        "--attack",
        "pgd,bogus",
        "--home",
        home,
        env=ONE_THREAD,
    )
    assert r.code == 2 and "unknown attack 'bogus'" in r.stderr


def test_malicious_weights_are_refused_before_loading(cli, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Payload()))
    r = cli(
        "robust",
        "eval",
        "--model",
        MODEL,
        "--weights",
        evil,
        "--dataset",
        "digits",
        "--limit",
        "8",
        "--home",
        tmp_path / "home",
        "--format",
        "json",
        env=ONE_THREAD,
    )
    assert r.code == 1
    assert "unsafe" in r.stderr and r.stdout == ""
    assert not marker.exists()


def test_eval_on_an_mnist_idx_folder(cli, tmp_path):
    import gzip
    import struct

    import numpy as np
    import torch
    from trainguard.adversarial.models import mnist_cnn

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(12,), dtype=np.uint8)
    for name, arr in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
        (tmp_path / (name + ".gz")).write_bytes(gzip.compress(header + arr.tobytes()))
    weights = tmp_path / "mnist.pt"
    torch.manual_seed(0)
    torch.save(mnist_cnn().state_dict(), weights)
    r = cli(
        "robust",
        "eval",
        "--model",
        "trainguard.adversarial.models:mnist_cnn",
        "--weights",
        weights,
        "--dataset",
        f"mnist:{tmp_path}",
        "--attack",
        "pgd",
        "--eps",
        "0.1",
        "--steps",
        "2",
        "--home",
        tmp_path / "home",
        "--format",
        "json",
        env=ONE_THREAD,
    )
    assert r.code in (0, 1), r.stderr
    doc = r.json()
    assert doc["samples"] == 12 and doc["dataset"] == "mnist-test"
    assert [p["attack"] for p in doc["robust"]] == ["pgd"]
    skipped = {c["name"]: c for c in doc["checks"]}["iterative-beats-single-step"]
    assert skipped["passed"] is None and "not run" in skipped["detail"]


@pytest.mark.parametrize("norm,eps", [("linf", "0.3"), ("l2", "2.0")])
def test_untargeted_fab_through_the_cli(cli, tmp_path, norm, eps):
    """`--attack fab` (untargeted FAB) breaks an undefended model at a large radius, in both
    norms, and reports next to FAB-T."""
    home = tmp_path / "home"
    weights = tmp_path / "std.pt"
    r = cli(
        "robust",
        "train",
        "--dataset",
        "digits",
        "--method",
        "standard",
        "--epochs",
        "3",
        "--out",
        weights,
        "--home",
        home,
        "--format",
        "json",
        env=ONE_THREAD,
    )
    assert r.code == 0, r.stderr
    r = cli(
        "robust",
        "eval",
        "--model",
        MODEL,
        "--weights",
        weights,
        "--dataset",
        "digits",
        "--attack",
        "fab,fab-t",
        "--norm",
        norm,
        "--eps",
        eps,
        "--steps",
        "10",
        "--limit",
        "40",
        "--budget",
        "fast",
        "--home",
        home,
        "--format",
        "json",
        env=ONE_THREAD,
    )
    assert r.code in (0, 1), r.stderr
    doc = r.json()
    acc = {p["attack"]: p["accuracy"] for p in doc["robust"]}
    assert set(acc) == {"fab", "fab-t"}
    assert doc["clean_accuracy"] > 0.7 and acc["fab"] < 0.2
    assert doc["worst_case"]["per_eps"][0]["accuracy"] <= min(acc.values())


def test_usage_errors_are_clear(cli, tmp_path):
    r = cli(
        "robust",
        "eval",
        "--model",
        "no_such_module:f",
        "--weights",
        tmp_path / "w.pt",
        "--dataset",
        "digits",
        "--home",
        tmp_path / "home",
        env=ONE_THREAD,
    )
    assert r.code == 2 and "cannot import module" in r.stderr
    r = cli(
        "robust",
        "eval",
        "--model",
        MODEL,
        "--weights",
        tmp_path / "w.pt",
        "--dataset",
        "digits",
        "--eps",
        "0.1,zero",
        "--home",
        tmp_path / "home",
        env=ONE_THREAD,
    )
    assert r.code == 2 and "--eps" in r.stderr
    r = cli(
        "robust",
        "train",
        "--dataset",
        f"mnist:{tmp_path}",
        "--method",
        "pgd",
        "--eps",
        "0.3",
        "--epochs",
        "1",
        "--out",
        tmp_path / "m.pt",
        "--home",
        tmp_path / "home",
        env=ONE_THREAD,
    )
    assert r.code == 2 and "missing train-images-idx3-ubyte" in r.stderr
