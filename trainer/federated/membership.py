"""Site admission: only sites that prove they hold a key certified by the cluster CA join.

Before a site gets its first round, the server sends it a fresh nonce; the site answers with its
node certificate and an ECDSA signature over ``DOMAIN || nonce`` with the certificate's key.
The server admits it only if the certificate is issued by the cluster CA, is valid now, is not
on the CA's CRL (itself signed by the CA), names a node of this cluster whose name is on the
federation's site list, and the signature verifies. From then on the site's name comes from its
certificate, never from what it says in its results.

This runs inside the TLS connection the site opened after verifying the server; it is the
"equivalent check at the SuperLink" of issue 17 for Flower's legacy gRPC engine, which asks
sites for no client certificate.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from trainguard.crypto.pki import Identity, IdentityKind, PkiError

__all__ = ["DOMAIN", "SiteRefused", "prove", "verify_site"]

DOMAIN = b"trainguard-fl-admission-v1\0"


class SiteRefused(Exception):
    """A site failed admission; `reason` is for the operator's incident, not for the site."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def prove(key_pem: bytes, nonce: bytes) -> bytes:
    """The site's answer to the admission challenge."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the node key is not ECDSA")
    return key.sign(DOMAIN + nonce, ec.ECDSA(hashes.SHA256()))


def verify_site(*, ca_pem: bytes, crl_pem: bytes, sites: Collection[str], cert_pem: bytes,
                nonce: bytes, signature: bytes, now: dt.datetime | None = None) -> str:
    """The admitted site's name; raises SiteRefused (reason: foreign-ca, expired, revoked,
    not-a-node, not-listed, bad-proof, malformed)."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert = x509.load_pem_x509_certificate(cert_pem)
        crl = x509.load_pem_x509_crl(crl_pem)
    except ValueError as exc:
        raise SiteRefused("malformed") from exc
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise SiteRefused("foreign-ca") from exc
    if not crl.is_signature_valid(cast(Any, ca.public_key())):
        raise SiteRefused("malformed")  # a CRL we cannot trust: refuse, never skip the check
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SiteRefused("expired")
    if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        raise SiteRefused("revoked")
    cluster = str(ca.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        idents = [Identity.parse(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
    except (x509.ExtensionNotFound, ValueError, PkiError) as exc:
        raise SiteRefused("not-a-node") from exc
    node = next((i for i in idents if i.kind is IdentityKind.NODE and i.cluster == cluster), None)
    if node is None:
        raise SiteRefused("not-a-node")
    if node.name not in sites:
        raise SiteRefused("not-listed")
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise SiteRefused("bad-proof")
    try:
        public.verify(signature, DOMAIN + nonce, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SiteRefused("bad-proof") from exc
    return str(node.name)
