"""Cluster PKI: a CA per cluster, node and user certificates, revocation, TLS 1.3 mTLS contexts.

Identities live in the URI SAN, SPIFFE style: ``spiffe://<cluster>/node/<name>`` or
``spiffe://<cluster>/user/<name>``. Certificates are ECDSA P-256, short-lived (24 h by default),
due for renewal at 2/3 of their lifetime, and carry the extensions `openssl verify -x509_strict`
wants (critical basicConstraints and keyUsage, SKI/AKI, EKU). Revocation is a CRL signed by the CA
and loaded into every server context with leaf CRL checking on.

Files in ``<home>/pki``: ``ca.crt``, ``ca.key`` (0600), ``node.crt``, ``node.key`` (0600),
``crl.pem``, ``index.json`` (what was issued and revoked).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from trainguard.core.errors import UsageError
from trainguard.core.fs import read_private, write_private
from trainguard.core.home import RESTORE_KEY_TIP
from trainguard.crypto.errors import CryptoError

__all__ = [
    "ClusterCA",
    "Identity",
    "IdentityKind",
    "IssuedCert",
    "PkiError",
    "client_context",
    "needs_renewal",
    "peer_identity",
    "server_context",
]

DEFAULT_LIFETIME = dt.timedelta(hours=24)
CA_LIFETIME = dt.timedelta(days=3650)
CRL_LIFETIME = dt.timedelta(days=30)
_SKEW = dt.timedelta(minutes=5)  # backdate notBefore a little for clock skew between nodes


class PkiError(CryptoError):
    """The PKI is missing, inconsistent or refused a request (exit 2)."""

    exit_code = 2


class IdentityKind(enum.StrEnum):
    NODE = "node"
    USER = "user"


@dataclass(frozen=True)
class Identity:
    cluster: str
    kind: IdentityKind
    name: str

    @property
    def uri(self) -> str:
        return f"spiffe://{self.cluster}/{self.kind.value}/{self.name}"

    @classmethod
    def parse(cls, uri: str) -> Identity:
        prefix = "spiffe://"
        parts = uri[len(prefix) :].split("/") if uri.startswith(prefix) else []
        if len(parts) != 3 or parts[1] not in {"node", "user"} or not parts[0] or not parts[2]:
            raise PkiError(f"not a trainguard identity URI: {uri!r}")
        return cls(parts[0], IdentityKind(parts[1]), parts[2])


@dataclass(frozen=True)
class IssuedCert:
    name: str
    kind: str
    serial: int
    not_before: str
    not_after: str
    revoked: bool = False
    revoked_at: str | None = None


def _validate_name(name: str) -> None:
    ok = name and len(name) <= 64 and all(c.isalnum() or c in "-_." for c in name)
    if not ok or name.startswith("."):
        raise UsageError(
            f"invalid name {name!r}", tip="use 1-64 letters, digits, '-', '_' or '.'"
        )


def _now(clock: Callable[[], float]) -> dt.datetime:
    return dt.datetime.fromtimestamp(clock(), tz=dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class ClusterCA:
    """The certificate authority of one cluster, stored in a home's pki/ folder."""

    def __init__(
        self,
        pki_dir: Path,
        cert: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pki_dir = pki_dir
        self.cert = cert
        self._key = key
        self._clock = clock

    def __repr__(self) -> str:
        return f"ClusterCA(cluster={self.cluster!r}, dir={str(self.pki_dir)!r})"

    @property
    def cluster(self) -> str:
        attrs = self.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        return str(attrs[0].value)

    @property
    def ca_path(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def crl_path(self) -> Path:
        return self.pki_dir / "crl.pem"

    @classmethod
    def create(
        cls, pki_dir: Path, cluster: str, *, clock: Callable[[], float] = time.time
    ) -> ClusterCA:
        _validate_name(cluster)
        if (pki_dir / "ca.key").exists():
            raise PkiError(f"a CA already exists in {pki_dir}")
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster),
                x509.NameAttribute(NameOID.COMMON_NAME, f"trainguard cluster CA {cluster}"),
            ]
        )
        now = _now(clock)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        pki_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(pki_dir / "ca.key", _key_pem(key))
        write_private(pki_dir / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        ca = cls(pki_dir, cert, key, clock=clock)
        ca._write_index([])
        ca.write_crl()
        return ca

    @classmethod
    def open(cls, pki_dir: Path, *, clock: Callable[[], float] = time.time) -> ClusterCA:
        try:
            cert = x509.load_pem_x509_certificate((pki_dir / "ca.crt").read_bytes())
        except FileNotFoundError as exc:
            raise PkiError(
                f"no cluster CA in {pki_dir}", tip="run `trainguard init` first"
            ) from exc
        except ValueError as exc:  # garbled PEM: refuse with a tip instead of crashing (exit 3)
            raise PkiError(
                f"{pki_dir / 'ca.crt'} is not a PEM certificate",
                tip="restore pki/ca.crt from a backup of this home",
            ) from exc
        try:
            key = serialization.load_pem_private_key(
                read_private(pki_dir / "ca.key"), password=None
            )
        except ValueError as exc:
            raise PkiError(
                f"{pki_dir / 'ca.key'} is not a PEM private key", tip=RESTORE_KEY_TIP
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{pki_dir / 'ca.key'} is not an EC private key", tip=RESTORE_KEY_TIP)
        return cls(pki_dir, cert, key, clock=clock)

    # -- index: every certificate ever issued, newest last ----------------------------------

    def _index_path(self) -> Path:
        return self.pki_dir / "index.json"

    def _read_index(self) -> list[IssuedCert]:
        try:
            raw = json.loads(self._index_path().read_text())
            return [IssuedCert(**r) for r in raw["certificates"]]
        except FileNotFoundError:
            return []
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise PkiError(
                f"{self._index_path()} is corrupt: {exc}",
                tip="restore pki/index.json from a backup of this home",
            ) from exc

    def _write_index(self, index: list[IssuedCert]) -> None:
        body = {"version": 1, "certificates": [asdict(c) for c in index]}
        write_private(self._index_path(), json.dumps(body, indent=2).encode())

    def certificates(self) -> list[IssuedCert]:
        """The newest certificate of each identity."""
        latest: dict[tuple[str, str], IssuedCert] = {}
        for entry in self._read_index():
            latest[(entry.kind, entry.name)] = entry
        return sorted(latest.values(), key=lambda c: (c.kind, c.name))

    # -- issue / revoke ------------------------------------------------------------------------

    def issue(
        self,
        name: str,
        kind: IdentityKind | str,
        *,
        lifetime: dt.timedelta = DEFAULT_LIFETIME,
        dns_names: tuple[str, ...] = (),
        not_before: dt.datetime | None = None,
    ) -> tuple[bytes, bytes]:
        """Issue a certificate for `name`; returns (cert PEM, key PEM). Re-issuing renews;
        `not_before` is for tests that need an expired or not-yet-valid certificate."""
        _validate_name(name)
        kind = IdentityKind(kind)
        if lifetime <= dt.timedelta(0):
            raise UsageError("certificate lifetime must be positive")
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before if not_before is not None else _now(self._clock) - _SKEW
        end = start + lifetime + (_SKEW if not_before is None else dt.timedelta(0))
        cert = self._build_leaf(Identity(self.cluster, kind, name), key, start, end, dns_names)
        index = self._read_index()
        index.append(
            IssuedCert(
                name=name,
                kind=kind.value,
                serial=cert.serial_number,
                not_before=cert.not_valid_before_utc.isoformat(),
                not_after=cert.not_valid_after_utc.isoformat(),
            )
        )
        self._write_index(index)
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def _build_leaf(
        self,
        ident: Identity,
        key: ec.EllipticCurvePrivateKey,
        start: dt.datetime,
        end: dt.datetime,
        dns_names: tuple[str, ...],
    ) -> x509.Certificate:
        eku = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if ident.kind is IdentityKind.NODE:
            eku.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(ident.uri)]
        sans += [x509.DNSName(d) for d in dns_names]
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.cluster),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ident.kind.value),
                x509.NameAttribute(NameOID.COMMON_NAME, ident.name),
            ]
        )
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=True,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
            )
            .sign(self._key, hashes.SHA256())
        )

    def revoke(self, name: str, kind: IdentityKind | str | None = None) -> list[IssuedCert]:
        """Revoke every certificate ever issued to `name` and rewrite the CRL."""
        index = self._read_index()
        kinds = {IdentityKind(kind).value} if kind else {"node", "user"}
        hits = [i for i, c in enumerate(index) if c.name == name and c.kind in kinds]
        if not hits:
            raise UsageError(f"no certificate issued to {name!r}", tip="see `trainguard pki list`")
        if len({index[i].kind for i in hits}) > 1:
            raise UsageError(f"{name!r} is both a node and a user", tip="pass --kind")
        when = _now(self._clock).isoformat()
        for i in hits:
            if not index[i].revoked:
                index[i] = IssuedCert(**{**asdict(index[i]), "revoked": True, "revoked_at": when})
        self._write_index(index)
        self.write_crl()
        return [index[i] for i in hits]

    def revoked_serials(self) -> list[IssuedCert]:
        return [c for c in self._read_index() if c.revoked]

    def write_crl(self) -> Path:
        now = _now(self._clock)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - _SKEW)
            .next_update(now + CRL_LIFETIME)
            .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
                ),
                critical=False,
            )
        )
        for entry in self.revoked_serials():
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(entry.serial)
                .revocation_date(dt.datetime.fromisoformat(entry.revoked_at or now.isoformat()))
                .build()
            )
        crl = builder.sign(self._key, hashes.SHA256())
        write_private(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), mode=0o644)
        return self.crl_path


