"""`trainguard robust train` then `robust eval` on digits through the real CLI."""

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
    assert {(p["eps"], p["attack"]) for p in doc["robust"]} == {
        (e, a) for e in (0.1, 0.3) for a in ("fgsm", "pgd", "apgd")
    }
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
