"""Host posture checks: clock synchronisation, unit hardening, NVIDIA driver, GPU processes."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from trainguard.agent.checks import CheckContext, Status, run_checks, subprocess_runner
from trainguard.agent.checks.config import ChecksConfig
from trainguard.agent.checks.host import KernelClock, kernel_clock
from trainguard.agent.telemetry.nvml import FakeNvml
from trainguard.anomaly.config import AnomalyConfig
from trainguard.core.config import Config
from trainguard.core.home import Home

Outputs = dict[str, tuple[int, str, str]]


def fake_runner(outputs: Outputs) -> Callable[[Sequence[str], float], tuple[int, str, str]]:
    def run(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        if argv[0] not in outputs:
            raise FileNotFoundError(argv[0])
        return outputs[argv[0]]

    return run


def ctx(
    home: Home,
    root: Path,
    *,
    outputs: Outputs | None = None,
    adjtimex: KernelClock | None = None,
    nvml: Any = None,
    runner: Any = None,
    **checks: object,
) -> CheckContext:
    outs = outputs or {}
    return CheckContext(
        home=home,
        config=Config(source="test", sections={"checks": dataclasses.replace(ChecksConfig(), **checks)}),
        root=root,
        runner=runner or fake_runner(outs),
        which=lambda name: f"/usr/bin/{name}" if name in outs or runner else None,
        adjtimex=lambda: adjtimex,
        nvml=nvml if nvml is not None else FakeNvml(init_error="NVML Shared Library Not Found"),
    )


def run(c: CheckContext, cid: str):  # noqa: ANN201
    (result,) = run_checks(c.home, c.config, [cid], context=c)
    return result


# -- clock-sync ----------------------------------------------------------------------------

CHRONY = "Reference ID    : C0A80001\nSystem time     : {} seconds fast of NTP time\nLeap status     : Normal\n"


def test_chrony_offset_within_and_beyond_limit(home: Home, tmp_path: Path) -> None:
    r = run(ctx(home, tmp_path, outputs={"chronyc": (0, CHRONY.format("0.000120"), "")}), "clock-sync")
    assert r.status is Status.PASS and r.evidence["offset_ms"] == 0.12
    r = run(ctx(home, tmp_path, outputs={"chronyc": (0, CHRONY.format("2.5"), "")}), "clock-sync")
    assert r.status is Status.FAIL and "2500 ms" in r.summary


def test_timedatectl_answer(home: Home, tmp_path: Path) -> None:
    assert run(ctx(home, tmp_path, outputs={"timedatectl": (0, "yes\n", "")}), "clock-sync").status is Status.PASS
    assert run(ctx(home, tmp_path, outputs={"timedatectl": (0, "no\n", "")}), "clock-sync").status is Status.FAIL


def test_kernel_clock_state_decides_when_no_client_answers(home: Home, tmp_path: Path) -> None:
    down = {"timedatectl": (1, "", "System has not been booted with systemd")}
    synced = KernelClock(state=0, status=0x2001, maxerror_us=20_000, esterror_us=300)
    assert run(ctx(home, tmp_path, outputs=down, adjtimex=synced), "clock-sync").status is Status.PASS
    unsynced = KernelClock(state=5, status=0x40, maxerror_us=16_000_000, esterror_us=16_000_000)
    r = run(ctx(home, tmp_path, outputs=down, adjtimex=unsynced), "clock-sync")
    assert r.status is Status.WARN and "chrony" in r.remediation


def test_kernel_clock_reads_this_machine() -> None:
    kc = kernel_clock()
    assert kc is not None and 0 <= kc.state <= 5


# -- agent-unit-hardening ------------------------------------------------------------------

ANALYZE = "NAME DESCRIPTION EXPOSURE\n...\n→ Overall exposure level for trainguard-agent.service: {} OK\n"


def _installed(root: Path, text: str = "[Service]\nExecStart=/bin/true\n") -> None:
    d = root / "etc/systemd/system"
    d.mkdir(parents=True)
    (d / "trainguard-agent.service").write_text(text)


def test_unit_hardening_not_applicable_without_systemd(home: Home, tmp_path: Path) -> None:
    _installed(tmp_path)
    assert run(ctx(home, tmp_path), "agent-unit-hardening").status is Status.NOT_APPLICABLE


def test_unit_exposure_against_the_limit(home: Home, tmp_path: Path) -> None:
    _installed(tmp_path)
    ok = {"systemd-analyze": (0, ANALYZE.format("1.9"), "")}
    r = run(ctx(home, tmp_path, outputs=ok), "agent-unit-hardening")
    assert r.status is Status.PASS and r.evidence["exposure"] == 1.9
    bad = {"systemd-analyze": (0, ANALYZE.format("9.2"), "")}
    assert run(ctx(home, tmp_path, outputs=bad), "agent-unit-hardening").status is Status.FAIL
    garbage = {"systemd-analyze": (1, "", "Failed to load unit")}
    assert run(ctx(home, tmp_path, outputs=garbage), "agent-unit-hardening").status is Status.ERROR


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_real_systemd_analyze_scores_an_unhardened_unit(home: Home, tmp_path: Path) -> None:
    _installed(tmp_path)
    r = run(ctx(home, tmp_path, runner=subprocess_runner), "agent-unit-hardening")
    assert r.status is Status.FAIL and r.evidence["exposure"] > 5


# -- nvidia-driver -------------------------------------------------------------------------


def _driver_file(root: Path) -> None:
    d = root / "proc/driver/nvidia"
    d.mkdir(parents=True)
    (d / "version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n"
    )


def test_driver_not_applicable_on_a_cpu_node(home: Home, tmp_path: Path) -> None:
    assert run(ctx(home, tmp_path), "nvidia-driver").status is Status.NOT_APPLICABLE


def test_driver_present_but_nvml_broken_fails(home: Home, tmp_path: Path) -> None:
    _driver_file(tmp_path)
    r = run(ctx(home, tmp_path), "nvidia-driver")
    assert r.status is Status.FAIL and r.evidence["kernel_module"] == "550.54.15"


def test_driver_version_against_the_minimum(home: Home, tmp_path: Path) -> None:
    _driver_file(tmp_path)
    fake = FakeNvml(2, driver="550.54.15")
    r = run(ctx(home, tmp_path, nvml=fake), "nvidia-driver")
    assert r.status is Status.PASS and r.evidence["gpus"] == 2
    r = run(ctx(home, tmp_path, nvml=fake, min_driver_version="550.90.07"), "nvidia-driver")
    assert r.status is Status.FAIL and "older" in r.summary


# -- gpu-foreign-processes -----------------------------------------------------------------


def _procs(root: Path, table: dict[int, tuple[str, int]]) -> None:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\ntrain:x:1001:1001::/h:/bin/sh\nmallory:x:1002:1002::/h:/bin/sh\n")
    for pid, (name, uid) in table.items():
        d = root / "proc" / str(pid)
        d.mkdir(parents=True)
        (d / "status").write_text(f"Name:\t{name}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")


def test_foreign_process_on_a_gpu_fails(home: Home, tmp_path: Path) -> None:
    _procs(tmp_path, {100: ("python3", 1001), 200: ("xmrig", 1002)})
    fake = FakeNvml(2)
    fake.set(0, processes=[(100, 30 << 30, "python3")])
    fake.set(1, processes=[(200, 2 << 30, "/tmp/xmrig")])
    r = run(ctx(home, tmp_path, nvml=fake, allowed_gpu_users=("train",)), "gpu-foreign-processes")
    assert r.status is Status.FAIL
    assert r.evidence["foreign"] == [
        {"gpu": 1, "pid": 200, "user": "mallory", "name": "xmrig", "used_bytes": 2 << 30}
    ]
    assert "AML.T0034" in r.atlas


def test_allowed_processes_pass_and_no_allowlist_warns(home: Home, tmp_path: Path) -> None:
    _procs(tmp_path, {100: ("python3", 1001)})
    fake = FakeNvml(1)
    fake.set(0, processes=[(100, 30 << 30, "python3")])
    assert run(ctx(home, tmp_path, nvml=fake, allowed_gpu_processes=("python3",)), "gpu-foreign-processes").status is Status.PASS
    assert run(ctx(home, tmp_path, nvml=FakeNvml(1)), "gpu-foreign-processes").status is Status.PASS
    # Without [checks] lists the GPU-misuse detector's allow-list applies ...
    r = run(ctx(home, tmp_path, nvml=fake), "gpu-foreign-processes")
    assert r.status is Status.PASS and r.evidence["allow_list_from"] == "anomaly"
    # ... and with no allow-list anywhere the processes are listed with a warning.
    c = ctx(home, tmp_path, nvml=fake)
    sections = {**c.config.sections, "anomaly": dataclasses.replace(AnomalyConfig(), allowed_processes=())}
    c = dataclasses.replace(c, config=Config(source="test", sections=sections))
    assert run(c, "gpu-foreign-processes").status is Status.WARN


def test_detector_allow_list_flags_a_miner_by_default(home: Home, tmp_path: Path) -> None:
    _procs(tmp_path, {200: ("xmrig", 1001)})
    fake = FakeNvml(1)
    fake.set(0, processes=[(200, 2 << 30, "xmrig")])
    r = run(ctx(home, tmp_path, nvml=fake), "gpu-foreign-processes")
    assert r.status is Status.FAIL and r.evidence["foreign"][0]["name"] == "xmrig"


def test_no_gpu_is_not_applicable(home: Home, tmp_path: Path) -> None:
    assert run(ctx(home, tmp_path), "gpu-foreign-processes").status is Status.NOT_APPLICABLE


def test_a_missing_unit_says_not_installed_not_pass(home: Home, tmp_path: Path) -> None:
    """Regression: with no unit installed the check scored the unit the agent would install
    and said "pass"; nothing hardened runs then."""
    ok = {"systemd-analyze": (0, ANALYZE.format("1.9"), "")}
    r = run(ctx(home, tmp_path, outputs=ok), "agent-unit-hardening")
    assert r.status is Status.WARN and r.evidence["unit"] == "not installed"
    assert "not installed" in r.summary


def test_drop_ins_are_scored_with_the_unit(home: Home, tmp_path: Path) -> None:
    """A local override that loosens the sandbox is what runs, so it is what is scored."""
    _installed(tmp_path, "[Service]\nExecStart=/bin/true\nProtectSystem=strict\n")
    d = tmp_path / "etc/systemd/system/trainguard-agent.service.d"
    d.mkdir()
    (d / "50-debug.conf").write_text("[Service]\nProtectSystem=no\n")
    (d / "10-first.conf").write_text("[Service]\nPrivateTmp=no\n")
    seen: list[str] = []

    def runner(cmd: list[str], timeout: float) -> tuple[int, str, str]:
        seen.append(Path(cmd[-1]).read_text())
        return 0, ANALYZE.format("1.9"), ""

    r = run(ctx(home, tmp_path, runner=runner), "agent-unit-hardening")
    assert r.status is Status.PASS and [Path(p).name for p in r.evidence["dropins"]] == [
        "10-first.conf", "50-debug.conf"]
    text = seen[0]
    assert text.index("ProtectSystem=strict") < text.index("PrivateTmp=no") < text.index(
        "ProtectSystem=no")
