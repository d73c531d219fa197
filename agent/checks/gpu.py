"""GPU checks: NVIDIA driver presence and version; foreign processes on the GPUs."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from trainguard.agent.checks import CheckContext, Outcome, Severity, register_check
from trainguard.agent.telemetry import procfs
from trainguard.agent.telemetry.nvml import NvmlBackend, NvmlUnavailable, PynvmlBackend
from trainguard.anomaly.config import AnomalyConfig

_DRIVER = re.compile(r"Kernel Module\s+(?:for\s+\S+\s+)?([0-9]+(?:\.[0-9]+)+)")


@contextlib.contextmanager
def _backend(ctx: CheckContext) -> Iterator[NvmlBackend]:
    """The injected backend, or a real one that is shut down again after the check."""
    if ctx.nvml is not None:
        yield ctx.nvml
        return
    real = PynvmlBackend(pcie=False)
    try:
        yield real
    finally:
        real.close()


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


@register_check(
    "nvidia-driver",
    "The NVIDIA driver is loaded, answers NVML and is recent enough",
    severity=Severity.MEDIUM,
    controls=("CM-8", "SI-2"),
)
def nvidia_driver(ctx: CheckContext) -> Outcome:
    vfile = ctx.path("/proc/driver/nvidia/version")
    kernel = None
    if vfile.is_file():
        m = _DRIVER.search(vfile.read_text(errors="replace"))
        kernel = m.group(1) if m else "unknown"
    devices = sorted(p.name for p in ctx.path("/dev").glob("nvidia[0-9]*"))
    evidence: dict[str, Any] = {"kernel_module": kernel, "device_nodes": devices}
    try:
        with _backend(ctx) as nvml:
            lib = nvml.driver_version()
            count = nvml.device_count()
    except NvmlUnavailable as exc:
        evidence["nvml_error"] = exc.message
        if kernel is None and not devices:
            return Outcome.not_applicable("no NVIDIA driver or GPU on this node", evidence)
        return Outcome.fail(
            "the NVIDIA driver is present but NVML does not answer", evidence,
            "check `nvidia-smi`; a driver/library version mismatch needs a reboot or reinstall",
        )
    evidence.update(nvml_driver=lib, gpus=count)
    wanted = ctx.checks.min_driver_version
    if wanted and _version_tuple(lib) < _version_tuple(wanted):
        evidence["min_driver_version"] = wanted
        return Outcome.fail(
            f"driver {lib} is older than {wanted}", evidence,
            "update the NVIDIA driver (security bulletins: nvidia.com/security)",
        )
    return Outcome.passed(f"driver {lib}, {count} GPU(s)", evidence)


def _users(ctx: CheckContext) -> dict[int, str]:
    out: dict[int, str] = {}
    try:
        text = ctx.path("/etc/passwd").read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) > 2 and parts[2].isdigit():
            out.setdefault(int(parts[2]), parts[0])
    return out


def _allow_lists(ctx: CheckContext) -> tuple[set[str], set[str], str]:
    """[checks] allowed_gpu_users / allowed_gpu_processes; when both are empty, the GPU-misuse
    detector's [anomaly] allowed_processes, so the check and the detector agree."""
    cfg = ctx.checks
    users, names = set(cfg.allowed_gpu_users), set(cfg.allowed_gpu_processes)
    if users or names:
        return users, names, "checks"
    fallback = set(ctx.config.section(AnomalyConfig).allowed_processes)
    return users, fallback, "anomaly" if fallback else "none"


@register_check(
    "gpu-foreign-processes",
    "Only allowed users and programs run on the GPUs",
    severity=Severity.HIGH,
    controls=("SI-4", "AC-3", "CM-7(2)"),
    atlas=("AML.T0034",),
)
def gpu_foreign_processes(ctx: CheckContext) -> Outcome:
    try:
        with _backend(ctx) as nvml:
            samples = [nvml.read(i) for i in range(nvml.device_count())]
    except NvmlUnavailable as exc:
        return Outcome.not_applicable(f"no GPUs to inspect ({exc.message})")
    users, names, source = _allow_lists(ctx)
    passwd = _users(ctx)
    seen: list[dict[str, Any]] = []
    foreign: list[dict[str, Any]] = []
    for g in samples:
        for p in g.processes:
            info = procfs.read_process(ctx.path("/proc"), p.pid)
            user = passwd.get(info.uid, str(info.uid)) if info else "?"
            name = (info.name if info else "") or p.name.rsplit("/", 1)[-1]
            row = {"gpu": g.index, "pid": p.pid, "user": user, "name": name, "used_bytes": p.used_bytes}
            seen.append(row)
            if (users or names) and user not in users and name not in names:
                foreign.append(row)
    evidence = {"allowed_users": sorted(users), "allowed_processes": sorted(names),
                "allow_list_from": source, "processes": seen, "foreign": foreign}
    if foreign:
        listed = ", ".join(f"pid {r['pid']} {r['name']} ({r['user']}) on GPU {r['gpu']}" for r in foreign[:5])
        return Outcome.fail(
            f"{len(foreign)} foreign process(es) on the GPUs: {listed}", evidence,
            "stop them (the `kill` hook action does this on a gpu-misuse incident) and find out "
            "who started them",
        )
    if seen and not (users or names):
        return Outcome.warn(
            f"{len(seen)} GPU process(es) and no allow-list to judge them", evidence,
            "set [checks] allowed_gpu_users or allowed_gpu_processes",
        )
    return Outcome.passed(f"{len(seen)} GPU process(es), all allowed", evidence)
