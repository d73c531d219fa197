"""The audit chain format and its verification, independent of where entries are stored.

Format (version 1): each entry is (seq, time, node, actor, kind, data, prev_hash, hash) with
data as canonical JSON text, and::

    header = canonical JSON of [seq, time, node, actor, kind]
    hash   = SHA-256(prev_hash || header || "\\n" || data)

The first entry's prev_hash is 32 zero bytes. A checkpoint entry (kind ``audit.checkpoint``)
holds the seq and hash of the entry just before it and an Ed25519 signature by the node key over
canonical JSON ``{"hash", "node", "seq", "v": 1}``. `verify_entries` checks rows from the SQLite
log (`trainguard.evidence.audit_log`) or from an exported segment (`verify_segment`).

Entry 1 of a log is a genesis (kind ``audit.genesis``, `trainguard.evidence.audit_genesis`) signed
by the node key; a home made before genesis existed carries it later, marked legacy, once sealed.
What each attack meets:

* rebuilt from scratch, or every checkpoint dropped and the rest renumbered and rehashed, without
  the key: the genesis signature fails, or the unsigned tail (entries after the last genesis or
  checkpoint) is longer than the `Cadence` allows (N entries or T seconds). Dropping any
  checkpoint breaks every later one, so a forgery always ends in one long unsigned tail; only a
  tail shorter than the cadence can be forged without the key (a witness copy of a later
  checkpoint still catches that). A gap between two checkpoints after the genesis is held to
  the cadence too (widened to what the checkpoint at either end signed its writer used), so
  history nobody signed in time fails even once something signs it later;
* entries deleted, inserted, reordered or edited: the seq run or a hash breaks at that entry;
* a second genesis spliced in, or a genesis moved: it is refused where it stands;
* rewritten *with* the key (root on the node): verifies locally; caught only by copies of
  checkpoints kept elsewhere (`trainguard.evidence.audit_witness`).
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
from trainguard.evidence.audit_genesis import GENESIS_KIND, Genesis

__all__ = [
    "CHECKPOINT_KIND",
    "FORMAT_VERSION",
    "GENESIS",
    "GENESIS_KIND",
    "AuditEntry",
    "AuditTampered",
    "Cadence",
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
    """A signed statement "entry `seq` of `node`'s log has hash `hash`". Since format 2 it
    also signs the writer's cadence then (`every` entries / `seconds`), so `verify` can hold
    the tail after it to what the key holder promised, and nobody without the key can stretch
    that promise to hide a longer forged tail."""

    node: str
    seq: int
    hash: str
    key_id: str
    signature: str
    every: int | None = None
    seconds: float | None = None

    def payload(self) -> bytes:
        body: dict[str, Any] = {"hash": self.hash, "node": self.node, "seq": self.seq, "v": 1}
        if self.every is not None:
            body.update(v=2, every=self.every, seconds=self.seconds)
        return bytes(canonical_json(body))

    def promise(self) -> Cadence | None:
        """The verification cadence its writer signed up to (None for format 1)."""
        if self.every is None or self.seconds is None:
            return None
        return Cadence.derived(self.every, self.seconds)

    def verify(self, verify_key: VerifyKey) -> None:
        """Raise `BadSignature` unless the node key signed this checkpoint."""
        verify_key.verify(bytes.fromhex(self.signature), self.payload(), what="audit checkpoint")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "node": self.node,
            "seq": self.seq,
            "hash": self.hash,
            "key_id": self.key_id,
            "signature": self.signature,
        }
        if self.every is not None:
            out.update(every=self.every, seconds=self.seconds)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Checkpoint:
        try:
            every = raw.get("every")
            return cls(
                node=str(raw["node"]),
                seq=int(raw["seq"]),
                hash=str(raw["hash"]),
                key_id=str(raw.get("key_id", "")),
                signature=str(raw["signature"]),
                every=None if every is None else int(every),
                seconds=None if every is None else float(raw["seconds"]),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
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
    genesis: Genesis | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "last_checkpoint": self.last_checkpoint.to_dict() if self.last_checkpoint else None,
            "unsigned_tail": self.unsigned_tail,
            "genesis": (
                {"log_id": self.genesis.log_id, "seq": self.genesis.seq,
                 "legacy": self.genesis.legacy, "key_id": self.genesis.key_id}
                if self.genesis else None
            ),
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


@dataclass(frozen=True)
class Cadence:
    """The most a run of entries may go without a signature (a genesis or a checkpoint): more
    entries, or entries spread over more seconds, fail verification. Old entries before a
    legacy genesis (a home sealed after the fact) are held to the entry count only, since the
    writer of that time signed on a different schedule."""

    max_entries: int
    max_seconds: float

    @classmethod
    def derived(cls, every: int, seconds: float) -> Cadence:
        """What `verify` allows a writer that signs every `every` entries or `seconds`: twice
        that, plus a minute for a busy writer and the agent's timer."""
        return cls(2 * every, 2 * seconds + 60.0)

    def widened(self, other: Cadence | None) -> Cadence:
        if other is None:
            return self
        return Cadence(
            max(self.max_entries, other.max_entries), max(self.max_seconds, other.max_seconds)
        )


