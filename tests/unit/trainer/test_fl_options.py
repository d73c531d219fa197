"""The federation's options at config load: privacy, compression, secure aggregation, and the
combinations that cannot work, refused together with a message that says why."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainguard.trainer.errors import TrainConfigError
from trainguard.trainer.federated.config import Rounding, UpdateCompression, load_fl_config

FL = Path(__file__).resolve().parents[3] / "trainer" / "examples" / "fl-digits.toml"


def _problems(*overrides: str) -> str:
    with pytest.raises(TrainConfigError) as err:
        load_fl_config(FL, list(overrides))
    return str(err.value)


def test_defaults_are_off_and_the_options_load() -> None:
    cfg = load_fl_config(FL)
    assert not cfg.privacy.dp and cfg.federation.compress is UpdateCompression.NONE
    assert not cfg.federation.secure_aggregation and cfg.federation.monitor
    cfg = load_fl_config(FL, ["privacy.dp=true", "privacy.noise_multiplier=0.8", "privacy.delta=1e-6",
                              'federation.compress="int8"', 'federation.rounding="nearest"'])
    assert cfg.privacy.dp and cfg.privacy.noise_multiplier == 0.8 and cfg.privacy.delta == 1e-6
    assert cfg.federation.compress is UpdateCompression.INT8 and cfg.federation.rounding is Rounding.NEAREST


@pytest.mark.parametrize("method", ["median", "trimmed-mean", "krum", "centered-clip"])
def test_secure_aggregation_refuses_rules_that_need_each_update(method: str) -> None:
    text = _problems("federation.secure_aggregation=true", "federation.monitor=false",
                     f'aggregation.method="{method}"')
    assert f"aggregation.method = {method} needs each site's update" in text


def test_secure_aggregation_refuses_per_site_monitoring_and_int8_but_takes_dp() -> None:
    text = _problems("federation.secure_aggregation=true", 'federation.compress="int8"')
    assert "per-site monitoring cannot run" in text and "compress = int8" in text
    cfg = load_fl_config(FL, ["federation.secure_aggregation=true", "federation.monitor=false",
                              "privacy.dp=true"])
    assert cfg.federation.secure_aggregation and cfg.privacy.dp


def test_bad_values_are_all_reported_at_once() -> None:
    text = _problems("privacy.dp=true", "privacy.noise_multiplier=0", "privacy.delta=1.5",
                     'federation.compress="int4"', 'aggregation.method="median"')
    assert "noise_multiplier and clip_norm must be positive" in text
    assert "delta must be in (0, 1)" in text and "'int4' is not one of" in text
    assert "[privacy] the noise is calibrated to the mean" in text
