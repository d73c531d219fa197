"""NodeCertRenewer on its own: a renewal that fails is recorded and retried, not repeated every
cycle; a missing or unreadable certificate is left to the node-cert posture check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainguard.agent.renewal import NodeCertRenewer
from trainguard.core.fs import write_private
from trainguard.crypto.pki import ClusterCA

T0 = 1_700_000_000.0
HOUR = 3600.0


class Sink:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, Any]]] = []

    def append(self, kind: str, actor: str, data: Any) -> int:
        self.entries.append((kind, dict(data)))
        return len(self.entries)


def _pki(tmp_path: Path, now: list[float]) -> Path:
    pki = tmp_path / "pki"
    pki.mkdir(mode=0o700)
    ca = ClusterCA.create(pki, "lab", clock=lambda: now[0])
    cert, key = ca.issue("n1", "node")
    write_private(pki / "node.crt", cert, mode=0o644)
    write_private(pki / "node.key", key)
    return pki


def test_a_failed_renewal_is_recorded_and_retried_after_retry_s(tmp_path: Path) -> None:
    now = [T0]
    pki = _pki(tmp_path, now)
    (pki / "ca.key").write_bytes(b"SECRET-GARBAGE-7731")  # garbled CA key: issuing fails
    sink, renewed = Sink(), []
    renewer = NodeCertRenewer(pki, "n1", sink, clock=lambda: now[0],
                              on_renewed=lambda: renewed.append(1), retry_s=HOUR)
    now[0] = T0 + 17 * HOUR
    assert renewer.check() == "due"
    now[0] += 60
    assert renewer.check() == "due"  # within retry_s: not tried, not recorded again
    assert [k for k, _ in sink.entries] == ["pki.renewal-due"]
    assert sink.entries[0][1]["reason"].startswith("renewal failed:")
    assert "SECRET-GARBAGE" not in str(sink.entries)  # key material never reaches the log
    now[0] += HOUR
    assert renewer.check() == "due"
    assert [k for k, _ in sink.entries] == ["pki.renewal-due"] * 2 and renewed == []


def test_no_certificate_nothing_to_do(tmp_path: Path) -> None:
    sink = Sink()
    renewer = NodeCertRenewer(tmp_path, "n1", sink, clock=lambda: T0)
    assert renewer.check() is None
    (tmp_path / "node.crt").write_text("garbage")
    assert renewer.check() is None and sink.entries == []


def test_renewal_then_quiet(tmp_path: Path) -> None:
    now = [T0]
    pki = _pki(tmp_path, now)
    sink = Sink()
    renewer = NodeCertRenewer(pki, "n1", sink, clock=lambda: now[0])
    assert renewer.check() is None
    now[0] = T0 + 16.5 * HOUR
    assert renewer.check() == "renewed"
    assert renewer.check() is None
    now[0] += 16.5 * HOUR  # 2/3 of the renewed certificate's life: renewed again
    assert renewer.check() == "renewed"
    assert [k for k, _ in sink.entries] == ["pki.node-renewed"] * 2
    assert len([c for c in ClusterCA.open(pki).certificates() if c.name == "n1"]) == 1
