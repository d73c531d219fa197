"""The audit chain format and its verification, independent of where entries are stored.

Format (version 1): each entry is (seq, time, node, actor, kind, data, prev_hash, hash) with
data as canonical JSON text, and::

    header = canonical JSON of [seq, time, node, actor, kind]
    hash   = SHA-256(prev_hash || header || "\\n" || data)

The first entry's prev_hash is 32 zero bytes. A checkpoint entry (kind ``audit.checkpoint``)
holds the seq and hash of the entry just before it and an Ed25519 signature by the node key over
canonical JSON ``{"hash", "node", "seq", "v": 1}``. `verify_entries` checks rows from the SQLite
log (`trainguard.evidence.audit_log`) or from an exported segment (`verify_segment`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _enc
from typing import Any

from trainguard.core.errors import IntegrityError
from trainguard.crypto.errors import BadSignature
from trainguard.crypto.signing import VerifyKey, canonical_json

__all__ = [
    "CHECKPOINT_KIND",
    "FORMAT_VERSION",
    "GENESIS",
    "AuditEntry",
    "AuditTampered",
    "Checkpoint",
    "Row",
    "VerifyReport",
    "entry_hash",
    "verify_entries",
    "verify_segment",
]

FORMAT_VERSION = 1
CHECKPOINT_KIND = "audit.checkpoint"
GENESIS = bytes(32)


class AuditTampered(IntegrityError):
    """The audit log's chain, a checkpoint signature or a saved checkpoint does not match."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(
            f"audit log tampered at entry {seq}: {reason}",
            tip="treat the log after this entry as untrusted; keep a copy of the file as "
            "evidence and compare it with the last exported segment",
        )
        self.seq = seq
        self.reason = reason


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: float
    node: str
    actor: str
    kind: str
    data: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "node": self.node,
            "actor": self.actor,
            "kind": self.kind,
            "data": self.data,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement "entry `seq` of `node`'s log has hash `hash`"."""

    node: str
    seq: int
    hash: str
    key_id: str
    signature: str

    def payload(self) -> bytes:
        return bytes(
            canonical_json({"hash": self.hash, "node": self.node, "seq": self.seq, "v": 1})
        )

    def verify(self, verify_key: VerifyKey) -> None:
        """Raise `BadSignature` unless the node key signed this checkpoint."""
        verify_key.verify(bytes.fromhex(self.signature), self.payload(), what="audit checkpoint")

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "seq": self.seq,
            "hash": self.hash,
            "key_id": self.key_id,
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Checkpoint:
        try:
            return cls(
                node=str(raw["node"]),
                seq=int(raw["seq"]),
                hash=str(raw["hash"]),
                key_id=str(raw.get("key_id", "")),
                signature=str(raw["signature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(
                "not a trainguard audit checkpoint", tip="pass a file saved by `audit verify`"
            ) from exc


@dataclass(frozen=True)
class VerifyReport:
    entries: int
    checkpoints: int
    first_seq: int
    last_seq: int
    last_hash: str
    last_checkpoint: Checkpoint | None
    unsigned_tail: int  # entries after the last checkpoint (protected by the chain only)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "last_checkpoint": self.last_checkpoint.to_dict() if self.last_checkpoint else None,
            "unsigned_tail": self.unsigned_tail,
        }


def _header(seq: int, t: float, node: str, actor: str, kind: str) -> bytes:
    """Canonical JSON of [seq, time, node, actor, kind] (what json.dumps with no spaces and
    ensure_ascii=False gives), built directly because it runs once per entry."""
    return (
        "[%d,%r,%s,%s,%s]" % (seq, t, _enc(node), _enc(actor), _enc(kind))  # noqa: UP031
    ).encode()


def entry_hash(
    prev: bytes, seq: int, t: float, node: str, actor: str, kind: str, data: str
) -> bytes:
    """The chain hash of one entry (see the module docstring)."""
    return hashlib.sha256(
        prev + _header(seq, t, node, actor, kind) + b"\n" + data.encode()
    ).digest()


Row = tuple[int, float, str, str, str, str, bytes, bytes]


def verify_entries(
    rows: Iterable[Row],
    verify_key: VerifyKey | None,
    *,
    trusted_checkpoint: Checkpoint | None = None,
    anchor: bytes | None = None,
) -> VerifyReport:
    """Check a run of rows (seq order) and its checkpoints; raise `AuditTampered` at the first
    bad seq. `anchor` is the prev_hash expected for the first row (GENESIS for a full log; None
    to accept the first row's prev_hash, for an exported segment)."""
    expected_seq: int | None = None
    prev: bytes | None = anchor
    count = checkpoints = 0
    first_seq = last_seq = 0
    last_hash = GENESIS
    last_cp: Checkpoint | None = None
    trusted_seen = trusted_checkpoint is None
    sha256 = hashlib.sha256
    enc = _enc
    for row in rows:
        try:
            seq, t, node, actor, kind, data, prev_hash, stored = row
        except (TypeError, ValueError) as exc:
            raise AuditTampered(expected_seq or 1, "malformed entry") from exc
        if type(prev_hash) is not bytes or type(stored) is not bytes or type(data) is not str:
            raise AuditTampered(
                seq if isinstance(seq, int) else expected_seq or 1, "malformed entry"
            )
        if expected_seq is None:
            expected_seq = seq if anchor is None else 1
            first_seq = seq
        if seq != expected_seq:
            raise AuditTampered(expected_seq, "entry missing (deleted or renumbered)")
        if prev is not None and prev_hash != prev:
            raise AuditTampered(seq, "prev_hash does not match the previous entry")
        digest = sha256(
            prev_hash
            + ("[%d,%r,%s,%s,%s]\n" % (seq, t, enc(node), enc(actor), enc(kind))).encode()  # noqa: UP031
            + data.encode()
        ).digest()
        if digest != stored:
            raise AuditTampered(seq, "entry content does not match its hash (edited or reordered)")
        if kind == CHECKPOINT_KIND:
            last_cp = _check_checkpoint(seq, node, data, prev_hash, verify_key)
            checkpoints += 1
        if trusted_checkpoint is not None and seq == trusted_checkpoint.seq:
            if digest.hex() != trusted_checkpoint.hash:
                raise AuditTampered(seq, "differs from the saved checkpoint (log rewritten)")
            trusted_seen = True
        prev = digest
        last_hash = digest
        last_seq = seq
        expected_seq = seq + 1
        count += 1
    if not trusted_seen and trusted_checkpoint is not None:
        if trusted_checkpoint.seq > last_seq:
            raise AuditTampered(
                last_seq + 1,
                f"log ends at entry {last_seq} but a saved checkpoint covers entry "
                f"{trusted_checkpoint.seq} (rolled back or truncated)",
            )
        raise AuditTampered(trusted_checkpoint.seq, "saved checkpoint entry is not in the log")
    tail = last_seq - (last_cp.seq + 1) if last_cp else count
    return VerifyReport(
        count, checkpoints, first_seq, last_seq, last_hash.hex(), last_cp, max(tail, 0)
    )


def _check_checkpoint(
    seq: int, node: str, data: str, prev_hash: bytes, verify_key: VerifyKey | None
) -> Checkpoint:
    try:
        cp = Checkpoint.from_dict(json.loads(data))
    except (IntegrityError, ValueError) as exc:
        raise AuditTampered(seq, "malformed checkpoint") from exc
    if cp.seq != seq - 1 or cp.hash != prev_hash.hex() or cp.node != node:
        raise AuditTampered(seq, "checkpoint does not cover the entry before it")
    if verify_key is not None:
        try:
            cp.verify(verify_key)
        except BadSignature as exc:
            raise AuditTampered(seq, "checkpoint signature is not valid for the node key") from exc
    return cp


def verify_segment(
    segment: Mapping[str, Any],
    verify_key: VerifyKey | None,
    *,
    trusted_checkpoint: Checkpoint | None = None,
) -> VerifyReport:
    """Verify an exported segment (`AuditLog.export_segment`); entries keep data as JSON text."""
    rows: list[Row] = []
    try:
        entries = segment.get("entries", [])
        for e in entries:
            rows.append(
                (
                    int(e["seq"]),
                    float(e["time"]),
                    str(e["node"]),
                    str(e["actor"]),
                    str(e["kind"]),
                    str(e["data"]),
                    bytes.fromhex(e["prev_hash"]),
                    bytes.fromhex(e["hash"]),
                )
            )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        # The segment is the evidence under test: one that does not parse fails verification.
        seq = rows[-1][0] + 1 if rows else 1
        raise AuditTampered(seq, "malformed entry in the exported segment") from exc
    anchor = GENESIS if rows and rows[0][0] == 1 else None
    return verify_entries(rows, verify_key, trusted_checkpoint=trusted_checkpoint, anchor=anchor)
