"""Witness copies of other nodes' signed audit checkpoints, and sending this node's own.

Root on a node holds the node key and can rewrite that node's audit log so it verifies locally.
What root on one node cannot rewrite is a copy kept on another: every node sends each signed
checkpoint to its witness peer (``[audit] witness = "HOST:PORT"``, the peer agent's mTLS API),
and `audit verify` / `audit report` compare the log with those copies
(`trainguard.evidence.audit_witness`).

API ops (`WitnessOps`, an extension the daemon gives the API server; action ``audit:witness``,
held by node identities):

* ``witness`` {genesis, checkpoints}: a node submits its own checkpoints. The node is the
  authenticated certificate's node name, never a request field; a checkpoint naming another
  node is refused. The first submission pins the node's genesis (log id and public key); later
  checkpoints must verify under the pinned key. A second genesis for the node, or a different
  hash for an entry already witnessed, is kept as a conflict, audited on the witness
  (``audit.witness-conflict``) and raised as an ``audit-tampered`` incident there: that is the
  copy catching a rewrite.
* ``witness-copies`` {node}: what this witness holds for `node` (any cluster node or auditor may
  read: checkpoints hold hashes and signatures, no log content).

Storage: ``state/witness.db`` (SQLite) next to the witness's own audit log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainguard.core.errors import AccessDenied, IntegrityError, TrainguardError, UsageError
from trainguard.crypto.errors import BadSignature
from trainguard.crypto.signing import VerifyKey
from trainguard.evidence.audit_chain import Checkpoint
from trainguard.evidence.audit_genesis import Genesis
from trainguard.evidence.audit_witness import WitnessCopies

if TYPE_CHECKING:
    from trainguard.agent.api.auth import ApiPrincipal
    from trainguard.core.config import Config
    from trainguard.core.home import Home

from trainguard.evidence.audit_log import AuditLog

__all__ = [
    "WITNESS_ACTION",
    "PushResult",
    "WitnessOps",
    "WitnessStore",
    "fetch_copies",
    "push_checkpoints",
    "push_quietly",
]

log = logging.getLogger(__name__)

WITNESS_ACTION = "audit:witness"
_MAX_PER_REQUEST = 500
_MAX_COPIES = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pins (node TEXT PRIMARY KEY, log_id TEXT NOT NULL,
    pubkey TEXT NOT NULL, genesis TEXT NOT NULL, first_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS copies (node TEXT NOT NULL, seq INTEGER NOT NULL, hash TEXT NOT NULL,
    key_id TEXT NOT NULL, signature TEXT NOT NULL, received REAL NOT NULL, every INTEGER,
    seconds REAL, PRIMARY KEY (node, seq));
CREATE TABLE IF NOT EXISTS conflicts (node TEXT NOT NULL, seq INTEGER NOT NULL,
    reason TEXT NOT NULL, held TEXT NOT NULL, offered TEXT NOT NULL, time REAL NOT NULL);
"""


class WitnessRefused(TrainguardError):
    """A submission the witness will not store (exit 1 on the sending side)."""

    exit_code = 1


