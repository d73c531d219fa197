"""Key checks: KEK age against the rotation policy; the node certificate."""

from __future__ import annotations

import datetime as dt
from typing import Any

from trainguard.agent.checks import CheckContext, Outcome, Severity, register_check
from trainguard.core.errors import TrainguardError
from trainguard.crypto.config import CryptoConfig

_DAY = 86400.0


@register_check(
    "kek-age",
    "The current key-encryption key is younger than the rotation policy",
    severity=Severity.MEDIUM,
    controls=("SC-12", "SC-12(1)", "SC-28"),
)
def kek_age(ctx: CheckContext) -> Outcome:
    from trainguard.crypto.keyring import open_keyring

    max_days = _kek_limit_days(ctx)
    try:
        ring = open_keyring(ctx.home, clock=ctx.clock)
    except TrainguardError as exc:
        return Outcome.fail(
            "no usable keyring: data cannot be sealed",
            {"keys_dir": str(ctx.home.keys_dir), "error": exc.message},
            exc.tip or "run `trainguard init`",
        )
    versions = ring.versions()
    current = max(v.version for v in versions)
    info = next(v for v in versions if v.version == current)
    age_days = (ctx.clock() - float(info.created_at)) / _DAY
    evidence: dict[str, Any] = {
        "kek_id": ring.kek_id,
        "current_version": current,
        "created_at": dt.datetime.fromtimestamp(info.created_at, dt.UTC).isoformat(),
        "age_days": round(age_days, 1),
        "max_age_days": max_days,
        "versions": len(versions),
        "retired": sum(1 for v in versions if v.retired),
    }
    remedy = "rotate with `trainguard key rotate`, then `trainguard key rewrap` sealed files"
    if age_days > max_days:
        return Outcome.fail(
            f"KEK v{current} is {age_days:.0f} days old (policy: {max_days})", evidence, remedy
        )
    if age_days > 0.9 * max_days:
        return Outcome.warn(
            f"KEK v{current} is {age_days:.0f} days old; rotation is due by day {max_days}",
            evidence, remedy,
        )
    return Outcome.passed(f"KEK v{current} is {age_days:.0f} days old (policy: {max_days})", evidence)


def _kek_limit_days(ctx: CheckContext) -> int:
    """The stricter of [checks] kek_max_age_days and [crypto] kek_rotation_days."""
    limit = int(ctx.checks.kek_max_age_days)
    return min(limit, ctx.config.section(CryptoConfig).kek_rotation_days)


def _load_cert(path: Any) -> Any:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes())


@register_check(
    "node-cert",
    "The node certificate is valid, issued by the cluster CA and not revoked",
    severity=Severity.HIGH,
    controls=("IA-3", "IA-5(2)", "SC-8", "SC-17"),
)
def node_cert(ctx: CheckContext) -> Outcome:
    from cryptography import x509

    pki = ctx.home.pki_dir
    crt_path, ca_path, crl_path = pki / "node.crt", pki / "ca.crt", pki / "crl.pem"
    if not crt_path.is_file():
        return Outcome.fail(
            f"no node certificate at {crt_path}",
            {"path": str(crt_path)},
            "run `trainguard init` or `trainguard pki issue <node> --kind node`",
        )
    cert = _load_cert(crt_path)
    now = dt.datetime.fromtimestamp(ctx.clock(), dt.UTC)
    end, start = cert.not_valid_after_utc, cert.not_valid_before_utc
    days_left = (end - now).total_seconds() / _DAY
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    evidence: dict[str, Any] = {
        "path": str(crt_path),
        "subject": cert.subject.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": start.isoformat(),
        "not_after": end.isoformat(),
        "days_left": round(days_left, 1),
        "uris": uris,
    }
    if now < start or now >= end:
        return Outcome.fail(
            "the node certificate is expired or not yet valid", evidence,
            "renew it with `trainguard pki issue <node> --kind node`",
        )
    problem = _chain_problem(cert, ca_path, crl_path)
    if problem:
        evidence["problem"] = problem
        return Outcome.fail(
            f"the node certificate is not trusted: {problem}", evidence,
            "re-issue it from this cluster's CA with `trainguard pki issue <node> --kind node`",
        )
    # Node certificates are short-lived (24 h by default) and renewed at 2/3 of their life, so
    # the warning threshold scales with the lifetime as well as the configured number of days.
    lifetime_days = (end - start).total_seconds() / _DAY
    threshold = min(float(ctx.checks.cert_min_days_left), lifetime_days / 3)
    evidence["warn_below_days"] = round(threshold, 2)
    if days_left < threshold:
        return Outcome.warn(
            f"the node certificate expires in {days_left * 24:.0f} hours", evidence,
            "renew it with `trainguard pki issue <node> --kind node`",
        )
    return Outcome.passed(f"valid for {days_left * 24:.0f} more hours", evidence)


def _chain_problem(cert: Any, ca_path: Any, crl_path: Any) -> str | None:
    """Why `cert` is not a live certificate of the CA in `ca_path`, or None."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    if not ca_path.is_file():
        return f"no CA certificate at {ca_path}"
    ca = _load_cert(ca_path)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:
        return f"not issued by the cluster CA ({exc})"
    except InvalidSignature:
        return "its signature does not verify against the cluster CA"
    if crl_path.is_file():
        crl = x509.load_pem_x509_crl(crl_path.read_bytes())
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            return "it is on the cluster's revocation list"
    return None
