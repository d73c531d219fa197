"""Audit history that cannot be rewritten or replaced without the node key: signed genesis,
checkpoint cadence, witness copies (issue 21, section 3)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trainguard.crypto.signing import SigningKey
from trainguard.evidence.audit_chain import (
    CHECKPOINT_KIND,
    GENESIS,
    GENESIS_KIND,
    AuditTampered,
    Cadence,
    Checkpoint,
    Row,
    entry_hash,
    verify_entries,
)
from trainguard.evidence.audit_genesis import make_genesis
from trainguard.evidence.audit_log import AuditLog
from trainguard.evidence.audit_witness import WitnessCopies, compare_with_copies

KEY = SigningKey.generate()
PUB = KEY.public_key()


class Clock:
    def __init__(self, step: float = 0.5) -> None:
        self.t = 1_700_000_000.0
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def _log(path: Path, *, every: int = 5, seconds: float = 1e9, clock: Clock | None = None) -> AuditLog:
    log = AuditLog.open(
        path, "node-a", KEY, clock=clock or Clock(), checkpoint_every=every,
        checkpoint_seconds=seconds,
    )
    if log.last_seq() == 0:
        log.write_genesis(KEY, cluster="c1")
    return log


def _rows(log: AuditLog) -> list[Row]:
    return [(s, t, n, a, k, d, bytes(p), bytes(h)) for s, t, n, a, k, d, p, h in log.raw_rows()]


def _rechain(rows: list[Row]) -> list[Row]:
    """What an attacker without the key can do after any change: renumber 1..n and recompute
    every prev_hash and hash, so the chain itself is consistent again."""
    out: list[Row] = []
    prev = GENESIS
    for i, (_s, t, node, actor, kind, data, _p, _h) in enumerate(rows, start=1):
        digest = entry_hash(prev, i, t, node, actor, kind, data)
        out.append((i, t, node, actor, kind, data, prev, digest))
        prev = digest
    return out


CADENCE = Cadence(max_entries=10, max_seconds=1e9)


def _verify(rows: list[Row], **kw: object) -> object:
    return verify_entries(rows, PUB, anchor=GENESIS, require_genesis=True, cadence=CADENCE, **kw)  # type: ignore[arg-type]


# ---- the findings ------------------------------------------------------------------------


def test_dropping_checkpoints_and_renumbering_fails_verify(tmp_path: Path) -> None:
    """The attack found: every signed checkpoint dropped, the rest renumbered and rehashed."""
    log = _log(tmp_path / "a.db", every=5)
    log.append_many([("x", "a", {"i": i}) for i in range(40)])
    rows = _rows(log)
    assert _verify(rows)  # the honest log passes with the cadence
    forged = _rechain([r for r in rows if r[4] != CHECKPOINT_KIND])
    with pytest.raises(AuditTampered, match="without a signed checkpoint"):
        _verify(forged)


def test_log_rebuilt_from_scratch_without_the_key_fails_verify(tmp_path: Path) -> None:
    log = _log(tmp_path / "a.db")
    log.append_many([("x", "a", {"i": i}) for i in range(3)])
    no_genesis = _rechain([r for r in _rows(log) if r[4] != GENESIS_KIND])
    with pytest.raises(AuditTampered, match="genesis"):
        _verify(no_genesis)
    # A genesis signed by the attacker's own key is not the node's.
    other = SigningKey.generate()
    g = make_genesis(other, cluster="c1", node="node-a", seq=1, prev_hash=GENESIS, created_at=1.0)
    data = json.dumps(g.to_dict(), sort_keys=True, separators=(",", ":"))
    fake = _rechain([(1, 1.0, "node-a", "trainguard-init", GENESIS_KIND, data, GENESIS, GENESIS),
                     *no_genesis])
    with pytest.raises(AuditTampered, match="not signed by the node key") as err:
        _verify(fake)
    assert err.value.seq == 1


def test_second_or_moved_genesis_is_refused(tmp_path: Path) -> None:
    log = _log(tmp_path / "a.db")
    log.append_many([("x", "a", {"i": i}) for i in range(3)])
    rows = _rows(log)
    with pytest.raises(AuditTampered, match="second genesis"):
        _verify(_rechain([*rows, rows[0]]))
    with pytest.raises(AuditTampered):  # moved down: its signed seq no longer matches
        _verify(_rechain([*rows[1:], rows[0]]))
    with pytest.raises(Exception, match="already has a genesis"):
        log.write_genesis(KEY, cluster="c1")


def test_unsigned_tail_longer_than_the_cadence_fails(tmp_path: Path) -> None:
    _log(tmp_path / "a.db").close()  # genesis, signed
    unsigned = AuditLog.open(tmp_path / "a.db", "node-a", None, clock=Clock())  # no key
    unsigned.append_many([("x", "a", {"i": i}) for i in range(11)])
    with pytest.raises(AuditTampered, match="11 entries without a signed checkpoint") as err:
        _verify(_rows(unsigned))
    assert err.value.seq == 12  # names the first entry past the cadence
    unsigned.append_many([])  # ten would have passed:
    _verify(_rows(unsigned)[:11])


def test_unsigned_run_spanning_too_long_fails(tmp_path: Path) -> None:
    clock = Clock(step=100.0)
    log = AuditLog.open(tmp_path / "a.db", "node-a", None, clock=clock)  # a writer without key
    signed = AuditLog.open(tmp_path / "a.db", "node-a", KEY, clock=clock)
    signed.write_genesis(KEY, cluster="c1")
    log.append_many([("x", "a", {"i": i}) for i in range(5)])
    with pytest.raises(AuditTampered, match="span 400 s"):
        verify_entries(_rows(log), PUB, anchor=GENESIS, require_genesis=True,
                       cadence=Cadence(max_entries=100, max_seconds=300))


def test_writer_signs_a_stale_tail_before_adding_to_it(tmp_path: Path) -> None:
    """No agent signs on a timer on a laptop: entries days apart still meet the cadence."""
    clock = Clock()
    log = _log(tmp_path / "a.db", every=1000, seconds=300, clock=clock)
    for day in range(5):
        log.append_many([("x", "a", {"day": day, "i": i}) for i in range(3)])
        clock.t += 86_400
    rep = verify_entries(_rows(log), PUB, anchor=GENESIS, require_genesis=True,
                         cadence=Cadence(max_entries=2000, max_seconds=660))
    assert rep.checkpoints >= 4 and rep.genesis is not None


def test_legacy_log_sealed_later_verifies_and_covers_its_past(tmp_path: Path) -> None:
    legacy = AuditLog.open(tmp_path / "a.db", "node-a", KEY, clock=Clock(), checkpoint_every=4)
    legacy.append_many([("x", "a", {"i": i}) for i in range(6)])
    with pytest.raises(AuditTampered, match="seal-genesis"):
        legacy.verify(PUB, require_genesis=True, cadence=CADENCE)
    genesis, _ = legacy.write_genesis(KEY, cluster="c1")
    assert genesis.legacy and genesis.seq == legacy.last_seq()
    rep = legacy.verify(PUB, require_genesis=True, cadence=CADENCE)
    assert rep.genesis is not None and rep.genesis.legacy
    rows = _rows(legacy)
    edited = [*rows]
    edited[1] = (*rows[1][:5], '{"i":"forged"}', *rows[1][6:])  # type: ignore[assignment]
    with pytest.raises(AuditTampered):  # the legacy past is covered by the genesis signature
        _verify(_rechain(edited))


# ---- witness copies ------------------------------------------------------------------------


def _copies(log: AuditLog, **kw: object) -> WitnessCopies:
    g = log.genesis()
    assert g is not None
    cps = tuple(cp for _, cp in log.checkpoints_after(0))
    return WitnessCopies("node-a", "witness w1", g[0].log_id, cps, **kw)  # type: ignore[arg-type]


def _compare(log: AuditLog, copies: WitnessCopies) -> int:
    rep = log.verify(PUB)
    return compare_with_copies(
        [copies], log_id=rep.genesis.log_id if rep.genesis else None, last_seq=rep.last_seq,
        hashes=log.hashes_at([c.seq for c in copies.checkpoints]), verify_key=PUB,
    )


def test_rewrite_with_the_key_is_caught_by_the_witness_copy(tmp_path: Path) -> None:
    """Root holds the key and re-signs a rewritten history: it verifies locally, not against
    the copy of a checkpoint that left the node before."""
    path = tmp_path / "a.db"
    log = _log(path, every=5)
    log.append_many([("x", "a", {"i": i}) for i in range(12)])
    copies = _copies(log)
    assert _compare(log, copies) == len(copies.checkpoints) >= 2
    # Rewrite entry 3 and re-sign every checkpoint with the real key.
    rows = _rows(log)
    out: list[Row] = []
    prev = GENESIS
    for i, (s, t, node, actor, kind, data, _p, _h) in enumerate(rows, start=1):
        if s == 3:
            data = '{"i":"rewritten"}'
        if kind == CHECKPOINT_KIND:
            unsigned = Checkpoint(node, i - 1, prev.hex(), KEY.key_id, "")
            cp = Checkpoint(node, i - 1, prev.hex(), KEY.key_id, KEY.sign(unsigned.payload()).hex())
            data = json.dumps(cp.to_dict(), sort_keys=True, separators=(",", ":"))
        digest = entry_hash(prev, i, t, node, actor, kind, data)
        out.append((i, t, node, actor, kind, data, prev, digest))
        prev = digest
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DELETE FROM entries")
    db.executemany("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?)", out)
    log.verify(PUB, require_genesis=True, cadence=CADENCE)  # passes locally...
    with pytest.raises(AuditTampered, match="history rewritten"):  # ...not against the copy
        _compare(log, copies)


def test_rollback_is_caught_by_the_witness_copy(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    log = _log(path, every=5)
    log.append_many([("x", "a", {"i": i}) for i in range(12)])
    copies = _copies(log)
    sqlite3.connect(path, isolation_level=None).execute("DELETE FROM entries WHERE seq > 4")
    with pytest.raises(AuditTampered, match="rolled back"):
        _compare(log, copies)


def test_replaced_log_and_forked_history_are_caught_by_the_witness(tmp_path: Path) -> None:
    log = _log(tmp_path / "a.db")
    log.append_many([("x", "a", {"i": i}) for i in range(6)])
    other = _log(tmp_path / "b.db")
    with pytest.raises(AuditTampered, match="log replaced"):
        _compare(log, _copies(other))
    forked = _copies(log, conflicts=({"seq": 5, "reason": "another hash"},))
    with pytest.raises(AuditTampered, match="two different histories"):
        _compare(log, forked)


# ---- properties ------------------------------------------------------------------------------

MUTATIONS = st.sampled_from(["delete", "insert", "reorder", "edit", "renumber", "drop-checkpoint"])


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(min_value=3, max_value=30), mutation=MUTATIONS,
       recompute=st.booleans(), data=st.data())
def test_any_change_of_covered_history_without_the_key_fails(
    tmp_path_factory: pytest.TempPathFactory, n: int, mutation: str, recompute: bool,
    data: st.DataObject,
) -> None:
    """With the newest checkpoint held off-node (the witness copy or a saved checkpoint), any
    deletion, insertion, reorder, edit or dropped checkpoint among the entries it covers fails,
    whether or not the attacker renumbers and recomputes the chain afterwards."""
    log = _log(tmp_path_factory.mktemp("h") / "a.db", every=4)
    log.append_many([("x", "a", {"i": i}) for i in range(n)])
    log.checkpoint(force=True)
    rows = _rows(log)
    held = log.latest_checkpoint()
    assert held is not None
    covered = held.seq  # rows[0..covered-1] are covered by the held checkpoint
    i = data.draw(st.integers(0, covered - 1))
    if mutation == "delete":
        del rows[i]
    elif mutation == "insert":
        forged: Row = (0, rows[i][1], "node-a", "mallory", "x", '{"forged":1}', GENESIS, GENESIS)
        rows.insert(i, forged)
    elif mutation == "reorder":
        j = data.draw(st.integers(0, covered - 1).filter(lambda j: j != i))
        rows[i], rows[j] = rows[j], rows[i]
    elif mutation == "edit":
        rows[i] = (*rows[i][:3], "mallory", *rows[i][4:])  # type: ignore[assignment]
    elif mutation == "renumber":  # every seq from i on shifted, as after a deletion
        rows[i:] = [(r[0] + 1, *r[1:]) for r in rows[i:]]  # type: ignore[misc]
    else:
        cps = [k for k, r in enumerate(rows[:covered]) if r[4] == CHECKPOINT_KIND]
        if not cps:
            return
        del rows[data.draw(st.sampled_from(cps))]
    if recompute and mutation != "renumber":  # rechaining renumbers 1..n: undoes a renumber
        rows = _rechain(rows)
    with pytest.raises(AuditTampered):
        _verify(rows, trusted_checkpoint=held)
    log.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(every=st.integers(min_value=1, max_value=8), n=st.integers(min_value=0, max_value=60),
       slack=st.integers(min_value=0, max_value=8))
def test_cadence_holds_for_honest_logs_and_fails_when_checkpoints_go(
    tmp_path_factory: pytest.TempPathFactory, every: int, n: int, slack: int
) -> None:
    """An honest writer always meets a cadence of `every` (or more); the same log with its
    checkpoints dropped and rechained fails it once more than the cadence went unsigned."""
    log = _log(tmp_path_factory.mktemp("c") / "a.db", every=every)
    log.append_many([("x", "a", {"i": i}) for i in range(n)])
    rows = _rows(log)
    cadence = Cadence(max_entries=every + slack, max_seconds=1e9)
    verify_entries(rows, PUB, anchor=GENESIS, require_genesis=True, cadence=cadence)
    stripped = _rechain([r for r in rows if r[4] != CHECKPOINT_KIND])
    if n > every + slack:
        with pytest.raises(AuditTampered, match="without a signed checkpoint"):
            verify_entries(stripped, PUB, anchor=GENESIS, require_genesis=True, cadence=cadence)
    log.close()


def test_a_lowered_cadence_holds_the_tail_to_the_signed_promise(tmp_path: Path) -> None:
    """An operator lowers checkpoint_every: the tail written under the old cadence verifies,
    because the last checkpoint signed that promise; without the key nobody can stretch it."""
    log = _log(tmp_path / "a.db", every=100)
    log.append_many([("x", "a", {"i": i}) for i in range(150)])
    tight = Cadence.derived(3, 1e9)
    rows = _rows(log)
    rep = verify_entries(rows, PUB, anchor=GENESIS, require_genesis=True, cadence=tight)
    assert rep.unsigned_tail > tight.max_entries
    last = max(i for i, r in enumerate(rows) if r[4] == CHECKPOINT_KIND)
    cp = json.loads(rows[last][5])
    cp["every"] = 10**9  # stretch the promise to hide a longer forged tail
    stretched = [*rows]
    stretched[last] = (*rows[last][:5], json.dumps(cp, sort_keys=True), *rows[last][6:])  # type: ignore[assignment]
    with pytest.raises(AuditTampered, match="signature"):
        verify_entries(_rechain(stretched), PUB, anchor=GENESIS, cadence=tight)


def test_witness_store_pins_per_node_and_keeps_conflicts(tmp_path: Path) -> None:
    from trainguard.agent.api.witness import WitnessRefused, WitnessStore

    log = _log(tmp_path / "a.db", every=3)
    log.append_many([("x", "a", {"i": i}) for i in range(7)])
    g = log.genesis()
    assert g is not None
    cps = [cp.to_dict() for _, cp in log.checkpoints_after(0)]
    store = WitnessStore(tmp_path / "w.db")
    with pytest.raises(WitnessRefused, match="must carry its genesis"):
        store.submit("node-a", None, cps)
    with pytest.raises(WitnessRefused, match="only its own"):  # genesis of node-a, sent by node-b
        store.submit("node-b", g[0].to_dict(), [])
    assert store.submit("node-a", g[0].to_dict(), cps) == {"stored": len(cps), "conflicts": []}
    with pytest.raises(WitnessRefused, match="only its own"):
        store.submit("node-b", None, cps)
    forged = {**cps[0], "hash": "11" * 32}
    with pytest.raises(WitnessRefused, match="not signed by the key pinned"):
        store.submit("node-a", None, [forged])
    copies = WitnessCopies.from_wire(store.copies("node-a"), "w")
    assert copies.log_id == g[0].log_id and len(copies.checkpoints) == len(cps)
    assert _compare(log, copies) == len(cps)  # the stored copies still verify (v2 payload)
    other = _log(tmp_path / "b.db")
    og = other.genesis()
    assert og is not None
    res = store.submit("node-a", og[0].to_dict(), [])
    assert res["conflicts"] and "log replaced" in res["conflicts"][0]["reason"]
    assert store.copies("node-a")["conflicts"]
    assert store.copies("node-b")["checkpoints"] == []


def test_log_deleted_or_swapped_while_open_refuses_writes(tmp_path: Path) -> None:
    """SQLite keeps writing into an unlinked file: an open log (the agent's) must notice."""
    path = tmp_path / "a.db"
    log = _log(path)
    lost: list[str] = []
    log.on_lost = lost.append
    log.append("x", "a", {})
    for f in tmp_path.glob("a.db*"):
        f.unlink()
    with pytest.raises(Exception, match="missing") as err:
        log.append("x", "a", {})
    assert err.value.exit_code == 2 and lost and "missing" in lost[0]
    with pytest.raises(Exception, match="missing"):
        log.checkpoint(force=True)
    other = _log(tmp_path / "b.db")
    other.close()
    (tmp_path / "b.db").rename(path)  # another log moved into its place
    with pytest.raises(Exception, match="swapped"):
        log.append("x", "a", {})


def test_gap_between_checkpoints_longer_than_the_cadence_fails(tmp_path: Path) -> None:
    """A run of entries nobody signed in time fails even when a checkpoint closes it later."""
    signed = _log(tmp_path / "a.db", every=5)
    signed.append_many([("x", "a", {"i": i}) for i in range(4)])
    unsigned = AuditLog.open(tmp_path / "a.db", "node-a", None, clock=Clock())  # no key
    unsigned.append_many([("x", "b", {"i": i}) for i in range(12)])
    assert signed.checkpoint(force=True) is not None  # closes the gap, too late
    signed.append_many([("x", "a", {"i": i}) for i in range(2)])
    with pytest.raises(AuditTampered, match="without a signed checkpoint") as err:
        verify_entries(_rows(signed), PUB, anchor=GENESIS, require_genesis=True,
                       cadence=Cadence.derived(5, 1e9))
    assert err.value.seq == 2 + 10  # the gap starts after the genesis: its 11th entry
    # Entries written under a longer, signed cadence are not held to a shorter one later.
    verify_entries(_rows(signed), PUB, anchor=GENESIS, cadence=Cadence.derived(100, 1e9))
