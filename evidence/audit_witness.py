"""Compare a node's audit log with the copies of its signed checkpoints kept off the node.

The node key protects the log against everyone but root on the node, who holds that key and can
rewrite and re-sign the whole history so it verifies locally. Every signed checkpoint is therefore
also sent off-node: to a witness peer (`trainguard.agent.api.witness`), and, as log entries, in
the JSON-lines export stream (``[export]``, read back with `copies_from_export`). A copy says "entry `seq` of `node`'s log had hash `hash`, signed". The local
log must still agree with every copy:

* a copy whose entry is past the log's end: the log was rolled back or truncated;
* a copy whose entry now has another hash: the history was rewritten (even if re-signed);
* a witness that saw another genesis (`log_id`) for the node: the log was replaced;
* a witness that was sent two different hashes for one entry: the node forked its history.

This module is storage- and network-free: callers fetch the copies and the log's hashes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainguard.core.errors import IntegrityError
from trainguard.crypto.errors import BadSignature
from trainguard.crypto.signing import VerifyKey
from trainguard.evidence.audit_chain import (
    CHECKPOINT_KIND,
    GENESIS_KIND,
    AuditTampered,
    Checkpoint,
)

__all__ = ["WitnessCopies", "compare_with_copies", "copies_from_export"]


@dataclass(frozen=True)
class WitnessCopies:
    """What one witness holds for one node."""

    node: str
    source: str  # where the copies came from, for messages ("witness 10.0.0.2:7443")
    log_id: str | None = None  # the genesis the witness pinned for the node
    checkpoints: tuple[Checkpoint, ...] = ()
    conflicts: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any], source: str) -> WitnessCopies:
        try:
            return cls(
                node=str(raw["node"]),
                source=source,
                log_id=str(raw["log_id"]) if raw.get("log_id") else None,
                checkpoints=tuple(Checkpoint.from_dict(c) for c in raw.get("checkpoints", [])),
                conflicts=tuple(dict(c) for c in raw.get("conflicts", [])),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(
                f"{source} sent malformed witness copies",
                tip="check that the witness runs the same trainguard version",
            ) from exc

    @property
    def max_seq(self) -> int:
        return max((c.seq for c in self.checkpoints), default=0)


def copies_from_export(lines: Iterable[str], node: str, source: str) -> WitnessCopies:
    """The checkpoint copies of `node` in an export stream in JSON lines (``[export]`` with
    ``jsonl``: every entry, so every ``audit.checkpoint`` and the genesis). Lines of other
    nodes and of other formats are passed over; a line that is not JSON fails (exit 1), since
    a damaged export is no evidence either way."""
    log_id: str | None = None
    cps: list[Checkpoint] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise IntegrityError(
                f"{source}: line {n} is not JSON",
                tip="pass the JSON-lines files the [export] file destination wrote",
            ) from exc
        if not isinstance(obj, dict) or obj.get("node") != node:
            continue
        data = obj.get("data")
        if isinstance(data, str):
            data = json.loads(data)
        if obj.get("kind") == CHECKPOINT_KIND and isinstance(data, dict):
            cps.append(Checkpoint.from_dict(data))
        elif obj.get("kind") == GENESIS_KIND and isinstance(data, dict):
            log_id = str(data.get("log_id") or "") or None
    return WitnessCopies(node, source, log_id, tuple(cps))


def compare_with_copies(
    copies: Iterable[WitnessCopies],
    *,
    log_id: str | None,
    last_seq: int,
    hashes: Mapping[int, str],
    verify_key: VerifyKey | None,
) -> int:
    """Raise `AuditTampered` at the first entry where the log disagrees with a copy; returns
    how many copies were compared. `hashes` maps each seq a copy names (that the log still
    has) to the log's chain hash of that entry."""
    compared = 0
    for w in copies:
        if w.log_id is not None and log_id is not None and w.log_id != log_id:
            raise AuditTampered(
                1, f"{w.source} holds another genesis for {w.node} (log replaced)"
            )
        for cp in sorted(w.checkpoints, key=lambda c: c.seq):
            if verify_key is not None:
                try:
                    cp.verify(verify_key)
                except BadSignature:
                    # Not this node's signature: the witness holds junk for it, not evidence.
                    continue
            if cp.seq > last_seq:
                raise AuditTampered(
                    last_seq + 1,
                    f"the log ends at entry {last_seq} but {w.source} holds a signed checkpoint "
                    f"of entry {cp.seq} (rolled back or truncated)",
                )
            if hashes.get(cp.seq) != cp.hash:
                raise AuditTampered(
                    cp.seq,
                    f"differs from the signed checkpoint copy held by {w.source} "
                    "(history rewritten)",
                )
            compared += 1
        if w.conflicts:  # the log agrees with the first copies, but it was sent another one
            seq = min(int(c.get("seq", 0) or 0) for c in w.conflicts)
            raise AuditTampered(
                seq,
                f"{w.source} was sent two different histories for entry {seq} (history "
                "rewritten or forked)",
            )
    return compared
