"""The agent renews its node certificate at 2/3 of its lifetime, driven by the daemon's real
cycles on an injected clock (no sleeping): with the cluster CA key in the home it re-issues and
tells the TLS listener to reload; without it, it records once that renewal is due."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from support import make_home
from trainguard.agent.api.tls import ServerTls
from trainguard.agent.daemon import Agent
from trainguard.agent.telemetry.collector import FakeNvml, TelemetryCollector
from trainguard.core.config import load_config
from trainguard.core.fs import write_private
from trainguard.core.home import Home
from trainguard.crypto.pki import ClusterCA

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class SpyTls(ServerTls):
    """The real listener material, counting forced reloads."""

    forced = 0

    def reload(self, *, force: bool = False) -> bool:
        SpyTls.forced += int(force)
        return super().reload(force=force)


def _pki_home(root: Path, clock: Clock) -> Home:
    home = make_home(root, node="gpu-node-3", keyring=False)
    (root / "proc" / "net").mkdir(parents=True)
    (root / "proc" / "stat").write_text("cpu  10 0 10 20 0 0 0 0\n")
    (root / "proc" / "meminfo").write_text("MemTotal: 1000 kB\nMemAvailable: 500 kB\n")
    (root / "proc" / "net" / "dev").write_text("h\nh\n  eth0: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n")
    ca = ClusterCA.create(home.pki_dir, "lab", clock=clock)
    cert, key = ca.issue("gpu-node-3", "node", dns_names=("localhost",))
    write_private(home.pki_dir / "node.crt", cert, mode=0o644)
    write_private(home.pki_dir / "node.key", key)
    return home


def _agent(home: Home, clock: Clock) -> Agent:
    telemetry = TelemetryCollector(nvml=FakeNvml(devices=0), proc_root=home.root / "proc",
                                   clock=clock)
    return Agent(home, load_config(home.config_path, {}), clock=clock, checks=lambda h, c: [],
                 telemetry=telemetry)


def _cert(home: Home) -> x509.Certificate:
    return x509.load_pem_x509_certificate((home.pki_dir / "node.crt").read_bytes())


def _pki_entries(agent: Agent) -> list[tuple[str, dict]]:
    return [(e.kind, e.data) for e in agent.audit.entries(kind="pki.*")]


def test_renews_at_two_thirds_of_the_lifetime_and_reloads_the_listener(tmp_path: Path):
    clock = Clock()
    home = _pki_home(tmp_path / "h", clock)
    old = _cert(home)
    agent = _agent(home, clock)
    agent.tls = SpyTls(home.pki_dir / "node.crt", home.pki_dir / "node.key",
                       home.pki_dir / "ca.crt", home.pki_dir / "crl.pem")
    SpyTls.forced = 0
    try:
        for hours in (1, 8, 15.9):  # before 2/3 of 24 h: nothing happens
            clock.now = T0 + hours * HOUR
            assert not agent.cycle().errors
        assert _pki_entries(agent) == [] and _cert(home).serial_number == old.serial_number

        clock.now = T0 + 16.1 * HOUR
        assert not agent.cycle().errors
        new = _cert(home)
        clock.now += 60
        assert not agent.cycle().errors  # the fresh certificate is not renewed again
        entries = _pki_entries(agent)
    finally:
        agent.close()
    assert new.serial_number != old.serial_number
    assert entries == [("pki.node-renewed", {
        "node": "gpu-node-3", "old_serial": format(old.serial_number, "x"),
        "serial": format(new.serial_number, "x"), "not_after": new.not_valid_after_utc.isoformat(),
        "lifetime_hours": 24.0})]
    assert SpyTls.forced == 1
    # same identity and names, the same 24 h lifetime from the (injected) renewal time
    renewed_at = dt.datetime.fromtimestamp(T0 + 16.1 * HOUR, dt.UTC)
    assert new.not_valid_after_utc - renewed_at == dt.timedelta(hours=24)
    assert new.subject == old.subject
    san = new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://lab/node/gpu-node-3"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    ca = x509.load_pem_x509_certificate((home.pki_dir / "ca.crt").read_bytes())
    new.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key((home.pki_dir / "node.key").read_bytes(), None)
    assert key.public_key().public_numbers() == new.public_key().public_numbers()
    assert (home.pki_dir / "node.key").stat().st_mode & 0o077 == 0
    assert not home.check_modes()  # the agent would start again on this home


def test_without_the_ca_key_renewal_due_is_recorded_once(tmp_path: Path):
    clock = Clock()
    home = _pki_home(tmp_path / "h", clock)
    (home.pki_dir / "ca.key").unlink()  # a node whose certificate was issued elsewhere
    before = (home.pki_dir / "node.crt").read_bytes()
    agent = _agent(home, clock)
    try:
        for hours in (10, 16.2, 17, 20):
            clock.now = T0 + hours * HOUR
            assert not agent.cycle().errors
        entries = _pki_entries(agent)
    finally:
        agent.close()
    assert (home.pki_dir / "node.crt").read_bytes() == before
    assert [k for k, _ in entries] == ["pki.renewal-due"]
    data = entries[0][1]
    assert data["node"] == "gpu-node-3" and "CA key is not on this node" in data["reason"]
    assert "trainguard pki issue gpu-node-3 --kind node" in data["tip"]