def needs_renewal(cert_pem: bytes, *, clock: Callable[[], float] = time.time) -> bool:
    """True once 2/3 of the certificate's lifetime has passed (or it has expired)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return _now(clock) >= start + (end - start) * 2 / 3


def _base_context(purpose: ssl.Purpose, cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise PkiError(
            f"cannot load TLS material ({cert}, {ca}): {exc}",
            tip="issue a certificate with `trainguard pki issue`",
        ) from exc
    return ctx


def server_context(cert: Path, key: Path, ca: Path, crl: Path | None = None) -> ssl.SSLContext:
    """TLS 1.3-only server context that requires a client certificate from the cluster CA and
    checks the client's certificate against the CRL when one is given."""
    ctx = _base_context(ssl.Purpose.CLIENT_AUTH, cert, key, ca)
    if crl is not None:
        ctx.load_verify_locations(cafile=str(crl))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def client_context(cert: Path, key: Path, ca: Path, crl: Path | None = None) -> ssl.SSLContext:
    """TLS 1.3-only client context presenting `cert`. Host names are not checked: peers are
    identified by their SPIFFE URI (`peer_identity`), which callers compare to whom they meant to
    reach."""
    ctx = _base_context(ssl.Purpose.SERVER_AUTH, cert, key, ca)
    ctx.check_hostname = False
    if crl is not None:
        ctx.load_verify_locations(cafile=str(crl))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket, cluster: str | None = None) -> Identity:
    """The verified peer's identity from its URI SAN; refuses another cluster's identity."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise PkiError("peer presented no certificate")
    cert = x509.load_der_x509_certificate(der)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise PkiError("peer certificate has no SAN identity") from exc
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise PkiError("peer certificate must carry exactly one identity URI")
    ident = Identity.parse(uris[0])
    if cluster is not None and ident.cluster != cluster:
        raise PkiError(f"peer belongs to cluster {ident.cluster!r}, not {cluster!r}")
    return ident
