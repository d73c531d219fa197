"""`[audit]`: the verification cadence derived from the checkpoint cadence, the witness address."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainguard.core.config import ConfigError, load_config
from trainguard.evidence.audit_chain import Cadence
from trainguard.evidence.config import AuditConfig


def test_cadence_is_derived_with_slack_unless_set() -> None:
    assert AuditConfig().cadence() == Cadence(2000, 660.0)
    assert AuditConfig(checkpoint_every=10, checkpoint_seconds=30).cadence() == Cadence(20, 120.0)
    assert AuditConfig(max_unsigned_entries=5000, max_unsigned_seconds=900).cadence() == Cadence(
        5000, 900.0
    )


def test_bad_audit_settings_are_all_listed(tmp_path: Path) -> None:
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text(
        '[audit]\ncheckpoint_every = 100\nmax_unsigned_entries = 10\nmax_unsigned_seconds = -1\n'
        'witness = "no-port-here"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(cfg, {})
    text = "\n".join(err.value.problems)
    assert "max_unsigned_entries must be >= checkpoint_every" in text
    assert "max_unsigned_seconds must be >= 0" in text
    assert "witness must be HOST:PORT" in text
    cfg.write_text('[audit]\nwitness = "10.0.0.2:8443"\n')
    assert load_config(cfg, {}).section(AuditConfig).witness == "10.0.0.2:8443"
