"""Settings of the posture checks: the `[checks]` section of trainguard.toml."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

_VERSION = re.compile(r"^\d+(\.\d+)*$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


@dataclass(frozen=True)
class ChecksConfig:
    """What the posture checks compare the node against.

    Attributes:
        interval_s: how often the agent runs the checks.
        checkpoint_dirs: folders whose checkpoints must all be sealed (`TGSEAL` header).
        model_dirs: folders with models/artifacts (scanned by the integrity checks).
        checkpoint_suffixes: file suffixes treated as checkpoints; empty = every file.
        kek_max_age_days: rotation policy; a current KEK older than this (or than [crypto]
            kek_rotation_days, whichever is stricter) fails, within the last 10% it warns.
        cert_min_days_left: a node certificate expiring sooner than this, or with less than a
            third of its lifetime left, warns.
        allowed_gpu_users: login names whose processes may use the GPUs (both lists empty:
            the GPU-misuse detector's [anomaly] allowed_processes apply; without those the
            processes are listed and the check warns instead of failing).
        allowed_gpu_processes: process names (comm) that may use the GPUs.
        max_clock_offset_ms: a larger NTP/chrony offset fails the clock check.
        data_interfaces: interfaces that carry training traffic (NCCL/gloo), when not given by
            the job's GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME.
        rendezvous_endpoint: host[:port] of the torchrun rendezvous when the job env is unknown.
        multi_node: the training spans nodes, so the data plane needs WireGuard or IPsec.
        privileged_roles: roles whose members must have MFA enrolled (the default roles that
            hold privileged actions).
        min_driver_version: oldest acceptable NVIDIA driver ("550.54"); empty = any.
        agent_unit: the systemd unit whose hardening score is checked.
        max_unit_exposure: the highest acceptable `systemd-analyze security` exposure.
    """

    SECTION: ClassVar[str] = "checks"

    interval_s: float = 300.0
    checkpoint_dirs: tuple[str, ...] = ()
    model_dirs: tuple[str, ...] = ()
    checkpoint_suffixes: tuple[str, ...] = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".tgs")
    kek_max_age_days: int = 90
    cert_min_days_left: int = 14
    allowed_gpu_users: tuple[str, ...] = ()
    allowed_gpu_processes: tuple[str, ...] = ()
    max_clock_offset_ms: float = 500.0
    data_interfaces: tuple[str, ...] = ()
    rendezvous_endpoint: str = ""
    multi_node: bool = False
    privileged_roles: tuple[str, ...] = ("admin", "ml-engineer")
    min_driver_version: str = ""
    agent_unit: str = "trainguard-agent.service"
    max_unit_exposure: float = 2.5

    def validate(self) -> list[str]:
        problems: list[str] = []
        if self.interval_s < 5:
            problems.append(f"interval_s must be >= 5 seconds, got {self.interval_s}")
        if self.kek_max_age_days < 1:
            problems.append(f"kek_max_age_days must be >= 1, got {self.kek_max_age_days}")
        if self.cert_min_days_left < 0:
            problems.append(f"cert_min_days_left must be >= 0, got {self.cert_min_days_left}")
        if self.max_clock_offset_ms <= 0:
            problems.append(f"max_clock_offset_ms must be > 0, got {self.max_clock_offset_ms}")
        if not 0 <= self.max_unit_exposure <= 10:
            problems.append(f"max_unit_exposure must be within 0..10, got {self.max_unit_exposure}")
        for name in self.data_interfaces:
            if not _IFNAME.match(name):
                problems.append(f"data_interfaces: {name!r} is not an interface name")
        for d in (*self.checkpoint_dirs, *self.model_dirs):
            if not d.startswith(("/", "~")):
                problems.append(f"checkpoint/model folder {d!r} must be an absolute path")
        if self.min_driver_version and not _VERSION.match(self.min_driver_version):
            problems.append(f"min_driver_version {self.min_driver_version!r} is not like 550.54.15")
        return problems
