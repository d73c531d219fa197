"""The signed genesis of an audit log, and the home's signed record that the log exists.

Genesis entry (kind ``audit.genesis``), written by ``trainguard init`` as entry 1 of a new log::

    data = {"v": 1, "kind": "audit.genesis", "log_id": <32 hex, random>, "cluster", "node",
            "key_id", "pubkey": <hex Ed25519 public key>, "created_at", "seq", "prev_hash",
            "legacy": false, "signature": <hex Ed25519 over canonical JSON of the rest>}

Why each field: the signature binds the log to the node key (no key, no valid first entry, so a
log rebuilt from scratch without the key fails `audit verify`); ``log_id`` makes every log of a
home distinct, so a log of another home or another `init` signed by the same key is still not
*this* log; ``seq`` and ``prev_hash`` pin the genesis's place in the chain.

A home created before genesis existed is sealed once with ``trainguard audit seal-genesis``: the
genesis is then appended after the existing entries with ``legacy: true``; its signed
``prev_hash`` covers the whole older history through the hash chain.

Home record (``state/audit-genesis.json``, written at init or seal time, signed by the node key)::

    {"v": 1, "log_id", "node", "cluster", "seq", "hash": <the genesis entry's chain hash>,
     "key_id", "signature"}

A home that has a record but no log, or a log whose entry at ``seq`` is not that genesis, has
lost or replaced its log: commands refuse to open it (`AuditLogMissing`, `AuditLogReplaced`,
exit 2) instead of creating a fresh log that would verify.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainguard.core.errors import IntegrityError, TrainguardError, UsageError
from trainguard.core.fs import write_private
from trainguard.crypto.errors import BadSignature
from trainguard.crypto.signing import SigningKey, VerifyKey, canonical_json

__all__ = [
    "GENESIS_KIND",
    "RESTORE_TIP",
    "AuditLogMissing",
    "AuditLogReplaced",
    "Genesis",
    "GenesisRecord",
    "make_genesis",
]

GENESIS_KIND = "audit.genesis"

RESTORE_TIP = (
    "treat it as an audit-tampered incident: keep whatever is left of state/ as evidence, then "
    "restore state/audit.db (and state/audit-genesis.json) from a backup of this home; "
    "`trainguard audit verify` compares the restored log with its witness copies"
)


class AuditLogMissing(UsageError):
    """The home recorded an audit log that is gone: never silently recreated (exit 2)."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"the audit log {path} is missing: this home was initialised with one", tip=RESTORE_TIP
        )
        self.path = path


class AuditLogReplaced(UsageError):
    """The audit log is not the one this home's signed record names (exit 2)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"the audit log {path} was replaced: {reason}", tip=RESTORE_TIP)
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Genesis:
    """The data of a genesis entry."""

    log_id: str
    cluster: str
    node: str
    key_id: str
    pubkey: str
    created_at: float
    seq: int
    prev_hash: str
    legacy: bool
    signature: str = ""

    def payload(self) -> bytes:
        body = {k: v for k, v in asdict(self).items() if k != "signature"}
        return bytes(canonical_json({**body, "kind": GENESIS_KIND, "v": 1}))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kind": GENESIS_KIND, "v": 1}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Genesis:
        try:
            if raw.get("v") != 1 or raw.get("kind") != GENESIS_KIND:
                raise ValueError("not a genesis of format 1")
            return cls(
                log_id=str(raw["log_id"]),
                cluster=str(raw["cluster"]),
                node=str(raw["node"]),
                key_id=str(raw["key_id"]),
                pubkey=str(raw["pubkey"]),
                created_at=float(raw["created_at"]),
                seq=int(raw["seq"]),
                prev_hash=str(raw["prev_hash"]),
                legacy=bool(raw["legacy"]),
                signature=str(raw["signature"]),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise IntegrityError("malformed audit genesis") from exc

    def verify(self, verify_key: VerifyKey | None) -> None:
        """Raise `BadSignature` unless `verify_key` (or, with None, the genesis's own key, for
        a caller that pins it separately) signed this genesis and the two keys agree."""
        try:
            own = VerifyKey.from_bytes(bytes.fromhex(self.pubkey))
            sig = bytes.fromhex(self.signature)
        except (ValueError, TypeError, TrainguardError) as exc:
            raise BadSignature("audit genesis") from exc
        if verify_key is not None and own != verify_key:
            raise BadSignature("audit genesis")
        own.verify(sig, self.payload(), what="audit genesis")


def make_genesis(
    signer: SigningKey,
    *,
    cluster: str,
    node: str,
    seq: int,
    prev_hash: bytes,
    created_at: float,
    legacy: bool = False,
) -> Genesis:
    unsigned = Genesis(
        log_id=secrets.token_hex(16),
        cluster=cluster,
        node=node,
        key_id=signer.key_id,
        pubkey=signer.public_key().to_bytes().hex(),
        created_at=float(created_at),
        seq=seq,
        prev_hash=prev_hash.hex(),
        legacy=legacy,
    )
    sig = signer.sign(unsigned.payload()).hex()
    return Genesis(**{**asdict(unsigned), "signature": sig})


@dataclass(frozen=True)
class GenesisRecord:
    """The home's signed statement "my audit log is `log_id`, its genesis is entry `seq` with
    chain hash `hash`"."""

    log_id: str
    node: str
    cluster: str
    seq: int
    hash: str
    key_id: str
    signature: str = ""

    def payload(self) -> bytes:
        body = {k: v for k, v in asdict(self).items() if k != "signature"}
        return bytes(canonical_json({**body, "kind": "audit.genesis-record", "v": 1}))

    @classmethod
    def create(cls, signer: SigningKey, genesis: Genesis, entry_hash: str) -> GenesisRecord:
        unsigned = cls(genesis.log_id, genesis.node, genesis.cluster, genesis.seq, entry_hash,
                       signer.key_id)
        return cls(**{**asdict(unsigned), "signature": signer.sign(unsigned.payload()).hex()})

    def save(self, path: Path) -> None:
        write_private(path, json.dumps({**asdict(self), "v": 1}, indent=2).encode())

    @classmethod
    def load(cls, path: Path, verify_key: VerifyKey) -> GenesisRecord:
        """The record at `path`, signature checked. Raises FileNotFoundError when there is none
        and `AuditLogReplaced` when it is not a record signed by `verify_key`."""
        raw_text = path.read_text(encoding="utf-8")
        try:
            raw = json.loads(raw_text)
            rec = cls(
                str(raw["log_id"]), str(raw["node"]), str(raw["cluster"]), int(raw["seq"]),
                str(raw["hash"]), str(raw["key_id"]), str(raw["signature"]),
            )
            verify_key.verify(bytes.fromhex(rec.signature), rec.payload(), what="genesis record")
        except (AttributeError, KeyError, TypeError, ValueError, TrainguardError) as exc:
            raise AuditLogReplaced(
                path, "the home's genesis record is not signed by this node's key"
            ) from exc
        return rec
