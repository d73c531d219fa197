"""The agent renews its own node certificate at 2/3 of its lifetime.

Node certificates are short-lived (24 h by default). Every cycle `NodeCertRenewer.check()` reads
``pki/node.crt`` (parsed again only when the file changed) and, once
`trainguard.crypto.pki.needs_renewal` says 2/3 of its lifetime has passed:

* when the home holds the cluster CA key (``pki/ca.key``: the node that ran `trainguard init`),
  it issues a new certificate for the same node identity, lifetime and DNS names, writes the
  key and then the certificate atomically (key 0600, certificate 0644), records
  ``pki.node-renewed`` (old and new serial, new notAfter) and calls `on_renewed` so the TLS
  listener loads the new pair for the next handshake;
* otherwise (a node whose certificate an operator issued elsewhere) it records
  ``pki.renewal-due`` once per certificate, with when it expires and what to run, and logs a
  warning; the posture check ``node-cert`` warns as well. A renewal that fails (unreadable CA
  key, full disk) is recorded the same way with the error, and retried next cycle at most once
  per `retry_s`.

Time comes from the injected clock, so tests renew without sleeping.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from trainguard.core.errors import TrainguardError
from trainguard.core.fs import write_private
from trainguard.crypto.pki import ClusterCA, IdentityKind, needs_renewal
from trainguard.evidence.incidents import AGENT_ACTOR

__all__ = ["NodeCertRenewer"]

log = logging.getLogger(__name__)

RENEWED_KIND = "pki.node-renewed"
DUE_KIND = "pki.renewal-due"
# ClusterCA.issue backdates notBefore by its clock-skew allowance (5 min) and ends the
# certificate `lifetime` after the issue time, so a certificate spans its lifetime plus 5
# minutes; the renewal keeps the lifetime (a test pins this against crypto.pki).
_ISSUE_PADDING = dt.timedelta(minutes=5)


class _Sink(Protocol):
    def append(self, kind: str, actor: str, data: Mapping[str, Any]) -> int: ...


class NodeCertRenewer:
    """Renews ``<pki>/node.crt`` at 2/3 of its lifetime, or records that renewal is due."""

    def __init__(
        self,
        pki_dir: Path,
        node: str,
        audit: _Sink,
        *,
        clock: Callable[[], float],
        on_renewed: Callable[[], object] | None = None,
        retry_s: float = 3600.0,
    ) -> None:
        self.pki_dir = pki_dir
        self.node = node
        self.audit = audit
        self.clock = clock
        self.on_renewed = on_renewed or (lambda: None)
        self.retry_s = retry_s
        self._stat: tuple[int, int, int] | None = None
        self._cert: x509.Certificate | None = None
        self._pem = b""
        self._noted: int | None = None  # serial whose due renewal is recorded
        self._last_try = float("-inf")

    @property
    def cert_path(self) -> Path:
        return self.pki_dir / "node.crt"

    def check(self) -> str | None:
        """One look at the certificate; returns "renewed", "due" or None (nothing to do)."""
        cert = self._load()
        if cert is None or not needs_renewal(self._pem, clock=self.clock):
            return None
        serial = format(cert.serial_number, "x")
        if not (self.pki_dir / "ca.key").exists():
            self._note_due(cert, serial, "the cluster CA key is not on this node")
            return "due"
        now = self.clock()
        if now - self._last_try < self.retry_s:
            return "due"
        self._last_try = now
        try:
            new = self._renew(cert)
        except (TrainguardError, OSError, ValueError) as exc:
            message = exc.message if isinstance(exc, TrainguardError) else str(exc)
            log.error("node certificate renewal failed: %s", message)
            self._noted = None  # record every failed attempt
            self._note_due(cert, serial, f"renewal failed: {message}")
            return "due"
        self.audit.append(RENEWED_KIND, AGENT_ACTOR, {
            "node": self.node, "old_serial": serial, "serial": format(new.serial_number, "x"),
            "not_after": new.not_valid_after_utc.isoformat(),
            "lifetime_hours": round(_lifetime(cert).total_seconds() / 3600, 3),
        })
        log.info("node certificate renewed until %s", new.not_valid_after_utc.isoformat())
        self.on_renewed()
        return "renewed"

    def _load(self) -> x509.Certificate | None:
        try:
            st = os.stat(self.cert_path)
        except FileNotFoundError:
            return None
        fp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if fp != self._stat:
            try:
                pem = self.cert_path.read_bytes()
                self._cert = x509.load_pem_x509_certificate(pem)
            except (OSError, ValueError) as exc:
                log.error("cannot read the node certificate %s: %s", self.cert_path, exc)
                self._cert, pem = None, b""
            self._stat, self._pem = fp, pem
        return self._cert

    def _renew(self, old: x509.Certificate) -> x509.Certificate:
        ca = ClusterCA.open(self.pki_dir, clock=self.clock)
        try:
            san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns = tuple(san.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            dns = ()
        cert_pem, key_pem = ca.issue(
            self.node, IdentityKind.NODE, lifetime=_lifetime(old), dns_names=dns
        )
        # Each file is replaced atomically; the running listener keeps its loaded pair until
        # `on_renewed` tells it to reload, after both are in place.
        write_private(self.pki_dir / "node.key", key_pem)
        write_private(self.cert_path, cert_pem, mode=0o644)
        return x509.load_pem_x509_certificate(cert_pem)

    def _note_due(self, cert: x509.Certificate, serial: str, why: str) -> None:
        if self._noted == cert.serial_number:
            return
        self._noted = cert.serial_number
        not_after = cert.not_valid_after_utc
        self.audit.append(DUE_KIND, AGENT_ACTOR, {
            "node": self.node, "serial": serial, "not_after": not_after.isoformat(),
            "reason": why,
            "tip": f"on the node that holds the cluster CA, run `trainguard pki issue "
                   f"{self.node} --kind node` and install the result in {self.pki_dir}",
        })
        log.warning("node certificate %s is due for renewal (expires %s): %s",
                    serial, not_after.isoformat(), why)


def _lifetime(cert: x509.Certificate) -> dt.timedelta:
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    return span - _ISSUE_PADDING if span > 2 * _ISSUE_PADDING else span
