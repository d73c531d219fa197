"""Weights loading for `robust eval`: scan first, weights_only, clear errors on a mismatch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainguard.adversarial import ModelSpecError, load_factory
from trainguard.adversarial.models import digits_cnn, digits_mlp
from trainguard.adversarial.runner import load_weights


def test_scan_runs_before_any_load(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(digits_mlp().state_dict(), path)
    calls: list[Path] = []

    class Refused(Exception):
        pass

    def scan(p: Path) -> None:
        calls.append(p)
        raise Refused

    with pytest.raises(Refused):
        load_weights(digits_mlp(), path, scan)
    assert calls == [path]


def test_wrong_architecture_and_wrapped_state_dict(tmp_path):
    path = tmp_path / "w.pt"
    source = digits_mlp()
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)
    model = load_weights(digits_mlp(), path, lambda p: None)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values())
    )
    with pytest.raises(ModelSpecError, match="do not fit the model"):
        load_weights(digits_cnn(), path, lambda p: None)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelSpecError, match="cannot be loaded as weights"):
        load_weights(digits_mlp(), tmp_path / "junk.pt", lambda p: None)


def test_factory_specs():
    assert load_factory("trainguard.adversarial.models:digits_cnn") is digits_cnn
    for bad, msg in [("nocolon", "not MODULE:FACTORY"), ("json:nothing_here", "has no attribute")]:
        with pytest.raises(ModelSpecError, match=msg):
            load_factory(bad)


def test_cli_module_does_not_import_torch():
    code = (
        "import sys, trainguard.cli.commands.robust as r, argparse\n"
        "p = argparse.ArgumentParser(); r.register(p.add_subparsers())\n"
        "assert 'torch' not in sys.modules and 'sklearn' not in sys.modules\n"
        "assert 'trainguard.adversarial' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_model_that_does_not_fit_the_dataset_is_a_usage_error(tmp_path) -> None:
    import pytest
    import torch
    from torch import nn
    from trainguard.adversarial.errors import ModelSpecError
    from trainguard.adversarial.runner import _probe

    flat_only = nn.Sequential(nn.Linear(64, 10))
    with pytest.raises(ModelSpecError, match="cannot take digits inputs of shape"):
        _probe(flat_only, torch.zeros(2, 1, 8, 8), "m:f", "digits")
    assert flat_only.training  # mode restored
    _probe(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), torch.zeros(2, 1, 8, 8), "m:f", "digits")
