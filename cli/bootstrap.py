"""Create a trainguard home: folders, config, KEK v1, node signing key, cluster CA and node
certificate, and (through the policy area) the signed default policy and the admin user.

An existing home is never overwritten in place: `force=True` moves it aside to
``<home>.bak-<UTC timestamp>`` first, so keys that still decrypt old sealed files are kept.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.core.config import NodeConfig, dump_sections
from trainguard.core.errors import UsageError
from trainguard.core.fs import write_private
from trainguard.core.home import Home
from trainguard.evidence.sink import AuditSink

log = logging.getLogger(__name__)

NODE_CERT = "node.crt"
NODE_KEY = "node.key"


@dataclass(frozen=True)
class InitResult:
    home: Path
    cluster: str
    node: str
    kek_id: str
    kek_version: int
    node_key_id: str
    node_identity: str
    node_cert_not_after: str
    created: list[str] = field(default_factory=list)
    moved_aside: Path | None = None
    admin: dict[str, Any] | None = None
    audit_log_id: str = ""


def move_aside(home: Home, clock: Callable[[], float] = time.time) -> Path:
    stamp = dt.datetime.fromtimestamp(clock(), tz=dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = home.root.with_name(f"{home.root.name}.bak-{stamp}")
    os.rename(home.root, target)
    return target


def init_home(
    home: Home,
    *,
    cluster: str,
    node: str,
    admin: str | None,
    force: bool = False,
    audit_factory: Callable[[Home], AuditSink] | None = None,
    clock: Callable[[], float] = time.time,
    environ: Mapping[str, str],
) -> InitResult:
    """Create every piece of a fresh home. Raises UsageError if one exists and not `force`.

    All or nothing: on any failure (a bad name, an unwritable folder) what was created is
    removed again and a home moved aside by `force` is put back.
    """
    if home.root.exists() and not home.root.is_dir():
        raise UsageError(f"{home.root} exists and is not a folder", tip="pick another --home")
    existed = home.root.exists()
    moved: Path | None = None
    if existed and any(home.root.iterdir()):
        if not force:
            raise UsageError(
                f"a trainguard home already exists at {home.root}",
                tip="use it as it is, or pass --force to move it aside and create a new one",
            )
        moved = move_aside(home, clock)
        existed = False
        log.warning("moved the existing home aside to %s", moved)
    try:
        return _build(home, cluster, node, admin, moved, audit_factory, clock, environ)
    except BaseException as exc:
        # A half-made home would block the next `init` ("already exists") and lack its
        # policy or keys, so nothing of it stays; a home moved aside comes back.
        _discard(home, keep_root=existed)
        if moved is not None:
            os.rename(moved, home.root)
        if isinstance(exc, OSError):
            raise UsageError(
                f"cannot create a home at {home.root}: {exc.strerror or exc}",
                tip="pick a --home in a writable folder",
            ) from exc
        raise


def _discard(home: Home, *, keep_root: bool) -> None:
    if not home.root.is_dir():
        return
    if not keep_root:
        shutil.rmtree(home.root, ignore_errors=True)
        return
    for child in home.root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _build(
    home: Home,
    cluster: str,
    node: str,
    admin: str | None,
    moved: Path | None,
    audit_factory: Callable[[Home], AuditSink] | None,
    clock: Callable[[], float],
    environ: Mapping[str, str],
) -> InitResult:
    from trainguard.crypto.keyring import Keyring
    from trainguard.crypto.pki import ClusterCA
    from trainguard.crypto.signing import SigningKey

    home.create_dirs()
    write_private(
        home.config_path,
        (
            "# trainguard configuration; see README \"CLI conventions\". Every key can be\n"
            "# overridden with TRAINGUARD_<SECTION>_<KEY>.\n"
            + dump_sections({"node": NodeConfig(cluster=cluster, name=node)})
        ).encode(),
    )
    keyring = Keyring.create(home.keys_dir, clock=clock)
    signer = SigningKey.generate()
    signer.save(home.node_signing_key)
    ca = ClusterCA.create(home.pki_dir, cluster, clock=clock)
    cert_pem, key_pem = ca.issue(node, "node", dns_names=("localhost",))
    write_private(home.pki_dir / NODE_CERT, cert_pem, mode=0o644)
    write_private(home.pki_dir / NODE_KEY, key_pem)
    # The log starts with a genesis signed by the node key, and the home keeps a signed record
    # of it: a log deleted or rebuilt later is refused, never silently recreated.
    from trainguard.core.config import load_config
    from trainguard.evidence.embedded import create_home_log

    genesis = create_home_log(home, load_config(home.config_path, environ), signer)
    created = [
        str(home.config_path),
        f"{home.keys_dir} (KEK v{keyring.current_version})",
        str(home.node_signing_key),
        str(ca.ca_path),
        str(home.pki_dir / NODE_CERT),
        f"{home.audit_db} (audit log {genesis.log_id})",
    ]
    audit = audit_factory(home) if audit_factory else None
    admin_info: dict[str, Any] | None = None
    if admin:
        from trainguard.policy.bootstrap import bootstrap_policy

        if audit is None:
            raise UsageError("creating the admin user needs an audit sink (audit_factory)")
        admin_info = bootstrap_policy(home, keyring, signer, admin, audit, clock=clock)
        created.append(str(home.policy_dir))
        created.append(str(home.users_db))
    from cryptography import x509

    not_after = x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc.isoformat()
    result = InitResult(
        home=home.root,
        cluster=cluster,
        node=node,
        kek_id=keyring.kek_id,
        kek_version=keyring.current_version,
        node_key_id=signer.key_id,
        node_identity=f"spiffe://{cluster}/node/{node}",
        node_cert_not_after=not_after,
        created=created,
        moved_aside=moved,
        admin=admin_info,
        audit_log_id=genesis.log_id,
    )
    if audit is not None:
        audit.record(
            "home-created",
            admin or "init",
            {
                "cluster": cluster,
                "node": node,
                "kek_id": keyring.kek_id,
                "node_key_id": signer.key_id,
                "moved_aside": str(moved) if moved else None,
            },
        )
        from trainguard.evidence.audit_log import AuditLog

        if isinstance(audit, AuditLog):  # init's entries leave it signed, whatever the cadence
            audit.checkpoint(force=True)
    return result

