"""Network checks: the agent listener's TLS settings; isolation of training traffic.

torch's data plane (gloo, NCCL) is unencrypted, so the training traffic must stay on an isolated
interface or go through WireGuard / IPsec. The job's environment (MASTER_ADDR, PET_RDZV_ENDPOINT,
GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME, WORLD_SIZE, LOCAL_WORLD_SIZE, PET_NNODES) is passed in
through `CheckContext.environ`; without it the `[checks]` settings describe the job.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import ssl
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainguard.agent.checks import CheckContext, Outcome, Severity, Status, register_check
from trainguard.agent.config import AgentConfig
from trainguard.core.errors import TrainguardError

_SIOCGIFADDR = 0x8915


@register_check(
    "agent-tls",
    "The agent's network listener requires mutual TLS 1.3",
    severity=Severity.HIGH,
    controls=("SC-8", "SC-8(1)", "SC-13", "IA-3", "AC-17(2)"),
)
def agent_tls(ctx: CheckContext) -> Outcome:
    agent = ctx.config.section(AgentConfig)
    listen, metrics = agent.listen, agent.metrics_listen
    evidence: dict[str, Any] = {"listen": listen or None, "metrics_listen": metrics or None}
    warnings: list[str] = []
    if metrics and not _is_loopback_host(_host_of(metrics)):
        warnings.append(f"/metrics is served without authentication on {metrics}")
    if listen:
        failure = _tls_failure(ctx, evidence)
        if failure:
            return Outcome.fail(
                failure, evidence,
                "issue the node certificate (`trainguard pki issue`) and keep the TLS defaults",
            )
        if not (ctx.home.pki_dir / "crl.pem").is_file():
            warnings.append("no crl.pem: revoked client certificates would be accepted")
        summary = f"mTLS 1.3 on {listen}"
    else:
        summary = "no TCP listener; the API is on the unix socket only"
    if warnings:
        return Outcome.warn(
            "; ".join(warnings), evidence,
            "bind metrics_listen to 127.0.0.1 (scrape through a local proxy) and publish a CRL "
            "with `trainguard pki revoke`",
        )
    return Outcome.passed(summary, evidence)


def _tls_failure(ctx: CheckContext, evidence: dict[str, Any]) -> str | None:
    """Build the server context the agent would use and say what is wrong with it, if anything."""
    from trainguard.crypto.pki import server_context

    pki = ctx.home.pki_dir
    crl = pki / "crl.pem"
    try:
        tls = server_context(
            pki / "node.crt", pki / "node.key", pki / "ca.crt", crl if crl.is_file() else None
        )
    except TrainguardError as exc:
        evidence["error"] = exc.message
        return "the listener's TLS material cannot be loaded"
    evidence.update(
        minimum_version=tls.minimum_version.name,
        maximum_version=tls.maximum_version.name,
        client_cert_required=tls.verify_mode == ssl.CERT_REQUIRED,
    )
    if tls.minimum_version != ssl.TLSVersion.TLSv1_3:
        return f"the listener accepts {tls.minimum_version.name} (TLS 1.3 only is required)"
    if tls.verify_mode != ssl.CERT_REQUIRED:
        return "the listener does not require client certificates"
    return None


def _host_of(endpoint: str) -> str:
    """host of "host:port", "[v6]:port", "v6" or "host"."""
    endpoint = endpoint.strip()
    if endpoint.startswith("["):
        return endpoint[1:].partition("]")[0]
    if endpoint.count(":") == 1:
        return endpoint.partition(":")[0]
    return endpoint


def _is_loopback_host(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_public(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%")[0]).is_global
    except ValueError:
        return False


def system_if_addrs(root: Path = Path("/")) -> dict[str, list[str]]:
    """Interface -> addresses: IPv4 by ioctl, IPv6 from /proc/net/if_inet6. No subprocess."""
    out: dict[str, list[str]] = {}
    net = root / "sys/class/net"
    names = sorted(p.name for p in net.iterdir()) if net.is_dir() else []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            out[name] = []
            with contextlib.suppress(OSError):
                req = struct.pack("256s", name.encode()[:15])
                res = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)
                out[name].append(socket.inet_ntoa(res[20:24]))
    inet6 = root / "proc/net/if_inet6"
    if inet6.is_file():
        for line in inet6.read_text().splitlines():
            cols = line.split()
            if len(cols) >= 6:
                raw = cols[0]
                addr = ipaddress.IPv6Address(bytes.fromhex(raw))
                out.setdefault(cols[5], []).append(str(addr))
    return out


def _resolve(host: str) -> list[str]:
    try:
        return sorted({str(ai[4][0]) for ai in socket.getaddrinfo(host, None)})
    except (socket.gaierror, UnicodeError):
        return []


def _is_wireguard(ctx: CheckContext, iface: str) -> bool:
    uevent = ctx.path(f"/sys/class/net/{iface}/uevent")
    with contextlib.suppress(OSError):
        if "DEVTYPE=wireguard" in uevent.read_text():
            return True
    return iface.startswith("wg")


def _ipsec_states(ctx: CheckContext) -> bool | None:
    """True when IPsec SAs exist, False when none, None when it cannot be told."""
    if not ctx.path("/proc/net/xfrm_stat").exists():
        return False
    try:
        code, out, _ = ctx.runner(["ip", "-o", "xfrm", "state"], 5.0)
    except (FileNotFoundError, OSError, TimeoutError):
        return None
    return bool(out.strip()) if code == 0 else None


def _match(spec: str, names: Sequence[str]) -> list[str]:
    """Interfaces NCCL/gloo would pick for one entry of *_SOCKET_IFNAME (prefix unless '=')."""
    if spec.startswith("="):
        return [n for n in names if n == spec[1:]]
    return [n for n in names if n == spec or n.startswith(spec)]


def _multi_node(env: Mapping[str, str], cfg: Any, rdzv_host: str) -> bool:
    if cfg.multi_node:
        return True
    with contextlib.suppress(ValueError):
        if int(env.get("WORLD_SIZE", "1")) > int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", "1"))):
            return True
    with contextlib.suppress(ValueError):
        if int(env.get("PET_NNODES", "1").split(":")[-1]) > 1:
            return True
    return bool(rdzv_host) and not _is_loopback_host(rdzv_host)


@register_check(
    "traffic-isolation",
    "Training traffic stays on an isolated or encrypted interface",
    severity=Severity.HIGH,
    controls=("SC-7", "SC-8", "AC-4"),
)
def training_isolation(ctx: CheckContext) -> Outcome:
    env, cfg = ctx.environ, ctx.checks
    endpoint = env.get("MASTER_ADDR") or env.get("PET_RDZV_ENDPOINT") or cfg.rendezvous_endpoint
    rdzv_host = _host_of(endpoint) if endpoint else ""
    specs = [s.strip() for key in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")
             for s in env.get(key, "").split(",") if s.strip()]
    if not specs:
        specs = list(cfg.data_interfaces)
    if not endpoint and not specs and not cfg.multi_node:
        return Outcome.warn(
            "the training network is not described; torch picks an interface itself",
            {},
            "set [checks] data_interfaces (and rendezvous_endpoint) or export "
            "NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME for the job",
        )
    addrs = {k: list(v) for k, v in (ctx.if_addrs or (lambda: system_if_addrs(ctx.root)))().items()}
    resolve = ctx.resolve or _resolve
    findings: list[tuple[Status, str]] = []
    evidence: dict[str, Any] = {"rendezvous": endpoint or None, "interface_specs": specs}
    if rdzv_host:
        rdzv_addrs = [rdzv_host] if _ip(rdzv_host) else list(resolve(rdzv_host))
        evidence["rendezvous_addresses"] = rdzv_addrs
        public = [a for a in rdzv_addrs if _is_public(a)]
        if public:
            findings.append((Status.FAIL, f"the rendezvous {rdzv_host} is on a public address {public[0]}"))
    chosen: list[str] = []
    if not specs:
        findings.append((Status.WARN, "NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME are not set"))
    for spec in specs:
        if spec.startswith("^"):
            findings.append((Status.WARN, f"{spec!r} excludes interfaces instead of pinning one"))
            continue
        matched = _match(spec, sorted(addrs))
        if not matched:
            findings.append((Status.FAIL, f"data interface {spec!r} does not exist"))
        chosen.extend(matched)
    wg = sorted({i for i in chosen if _is_wireguard(ctx, i)})
    for iface in sorted(set(chosen) - set(wg)):
        public = [a for a in addrs.get(iface, []) if _is_public(a)]
        if public:
            findings.append((Status.FAIL, f"data interface {iface} has a public address {public[0]}"))
    multi = _multi_node(env, cfg, rdzv_host)
    ipsec = _ipsec_states(ctx) if multi and not wg else None
    evidence.update(data_interfaces=sorted(set(chosen)), wireguard=wg, ipsec=ipsec, multi_node=multi)
    if multi and not wg and not ipsec:
        findings.append((Status.WARN, "multi-node traffic is neither on WireGuard nor under IPsec"))
    return _combine(findings, evidence)


def _ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _combine(findings: list[tuple[Status, str]], evidence: dict[str, Any]) -> Outcome:
    evidence["findings"] = [m for _, m in findings]
    remedy = (
        "pin NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME to a private interface, keep the rendezvous "
        "on a private address, and carry multi-node traffic over WireGuard or IPsec"
    )
    if any(s is Status.FAIL for s, _ in findings):
        return Outcome.fail("; ".join(m for s, m in findings if s is Status.FAIL), evidence, remedy)
    if findings:
        return Outcome.warn("; ".join(m for _, m in findings), evidence, remedy)
    return Outcome.passed("training traffic is on a private or encrypted interface", evidence)