class WitnessStore:
    """The copies one witness keeps, per node. Thread-safe."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            path.touch(mode=0o600)
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._clock = clock

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def submit(
        self, node: str, genesis_raw: Any, checkpoints_raw: Any
    ) -> dict[str, Any]:
        """Store `node`'s checkpoints; returns {"stored", "conflicts"}. Raises `WitnessRefused`
        for a submission that is malformed, unsigned, or about another node."""
        genesis = _genesis(genesis_raw, node)
        cps = _checkpoints(checkpoints_raw, node)
        now = float(self._clock())
        conflicts: list[dict[str, Any]] = []
        stored = 0
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                pin = conn.execute(
                    "SELECT log_id, pubkey FROM pins WHERE node = ?", (node,)
                ).fetchone()
                if pin is None:
                    if genesis is None:
                        raise WitnessRefused(f"the first submission of {node} must carry its genesis")
                    conn.execute(
                        "INSERT INTO pins VALUES (?,?,?,?,?)",
                        (node, genesis.log_id, genesis.pubkey,
                         json.dumps(genesis.to_dict(), sort_keys=True), now),
                    )
                    pin = (genesis.log_id, genesis.pubkey)
                elif genesis is not None and genesis.log_id != pin[0]:
                    conflicts.append(self._conflict(
                        node, genesis.seq, "another genesis (log replaced)", pin[0], genesis.log_id, now
                    ))
                if not conflicts:
                    key = VerifyKey.from_bytes(bytes.fromhex(pin[1]))
                    for cp in cps:
                        try:
                            cp.verify(key)
                        except BadSignature as exc:
                            raise WitnessRefused(
                                f"a checkpoint of {node} is not signed by the key pinned for it"
                            ) from exc
                        held = conn.execute(
                            "SELECT hash FROM copies WHERE node = ? AND seq = ?", (node, cp.seq)
                        ).fetchone()
                        if held is None:
                            conn.execute(
                                "INSERT INTO copies VALUES (?,?,?,?,?,?,?,?)",
                                (node, cp.seq, cp.hash, cp.key_id, cp.signature, now, cp.every,
                                 cp.seconds),
                            )
                            stored += 1
                        elif held[0] != cp.hash:
                            conflicts.append(self._conflict(
                                node, cp.seq, "another hash for a witnessed entry (history "
                                "rewritten)", held[0], cp.hash, now,
                            ))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return {"stored": stored, "conflicts": conflicts}

    def _conflict(
        self, node: str, seq: int, reason: str, held: str, offered: str, now: float
    ) -> dict[str, Any]:
        self._conn.execute(
            "INSERT INTO conflicts VALUES (?,?,?,?,?,?)", (node, seq, reason, held, offered, now)
        )
        return {"node": node, "seq": seq, "reason": reason, "held": held, "offered": offered}

    def copies(self, node: str) -> dict[str, Any]:
        """The wire form of what this witness holds for `node` (`WitnessCopies.from_wire`)."""
        with self._lock:
            pin = self._conn.execute("SELECT log_id FROM pins WHERE node = ?", (node,)).fetchone()
            rows = self._conn.execute(
                "SELECT seq, hash, key_id, signature, every, seconds FROM copies WHERE node = ? "
                "ORDER BY seq "
                "LIMIT ?",
                (node, _MAX_COPIES),
            ).fetchall()
            conflicts = self._conn.execute(
                "SELECT seq, reason, held, offered, time FROM conflicts WHERE node = ?", (node,)
            ).fetchall()
        return {
            "node": node,
            "log_id": pin[0] if pin else None,
            "checkpoints": [
                Checkpoint(node, s, h, k, sig, every, seconds).to_dict()
                for s, h, k, sig, every, seconds in rows
            ],
            "conflicts": [
                {"seq": s, "reason": r, "held": h, "offered": o, "time": t}
                for s, r, h, o, t in conflicts
            ],
        }


def _genesis(raw: Any, node: str) -> Genesis | None:
    if raw is None:
        return None
    try:
        genesis = Genesis.from_dict(raw)
        genesis.verify(None)  # self-signed here; the pin makes it this node's key from now on
    except (IntegrityError, BadSignature) as exc:
        raise WitnessRefused("the submitted genesis is malformed or not signed") from exc
    if genesis.node != node:
        raise WitnessRefused("a node may submit only its own genesis")
    return genesis


def _checkpoints(raw: Any, node: str) -> list[Checkpoint]:
    if not isinstance(raw, list) or len(raw) > _MAX_PER_REQUEST:
        raise WitnessRefused(f"checkpoints must be a list of at most {_MAX_PER_REQUEST}")
    cps = []
    for item in raw:
        if not isinstance(item, Mapping):
            raise WitnessRefused("a checkpoint must be an object")
        cp = Checkpoint.from_dict(item)
        if cp.node != node:
            raise WitnessRefused("a node may submit only its own checkpoints")
        cps.append(cp)
    return cps


# ---- server side ---------------------------------------------------------------------------

Handler = Callable[[dict[str, Any], "ApiPrincipal"], Awaitable[Any]]


class WitnessOps:
    """The witness ops, an `ApiExtension` of the agent's API server (the daemon injects it)."""

    def __init__(self, audit: AuditLog, engine: Any, store: WitnessStore | None = None) -> None:
        self.audit = audit
        self.engine = engine
        self.store = store or WitnessStore(Path(audit.path).parent / "witness.db")

    def ops(self) -> Mapping[str, tuple[str, Handler]]:
        return {
            "witness": (WITNESS_ACTION, self.op_witness),
            "witness-copies": (WITNESS_ACTION, self.op_copies),
        }

    def close(self) -> None:
        self.store.close()

    async def op_witness(self, req: dict[str, Any], p: ApiPrincipal) -> Any:
        if p.transport != "tls" or p.kind != "node" or not p.ident:
            # Only a node, identified by its certificate, has checkpoints to witness.
            raise AccessDenied("only cluster nodes submit checkpoints to a witness")
        try:
            result = await asyncio.to_thread(
                self.store.submit, p.ident, req.get("genesis"), req.get("checkpoints")
            )
        except (WitnessRefused, IntegrityError) as exc:
            await asyncio.to_thread(
                self.audit.append, "audit.witness-refused", p.name, {"reason": exc.message}
            )
            raise
        if result["conflicts"]:
            await self._raise_conflict(p, result["conflicts"])
        return result

    async def op_copies(self, req: dict[str, Any], p: ApiPrincipal) -> Any:
        node = req.get("node")
        if not isinstance(node, str) or not node or len(node) > 200:
            raise UsageError("node must be a non-empty string of at most 200")
        return await asyncio.to_thread(self.store.copies, node)

    async def _raise_conflict(self, p: ApiPrincipal, conflicts: list[dict[str, Any]]) -> None:
        data = {"node": p.ident, "conflicts": conflicts[:20]}
        await asyncio.to_thread(self.audit.append, "audit.witness-conflict", p.name, data)
        first = conflicts[0]
        try:
            await asyncio.to_thread(
                self.engine.report,
                "audit-tampered",
                "critical",
                {"node": p.ident, "reason": first["reason"], "seq": first["seq"],
                 "witnessed_by": "this node", "dedup_key": f"witness:{p.ident}:{first['seq']}"},
            )
        except TrainguardError as exc:
            log.error("witness conflict for %s not raised as an incident: %s", p.ident, exc.message)


