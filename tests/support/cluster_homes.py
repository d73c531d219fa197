"""Homes of one cluster, set up the way an operator does it with the CLI (for multi-node tests).

The first node's home (`trainguard init`) holds the cluster CA and the cluster KEK. Every other
node is initialised with `trainguard init` too, then joins: it receives the cluster KEK (the
keyring), the CA's public certificate and CRL, and a node certificate from `trainguard pki issue
NAME --kind node` on the CA's home; its own CA key goes. Its admin's TOTP secret was encrypted
under the node's first KEK, so the admin is enrolled again under the cluster KEK (what `init
--force` does for the admin) and logs in with the new secret. Every node keeps its own node
signing key, audit log, policy and users.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.policy_env import secret_of

__all__ = ["ClusterNode", "cluster_homes", "login"]


@dataclass(frozen=True)
class ClusterNode:
    name: str
    home: Path
    otpauth_uri: str  # the admin's enrolment on this node (its TOTP secret)


def _install_cert(issued: Path, name: str, pki: Path) -> None:
    for suffix, target in ((".crt", "node.crt"), (".key", "node.key")):
        (pki / target).unlink(missing_ok=True)
        shutil.copy2(issued / f"{name}{suffix}", pki / target)
    (pki / "node.key").chmod(0o600)


def _reenrol_admin(home_root: Path, admin: str) -> str:
    from trainguard.agent.api.client import open_sink
    from trainguard.core.config import load_config
    from trainguard.core.home import Home
    from trainguard.crypto.keyring import open_keyring
    from trainguard.crypto.signing import SigningKey
    from trainguard.policy.bootstrap import bootstrap_policy

    home = Home(home_root)
    audit = open_sink(home, load_config(home.config_path, {}))
    try:
        info = bootstrap_policy(home, open_keyring(home), SigningKey.load(home.node_signing_key),
                                admin, audit)
    finally:
        audit.close()
    return str(info["otpauth_uri"])


def cluster_homes(cli: Callable[..., Any], root: Path, nodes: tuple[str, ...], *,
                  cluster: str = "c1", admin: str = "alice") -> list[ClusterNode]:
    """One home per node under `root`; the first one holds the cluster CA."""
    out: list[ClusterNode] = []
    issued = root / "issued"
    head = root / nodes[0]
    for name in nodes:
        home = root / name
        init = cli("init", "--home", home, "--cluster", cluster, "--node", name, "--admin", admin,
                   "--format", "json")
        assert init.code == 0, init.stderr
        uri = init.json()["admin"]["otpauth_uri"]
        got = cli("pki", "issue", name, "--kind", "node", "--home", head, "--out", issued)
        assert got.code == 0, got.stderr
        pki = home / "pki"
        if home != head:
            for f in ("ca.key", "index.json", "ca.crt", "crl.pem"):
                (pki / f).unlink(missing_ok=True)
            for f in ("ca.crt", "crl.pem"):  # public: what every node of the cluster holds
                shutil.copy2(head / "pki" / f, pki / f)
            for f in (home / "keys").glob("k*"):  # keyring.json, kek-v1.key: not the node key
                f.unlink()
            for f in (head / "keys").glob("k*"):
                shutil.copy2(f, home / "keys" / f.name)
            uri = _reenrol_admin(home, admin)
        _install_cert(issued, name, pki)
        out.append(ClusterNode(name, home, uri))
    return out


_LAST_STEP: dict[str, int] = {}


def login(cli: Callable[..., Any], node: ClusterNode, user: str = "alice") -> None:
    """`trainguard login` with a code of the node's TOTP secret (fresh MFA; a launch needs a
    second factor within the step-up window). A code is accepted once: a second login in the
    same 30 s step waits for the next one."""
    import time

    import pyotp

    totp = pyotp.TOTP(secret_of(node.otpauth_uri))
    while int(time.time()) // 30 <= _LAST_STEP.get(node.otpauth_uri, -1):
        time.sleep(1)
    _LAST_STEP[node.otpauth_uri] = int(time.time()) // 30
    code = totp.at(_LAST_STEP[node.otpauth_uri] * 30)
    out = cli("login", "--home", node.home, "--user", user, "--otp", code, "--format", "json")
    assert out.code == 0, out.stderr