def verify_entries(
    rows: Iterable[Row],
    verify_key: VerifyKey | None,
    *,
    trusted_checkpoint: Checkpoint | None = None,
    anchor: bytes | None = None,
    require_genesis: bool = False,
    cadence: Cadence | None = None,
) -> VerifyReport:
    """Check a run of rows (seq order) and its checkpoints; raise `AuditTampered` at the first
    bad seq. `anchor` is the prev_hash expected for the first row (GENESIS for a full log; None
    to accept the first row's prev_hash, for an exported segment). With `require_genesis`, the
    log must hold a genesis signed by `verify_key` (entry 1, or a legacy genesis after older
    entries). With `cadence`, a run of unsigned entries longer than it allows fails: the tail,
    and (after the genesis) any gap between two checkpoints, each widened to the cadence the
    checkpoint at either end signed."""
    expected_seq: int | None = None
    prev: bytes | None = anchor
    count = checkpoints = 0
    first_seq = last_seq = 0
    last_hash = GENESIS
    last_cp: Checkpoint | None = None
    genesis: Genesis | None = None
    trusted_seen = trusted_checkpoint is None
    run = run_first = 0  # unsigned entries since the last signed point (genesis or checkpoint)
    run_start = 0.0
    late: list[tuple[int, float]] = []  # (seq, time) of the run from where it broke `over`
    over: tuple[int, str] | None = None  # where the current unsigned run broke the cadence
    tail_cadence = cadence
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
            if cadence is not None:  # the writer's signed promise may be longer than today's
                promised = last_cp.promise()
                if over is not None and genesis is not None and tail_cadence is not None:
                    # A gap between two signatures: held to what either end promised.
                    _check_gap(late, run_first, run_start, tail_cadence.widened(promised))
                tail_cadence = cadence.widened(promised)
            run, over, late = 0, None, []
        elif kind == GENESIS_KIND:
            if genesis is not None:
                raise AuditTampered(seq, "a second genesis entry (log spliced)")
            genesis = _check_genesis(seq, node, data, prev_hash, verify_key, first=count == 0)
            run, over, late = 0, None, []
        else:
            if run == 0:
                run_start, run_first = t, seq
            run += 1
            if tail_cadence is not None and over is None:
                over = _over_cadence(
                    seq, run, t - run_start, tail_cadence, timed=genesis is not None
                )
            if over is not None:  # only entries from here on can break a wider cadence
                late.append((seq, t))
        if trusted_checkpoint is not None and seq == trusted_checkpoint.seq:
            if digest.hex() != trusted_checkpoint.hash:
                raise AuditTampered(seq, "differs from the saved checkpoint (log rewritten)")
            trusted_seen = True
        prev = digest
        last_hash = digest
        last_seq = seq
        expected_seq = seq + 1
        count += 1
    if over is not None:
        # Dropping a checkpoint breaks every later one, so a forgery without the key always
        # ends in one long unsigned tail: this is the check that stops it.
        raise AuditTampered(*over)
    if require_genesis and genesis is None:
        raise AuditTampered(
            first_seq or 1,
            "the log does not start with a genesis entry signed by the node key "
            "(rebuilt, replaced, or made before genesis: `trainguard audit seal-genesis`)",
        )
    if not trusted_seen and trusted_checkpoint is not None:
        if trusted_checkpoint.seq > last_seq:
            raise AuditTampered(
                last_seq + 1,
                f"log ends at entry {last_seq} but a saved checkpoint covers entry "
                f"{trusted_checkpoint.seq} (rolled back or truncated)",
            )
        raise AuditTampered(trusted_checkpoint.seq, "saved checkpoint entry is not in the log")
    return VerifyReport(
        count, checkpoints, first_seq, last_seq, last_hash.hex(), last_cp, run, genesis=genesis
    )


def _check_gap(
    late: list[tuple[int, float]], run_first: int, run_start: float, allowed: Cadence
) -> None:
    for seq, t in late:
        bad = _over_cadence(seq, seq - run_first + 1, t - run_start, allowed, timed=True)
        if bad is not None:
            raise AuditTampered(*bad)


def _over_cadence(
    seq: int, run: int, span: float, cadence: Cadence, *, timed: bool
) -> tuple[int, str] | None:
    if run > cadence.max_entries:
        return seq, (
            f"{run} entries without a signed checkpoint (the cadence allows "
            f"{cadence.max_entries}): checkpoints were removed or never signed"
        )
    if timed and span > cadence.max_seconds:
        return seq, (
            f"entries span {span:.0f} s without a signed checkpoint (the cadence allows "
            f"{cadence.max_seconds:.0f} s): checkpoints were removed or never signed"
        )
    return None


def _check_genesis(
    seq: int, node: str, data: str, prev_hash: bytes, verify_key: VerifyKey | None, *, first: bool
) -> Genesis:
    try:
        genesis = Genesis.from_dict(json.loads(data))
    except (IntegrityError, ValueError) as exc:
        raise AuditTampered(seq, "malformed genesis entry") from exc
    if genesis.seq != seq or genesis.prev_hash != prev_hash.hex() or genesis.node != node:
        raise AuditTampered(seq, "genesis entry is not where it was signed (moved or spliced)")
    if not genesis.legacy and (seq != 1 or prev_hash != GENESIS or not first):
        raise AuditTampered(seq, "genesis entry is not the first entry of the log")
    try:
        genesis.verify(verify_key)
    except BadSignature as exc:
        raise AuditTampered(seq, "genesis is not signed by the node key") from exc
    return genesis


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
    require_genesis: bool = False,
    cadence: Cadence | None = None,
) -> VerifyReport:
    """Verify an exported segment (`AuditLog.export_segment`); entries keep data as JSON text.
    `require_genesis` applies to a segment that starts at entry 1 (a whole log)."""
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
    whole = bool(rows) and rows[0][0] == 1
    return verify_entries(
        rows,
        verify_key,
        trusted_checkpoint=trusted_checkpoint,
        anchor=GENESIS if whole else None,
        require_genesis=require_genesis and (whole or not rows),
        cadence=cadence,
    )
