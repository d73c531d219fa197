"""Network posture checks: agent listener TLS and training-traffic isolation."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainguard.agent.checks import CheckContext, Status, run_checks
from trainguard.agent.checks.config import ChecksConfig
from trainguard.agent.checks.network import system_if_addrs
from trainguard.agent.config import AgentConfig
from trainguard.core.config import Config
from trainguard.core.home import Home

ADDRS = {
    "lo": ["127.0.0.1", "::1"],
    "eth0": ["8.8.4.4"],  # public uplink
    "ib0": ["10.20.0.5"],  # private fabric
    "wg0": ["10.99.0.5"],
}


def _root(tmp_path: Path, *, wg: bool = True, xfrm: bool = False) -> Path:
    root = tmp_path / "root"
    for name in ADDRS:
        d = root / "sys/class/net" / name
        d.mkdir(parents=True)
        (d / "uevent").write_text(f"INTERFACE={name}\n" + ("DEVTYPE=wireguard\n" if wg and name == "wg0" else ""))
    (root / "proc/net").mkdir(parents=True)
    if xfrm:
        (root / "proc/net/xfrm_stat").write_text("XfrmInError 0\n")
    return root


def ctx(
    home: Home,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    *,
    xfrm_out: str = "",
    agent: object | None = None,
    resolve: dict[str, list[str]] | None = None,
    **checks: object,
) -> CheckContext:
    sections: dict[str, object] = {"checks": dataclasses.replace(ChecksConfig(), **checks)}
    if agent is not None:
        sections["agent"] = agent
    calls: list[Sequence[str]] = []

    def runner(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        calls.append(argv)
        return 0, xfrm_out, ""

    return CheckContext(
        home=home,
        config=Config(source="test", sections=sections),
        environ=env or {},
        root=_root(tmp_path, xfrm=bool(xfrm_out)) if not (tmp_path / "root").exists() else tmp_path / "root",
        runner=runner,
        if_addrs=lambda: ADDRS,
        resolve=lambda host: (resolve or {}).get(host, []),
    )


def run(c: CheckContext, cid: str):  # noqa: ANN201
    (result,) = run_checks(c.home, c.config, [cid], context=c)
    return result


def test_undescribed_training_network_warns(home: Home, tmp_path: Path) -> None:
    r = run(ctx(home, tmp_path), "traffic-isolation")
    assert r.status is Status.WARN and "NCCL_SOCKET_IFNAME" in r.remediation


def test_single_node_on_a_private_interface_passes(home: Home, tmp_path: Path) -> None:
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "NCCL_SOCKET_IFNAME": "ib0",
           "GLOO_SOCKET_IFNAME": "ib0", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8"}
    r = run(ctx(home, tmp_path, env), "traffic-isolation")
    assert r.status is Status.PASS, r.summary
    assert r.evidence["data_interfaces"] == ["ib0"] and r.evidence["multi_node"] is False


def test_rendezvous_on_a_public_address_fails(home: Home, tmp_path: Path) -> None:
    env = {"MASTER_ADDR": "8.8.4.4", "NCCL_SOCKET_IFNAME": "ib0"}
    r = run(ctx(home, tmp_path, env), "traffic-isolation")
    assert r.status is Status.FAIL and "rendezvous" in r.summary


def test_rendezvous_host_name_is_resolved(home: Home, tmp_path: Path) -> None:
    env = {"PET_RDZV_ENDPOINT": "head.example:29400", "NCCL_SOCKET_IFNAME": "wg0"}
    r = run(ctx(home, tmp_path, env, resolve={"head.example": ["1.1.1.1"]}), "traffic-isolation")
    assert r.status is Status.FAIL and r.evidence["rendezvous_addresses"] == ["1.1.1.1"]


def test_data_interface_with_public_address_fails(home: Home, tmp_path: Path) -> None:
    env = {"MASTER_ADDR": "127.0.0.1", "NCCL_SOCKET_IFNAME": "eth"}  # NCCL prefix match
    r = run(ctx(home, tmp_path, env), "traffic-isolation")
    assert r.status is Status.FAIL and "eth0" in r.summary


def test_missing_interface_fails_and_exclusion_list_warns(home: Home, tmp_path: Path) -> None:
    r = run(ctx(home, tmp_path, {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "=ens9"}), "traffic-isolation")
    assert r.status is Status.FAIL and "does not exist" in r.summary
    r = run(ctx(home, tmp_path, {"MASTER_ADDR": "127.0.0.1", "NCCL_SOCKET_IFNAME": "^docker"}), "traffic-isolation")
    assert r.status is Status.WARN


def test_multi_node_without_encryption_warns(home: Home, tmp_path: Path) -> None:
    env = {"MASTER_ADDR": "10.20.0.1", "NCCL_SOCKET_IFNAME": "ib0", "WORLD_SIZE": "16",
           "LOCAL_WORLD_SIZE": "8"}
    r = run(ctx(home, tmp_path, env), "traffic-isolation")
    assert r.status is Status.WARN and "WireGuard" in r.summary
    assert r.evidence["multi_node"] is True


def test_multi_node_over_wireguard_passes(home: Home, tmp_path: Path) -> None:
    env = {"MASTER_ADDR": "10.99.0.1", "NCCL_SOCKET_IFNAME": "wg0", "GLOO_SOCKET_IFNAME": "wg0"}
    r = run(ctx(home, tmp_path, env), "traffic-isolation")
    assert r.status is Status.PASS and r.evidence["wireguard"] == ["wg0"]


def test_multi_node_under_ipsec_passes(home: Home, tmp_path: Path) -> None:
    _root(tmp_path, xfrm=True)
    env = {"MASTER_ADDR": "10.20.0.1", "NCCL_SOCKET_IFNAME": "ib0"}
    out = "src 10.20.0.5 dst 10.20.0.1 proto esp spi 0x1 reqid 1 mode tunnel\n"
    r = run(ctx(home, tmp_path, env, xfrm_out=out), "traffic-isolation")
    assert r.status is Status.PASS and r.evidence["ipsec"] is True


def test_config_describes_the_job_when_env_is_absent(home: Home, tmp_path: Path) -> None:
    c = ctx(home, tmp_path, data_interfaces=("ib0",), rendezvous_endpoint="10.20.0.1:29400", multi_node=True)
    r = run(c, "traffic-isolation")
    assert r.status is Status.WARN and r.evidence["data_interfaces"] == ["ib0"]


def test_system_if_addrs_reads_this_machine() -> None:
    addrs = system_if_addrs()
    assert "127.0.0.1" in addrs.get("lo", [])


# -- agent-tls -----------------------------------------------------------------------------


def _agent(**kw: Any) -> AgentConfig:
    return AgentConfig(**kw)


def test_no_tcp_listener_passes(home: Home, tmp_path: Path) -> None:
    r = run(ctx(home, tmp_path, agent=_agent()), "agent-tls")
    assert r.status is Status.PASS and "unix socket" in r.summary


def test_listener_without_certificates_fails(home: Home, tmp_path: Path) -> None:
    r = run(ctx(home, tmp_path, agent=_agent(listen="0.0.0.0:8443")), "agent-tls")
    assert r.status is Status.FAIL and "pki issue" in r.remediation


def test_listener_with_cluster_pki_is_mtls_13(home: Home, tmp_path: Path) -> None:
    from trainguard.core.fs import write_private
    from trainguard.crypto.pki import ClusterCA

    ca = ClusterCA.create(home.pki_dir, "c1")
    cert, key = ca.issue("node-1", "node")
    (home.pki_dir / "node.crt").write_bytes(cert)
    write_private(home.pki_dir / "node.key", key)
    r = run(ctx(home, tmp_path, agent=_agent(listen="0.0.0.0:8443")), "agent-tls")
    assert r.status is Status.PASS, r.summary
    assert r.evidence["minimum_version"] == "TLSv1_3" and r.evidence["client_cert_required"]
    r = run(ctx(home, tmp_path, agent=_agent(listen="0.0.0.0:8443", metrics_listen="0.0.0.0:9839")), "agent-tls")
    assert r.status is Status.WARN and "/metrics" in r.summary
