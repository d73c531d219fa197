"""The posture-check framework: registry, ids filter, errors, config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainguard.agent import checks
from trainguard.agent.checks import (
    Check,
    CheckContext,
    Outcome,
    Severity,
    Status,
    UnknownCheck,
    all_checks,
    register_check,
    run_checks,
)
from trainguard.agent.checks.config import ChecksConfig
from trainguard.core.config import Config, ConfigError, load_config
from trainguard.core.home import Home

SHIPPED = {
    "home-modes", "kek-age", "node-cert", "agent-tls", "plaintext-checkpoints",
    "traffic-isolation", "mfa-coverage", "clock-sync", "nvidia-driver",
    "gpu-foreign-processes", "agent-unit-hardening",
}


def _ctx(home: Home) -> CheckContext:
    return CheckContext(home=home, config=Config(source="test"))


def test_every_shipped_check_is_registered_with_controls() -> None:
    by_id = {c.id: c for c in all_checks()}
    assert SHIPPED <= set(by_id)
    for cid in SHIPPED:
        c = by_id[cid]
        assert c.title and c.controls, cid
        assert all(ctl[:2].isalpha() and "-" in ctl for ctl in c.controls), c.controls
        assert isinstance(c.severity, Severity)


def test_run_checks_with_ids_runs_only_those_in_order(home: Home) -> None:
    results = run_checks(home, Config(source="test"), ["home-modes", "agent-tls"])
    assert [r.id for r in results] == ["home-modes", "agent-tls"]
    assert results[0].status is Status.PASS


def test_unknown_id_is_a_usage_error_naming_known_ids(home: Home) -> None:
    with pytest.raises(UnknownCheck) as info:
        run_checks(home, Config(source="test"), ["no-such-check"])
    assert info.value.exit_code == 2
    assert "home-modes" in (info.value.tip or "")


def test_a_check_that_raises_becomes_error(home: Home) -> None:
    def boom(ctx: CheckContext) -> Outcome:
        raise RuntimeError("disk on fire")

    result = Check("boom", "explodes", Severity.LOW, ("SI-4",), boom).run(_ctx(home))
    assert result.status is Status.ERROR
    assert "disk on fire" in result.summary


def test_a_check_returning_garbage_becomes_error(home: Home) -> None:
    result = Check("bad", "bad", Severity.LOW, ("SI-4",), lambda ctx: True).run(_ctx(home))  # type: ignore[arg-type,return-value]
    assert result.status is Status.ERROR


def test_results_serialise_to_json(home: Home) -> None:
    results = run_checks(home, Config(source="test"), ["home-modes"])
    data = json.loads(json.dumps([r.to_dict() for r in results]))
    assert data[0]["status"] == "pass" and data[0]["controls"]


def test_register_check_refuses_a_second_owner_of_an_id() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @register_check("home-modes", "dup", severity=Severity.LOW, controls=("AC-3",))
        def other(ctx: CheckContext) -> Outcome:
            return Outcome.passed("x")


def test_a_missing_check_module_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # One wheel ships every area: a check module that does not import is a broken install,
    # never silently skipped.
    missing = "trainguard.agent.checks.not_built_yet"
    monkeypatch.setattr(checks, "CHECK_MODULES", (*checks.CHECK_MODULES, missing))
    with pytest.raises(ModuleNotFoundError):
        all_checks()


def test_checks_config_reports_every_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text(
        "[checks]\nkek_max_age_days = 0\ndata_interfaces = ['eth0; rm -rf']\n"
        "checkpoint_dirs = ['relative/dir']\nmin_driver_version = 'new'\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(cfg, {})
    text = str(info.value)
    for key in ("kek_max_age_days", "data_interfaces", "relative/dir", "min_driver_version"):
        assert key in text


def test_checks_config_loads_from_file_and_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text("[checks]\ncheckpoint_dirs = ['/data/ckpt']\n")
    conf = load_config(cfg, {"TRAINGUARD_CHECKS_KEK_MAX_AGE_DAYS": "30"})
    checks_cfg = conf.section(ChecksConfig)
    assert checks_cfg.checkpoint_dirs == ("/data/ckpt",)
    assert checks_cfg.kek_max_age_days == 30
    assert ChecksConfig().validate() == []
