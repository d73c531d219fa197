"""The systemd unit: what `install-unit` writes and how systemd-analyze scores it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from trainguard.agent.systemd.unit import UnitOptions, render_unit, security_exposure


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def test_unit_is_notify_with_watchdog_and_hardening() -> None:
    d = _directives(render_unit())
    assert d["Type"] == ["notify"] and d["WatchdogSec"] == ["60s"]
    assert d["NoNewPrivileges"] == ["yes"] and d["ProtectSystem"] == ["strict"]
    assert d["ReadWritePaths"] == ["/var/lib/trainguard"] and d["StateDirectory"] == ["trainguard"]
    assert d["DevicePolicy"] == ["closed"] and "/dev/nvidiactl rw" in d["DeviceAllow"]
    assert d["CapabilityBoundingSet"] == [""] and d["PrivateUsers"] == ["no"]
    assert d["ExecStart"][0].endswith("agent run --home /var/lib/trainguard")


def test_allow_kill_and_credentials() -> None:
    d = _directives(
        render_unit(
            options=UnitOptions(allow_kill=True, credentials=(("kek", "/etc/tg/kek.cred"),))
        )
    )
    assert d["CapabilityBoundingSet"] == ["CAP_KILL"] and d["AmbientCapabilities"] == ["CAP_KILL"]
    assert d["LoadCredentialEncrypted"] == ["kek:/etc/tg/kek.cred"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("allow_kill", [False, True])
def test_exposure_at_most_2_5(tmp_path: Path, allow_kill: bool) -> None:
    unit = tmp_path / "trainguard-agent.service"
    unit.write_text(render_unit(options=UnitOptions(allow_kill=allow_kill)))
    exposure = security_exposure(unit)
    assert exposure is not None and exposure <= 2.5


def test_install_unit_cli(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    printed = cli("agent", "install-unit", "--print", "--home", tmp_path)
    assert printed.code == 0 and "Type=notify" in printed.stdout
    target = tmp_path / "units" / "trainguard-agent.service"
    wrote = cli("agent", "install-unit", "--path", target, "--allow-kill", "--home", tmp_path)
    assert wrote.code == 0, wrote.stderr
    assert "CapabilityBoundingSet=CAP_KILL" in target.read_text()
    assert "daemon-reload" in wrote.stderr