# ---- client side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    witness: str
    sent: int
    conflicts: tuple[Mapping[str, Any], ...] = ()


def _client(home: Home, url: str) -> Any:
    from trainguard.agent.api.client import AgentClient

    pki = home.pki_dir
    return AgentClient.remote(url, pki / "node.crt", pki / "node.key", pki / "ca.crt", timeout=15.0)


def _state_path(home: Home) -> Path:
    return home.state_dir / "witness-sent.json"


def push_checkpoints(
    home: Home, config: Config, audit: AuditLog, *, recheck: bool = False
) -> PushResult | None:
    """Send the checkpoints the witness has not acknowledged yet (None: no witness set).
    The last acknowledged checkpoint is kept in ``state/witness-sent.json``, so an outage
    loses nothing: the next push sends everything since. Each push that sends anything also
    re-sends the last acknowledged checkpoint (and `recheck` forces that), so a history
    rewritten since shows up at the witness as a conflict. Raises `AgentError` when the witness
    cannot be reached, `WitnessRefused` when it refuses."""
    from trainguard.core.fs import write_private
    from trainguard.evidence.embedded import audit_config

    url = audit_config(config).witness
    if not url:
        return None
    found = audit.genesis()
    if found is None:
        raise WitnessRefused(
            "this log has no genesis, so a witness cannot pin it",
            tip="run `trainguard audit seal-genesis` first",
        )
    genesis = found[0]
    state_path = _state_path(home)
    try:
        state = json.loads(state_path.read_text())
        known = state.get("witness") == url and state.get("log_id") == genesis.log_id
        sent_seq = int(state["seq"]) if known else -1
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        sent_seq = -1  # the witness has not acknowledged this log's genesis yet
    pending = audit.checkpoints_after(max(sent_seq, 0))
    if not pending and sent_seq >= 0 and not recheck:
        return PushResult(url, 0)
    if sent_seq > 0:
        pending = audit.checkpoints_after(sent_seq - 1)[:1] + pending
    sent = 0
    conflicts: list[Mapping[str, Any]] = []
    with _client(home, url) as client:
        batches = [pending[i : i + _MAX_PER_REQUEST] for i in range(0, len(pending), _MAX_PER_REQUEST)]
        for batch in batches or [[]]:
            result = client.call(
                "witness", genesis=genesis.to_dict(), checkpoints=[cp.to_dict() for _, cp in batch]
            )
            conflicts += list(result.get("conflicts", []))
            sent += len(batch)
            if not conflicts:
                sent_seq = batch[-1][0] if batch else max(sent_seq, 0)
                write_private(
                    state_path,
                    json.dumps({"witness": url, "log_id": genesis.log_id, "seq": sent_seq}).encode(),
                )
    return PushResult(url, sent, tuple(conflicts))


def push_quietly(home: Home, config: Config, audit: AuditLog) -> str | None:
    """`push_checkpoints` for the agent's cycle: a witness outage or refusal is reported (the
    returned text, and the log) but never stops the agent; the next cycle sends it again."""
    try:
        result = push_checkpoints(home, config, audit)
    except TrainguardError as exc:
        log.warning("checkpoints not sent to the witness: %s", exc.message)
        return f"witness: {exc.message}"
    if result is not None and result.conflicts:
        reason = result.conflicts[0].get("reason")
        log.error("the witness %s holds another history of this log: %s", result.witness, reason)
        return f"witness {result.witness} holds another history of this log: {reason}"
    return None


def fetch_copies(home: Home, url: str, node: str) -> WitnessCopies:
    """What the witness at `url` holds for `node`, over mTLS with this home's certificate."""
    with _client(home, url) as client:
        raw = client.call("witness-copies", node=node)
    return WitnessCopies.from_wire(raw, f"witness {url}")
