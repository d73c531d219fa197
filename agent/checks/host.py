"""Host checks: clock synchronisation; the hardening score of the agent's systemd unit."""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.agent.checks import CheckContext, Outcome, Severity, register_check

_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


@dataclass(frozen=True)
class KernelClock:
    """What adjtimex(2) reports (read-only call, modes=0)."""

    state: int
    status: int
    maxerror_us: int
    esterror_us: int

    @property
    def synchronised(self) -> bool:
        return self.state != _TIME_ERROR and not self.status & _STA_UNSYNC


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):  # struct timex, <sys/timex.h>
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long), ("shift", ctypes.c_int), ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int), ("_pad", ctypes.c_int * 11),
    ]


def kernel_clock() -> KernelClock | None:
    """The kernel's NTP state via adjtimex(2), or None where it cannot be read."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    t = _Timex()
    state = libc.adjtimex(ctypes.byref(t))
    if state < 0:
        return None
    return KernelClock(state, t.status, t.maxerror, t.esterror)


_CHRONY_OFFSET = re.compile(r"System time\s*:\s*([0-9.]+) seconds (fast|slow)")


def _run(ctx: CheckContext, argv: list[str]) -> tuple[int, str] | None:
    if ctx.which(argv[0]) is None:
        return None
    try:
        code, out, _ = ctx.runner(argv, 5.0)
    except (OSError, TimeoutError):
        return None
    return code, out


@register_check(
    "clock-sync",
    "The clock is synchronised (audit timestamps are trustworthy)",
    severity=Severity.MEDIUM,
    controls=("AU-8", "AU-8(1)", "SC-45"),
)
def clock_sync(ctx: CheckContext) -> Outcome:
    max_ms = float(ctx.checks.max_clock_offset_ms)
    evidence: dict[str, Any] = {"max_offset_ms": max_ms}
    chrony = _run(ctx, ["chronyc", "-n", "tracking"])
    if chrony and chrony[0] == 0 and (m := _CHRONY_OFFSET.search(chrony[1])):
        offset_ms = float(m.group(1)) * 1000
        evidence.update(source="chronyc", offset_ms=round(offset_ms, 3))
        if "Not synchronised" in chrony[1]:
            return Outcome.fail("chrony is not synchronised", evidence, "check `chronyc sources`")
        if offset_ms > max_ms:
            return Outcome.fail(
                f"clock offset {offset_ms:.0f} ms exceeds {max_ms:.0f} ms", evidence,
                "check the NTP sources (`chronyc sources -v`)",
            )
        return Outcome.passed(f"chrony synchronised, offset {offset_ms:.1f} ms", evidence)
    td = _run(ctx, ["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    if td and td[0] == 0 and td[1].strip() in ("yes", "no"):
        evidence["source"] = "timedatectl"
        if td[1].strip() == "yes":
            return Outcome.passed("systemd reports the clock as NTP-synchronised", evidence)
        return Outcome.fail(
            "systemd reports the clock as not synchronised", evidence,
            "enable NTP: `timedatectl set-ntp true` (or install chrony)",
        )
    kc = (ctx.adjtimex or kernel_clock)()
    if kc is not None:
        evidence.update(
            source="adjtimex", synchronised=kc.synchronised,
            maxerror_ms=kc.maxerror_us / 1000, esterror_ms=kc.esterror_us / 1000,
        )
        if kc.synchronised and kc.esterror_us / 1000 <= max_ms:
            return Outcome.passed("the kernel reports an NTP-disciplined clock", evidence)
    return Outcome.warn(
        "clock synchronisation cannot be confirmed (no chrony or timedatectl answer; the kernel "
        "clock is not marked synchronised)",
        evidence,
        "run an NTP client (chrony or systemd-timesyncd) on the node",
    )


_EXPOSURE = re.compile(r"Overall exposure level for \S+:\s*([0-9.]+)")


_UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system",
              "/lib/systemd/system")


def _unit_text(ctx: CheckContext) -> tuple[str, str, list[str]] | None:
    """(text, where, drop-ins) of the installed agent unit with its drop-ins appended in the
    order systemd applies them (lexical by file name, /etc before /run before /usr/lib), or
    None when no unit is installed. Local overrides are what runs, so they are what is scored."""
    name = ctx.checks.agent_unit
    main = next((ctx.path(f"{d}/{name}") for d in _UNIT_DIRS if ctx.path(f"{d}/{name}").is_file()),
                None)
    if main is None:
        return None
    dropins: dict[str, Path] = {}
    for d in reversed(_UNIT_DIRS):  # a file in /etc masks one of the same name further down
        folder = ctx.path(f"{d}/{name}.d")
        if folder.is_dir():
            for conf in folder.glob("*.conf"):
                dropins[conf.name] = conf
    ordered = [dropins[k] for k in sorted(dropins)]
    text = main.read_text(encoding="utf-8")
    for conf in ordered:
        text += "\n" + conf.read_text(encoding="utf-8")
    return text, str(main), [str(c) for c in ordered]


@register_check(
    "agent-unit-hardening",
    "The agent's systemd unit is sandboxed (systemd-analyze security)",
    severity=Severity.MEDIUM,
    controls=("CM-6", "CM-7", "AC-6", "SC-39"),
)
def agent_unit_hardening(ctx: CheckContext) -> Outcome:
    if ctx.which("systemd-analyze") is None:
        return Outcome.not_applicable("systemd-analyze is not installed (no systemd here)")
    found = _unit_text(ctx)
    if found is None:
        return Outcome.warn(
            "the agent unit is not installed",
            {"unit": "not installed", "searched": list(_UNIT_DIRS)},
            "install it with `trainguard agent install-unit` and run the agent under systemd",
        )
    text, where, dropins = found
    limit = float(ctx.checks.max_unit_exposure)
    with tempfile.TemporaryDirectory(prefix="tg-unit-") as tmp:
        path = Path(tmp) / ctx.checks.agent_unit
        path.write_text(text, encoding="utf-8")
        code, out, err = ctx.runner(["systemd-analyze", "security", "--offline=yes", str(path)], 30.0)
    m = _EXPOSURE.search(out)
    evidence: dict[str, Any] = {"unit": where, "dropins": dropins, "max_exposure": limit}
    if m is None:
        evidence["stderr"] = err.strip()[-400:]
        return Outcome.error(f"systemd-analyze gave no exposure score (exit {code})", evidence)
    exposure = float(m.group(1))
    evidence["exposure"] = exposure
    if exposure > limit:
        return Outcome.fail(
            f"unit exposure {exposure} exceeds {limit}", evidence,
            "reinstall the shipped unit with `trainguard agent install-unit`, or review local "
            "overrides with `systemd-analyze security trainguard-agent.service`",
        )
    return Outcome.passed(f"unit exposure {exposure} (limit {limit})", evidence)
