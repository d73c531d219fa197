"""The audit log: chain, checkpoints, tamper detection at the right seq, rollback, concurrency."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trainguard.crypto.signing import SigningKey
from trainguard.evidence.audit_log import (
    CHECKPOINT_KIND,
    AuditLog,
    AuditTampered,
    Checkpoint,
    verify_segment,
)

KEY = SigningKey.generate()


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 0.5
        return self.t


def _log(
    path: Path, every: int = 1000, seconds: float = 1e9, key: SigningKey | None = KEY
) -> AuditLog:
    return AuditLog.open(
        path, "node-a", key, clock=Clock(), checkpoint_every=every, checkpoint_seconds=seconds
    )


def _db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def test_append_returns_consecutive_seqs_and_entries_round_trip(tmp_path: Path) -> None:
    log = _log(tmp_path / "a.db")
    assert log.append("policy.grant", "alice", {"role": "admin", "n": 1}) == 1
    assert log.append_many([("x", "bob", {"i": i}) for i in range(3)]) == [2, 3, 4]
    got = list(log.entries())
    assert [e.seq for e in got] == [1, 2, 3, 4]
    assert got[0].data == {"role": "admin", "n": 1} and got[0].actor == "alice"
    assert got[1].prev_hash == got[0].hash
    assert [e.seq for e in log.entries(kind="x")] == [2, 3, 4]
    assert [e.seq for e in log.entries(kind="policy.*")] == [1]
    assert [e.seq for e in log.entries(since=got[2].time)] == [3, 4]
    assert log.verify(KEY.public_key()).entries == 4


def test_db_file_is_private(tmp_path: Path) -> None:
    log = _log(tmp_path / "a.db")
    log.append("x", "a", {})
    assert (tmp_path / "a.db").stat().st_mode & 0o077 == 0


def test_signed_checkpoints_every_n_entries(tmp_path: Path) -> None:
    log = _log(tmp_path / "a.db", every=10)
    log.append_many([("x", "a", {"i": i}) for i in range(25)])
    report = log.verify(KEY.public_key())
    assert report.checkpoints == 2
    cp = log.latest_checkpoint()
    assert cp is not None and cp.node == "node-a"
    cp.verify(KEY.public_key())
    assert report.unsigned_tail == report.last_seq - cp.seq - 1


def test_checkpoint_after_t_seconds_and_forced(tmp_path: Path) -> None:
    clock = Clock()
    log = AuditLog.open(
        tmp_path / "a.db", "n", KEY, clock=clock, checkpoint_every=10**6, checkpoint_seconds=60
    )
    log.append("x", "a", {})
    assert log.checkpoint() is None  # not due yet
    clock.t += 61
    cp = log.checkpoint()
    assert cp is not None and cp.seq == 1
    assert log.checkpoint(force=True) is None  # nothing new to cover
    log.append("x", "a", {})
    assert log.checkpoint(force=True) is not None


def test_checkpoint_signed_by_other_key_is_rejected(tmp_path: Path) -> None:
    log = _log(tmp_path / "a.db", every=3, key=SigningKey.generate())
    log.append_many([("x", "a", {"i": i}) for i in range(5)])
    with pytest.raises(AuditTampered) as err:
        log.verify(KEY.public_key())
    assert err.value.seq == 4
    assert "signature" in err.value.message


def test_rewritten_chain_with_recomputed_hashes_is_caught_by_checkpoint(tmp_path: Path) -> None:
    """An attacker without the node key edits entry 2 and recomputes every later hash."""
    from trainguard.evidence.audit_log import entry_hash

    path = tmp_path / "a.db"
    log = _log(path, every=5)
    log.append_many([("x", "a", {"i": i}) for i in range(8)])
    db = _db(path)
    rows = db.execute("SELECT * FROM entries ORDER BY seq").fetchall()
    prev = bytes(32)
    for seq, t, node, actor, kind, data, _p, _h in rows:
        if seq == 2:
            data = '{"i":999}'
        h = entry_hash(prev, seq, t, node, actor, kind, data)
        db.execute(
            "UPDATE entries SET data=?, prev_hash=?, hash=? WHERE seq=?", (data, prev, h, seq)
        )
        prev = h
    with pytest.raises(AuditTampered) as err:
        log.verify(KEY.public_key())
    assert err.value.seq == 6  # the first checkpoint after the edit


def test_rollback_against_saved_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    log = _log(path, every=5)
    log.append_many([("x", "a", {"i": i}) for i in range(12)])
    saved = Checkpoint.from_dict(log.latest_checkpoint().to_dict())  # type: ignore[union-attr]
    log.verify(KEY.public_key(), trusted_checkpoint=saved)
    _db(path).execute("DELETE FROM entries WHERE seq > 5")
    with pytest.raises(AuditTampered) as err:
        log.verify(KEY.public_key(), trusted_checkpoint=saved)
    assert "rolled back" in err.value.message
    # A forged "saved" checkpoint is refused outright.
    forged = Checkpoint(saved.node, saved.seq, saved.hash, saved.key_id, "00" * 64)
    with pytest.raises(AuditTampered):
        log.verify(KEY.public_key(), trusted_checkpoint=forged)


def test_export_segment_verifies_and_detects_edits(tmp_path: Path) -> None:
    log = _log(tmp_path / "a.db", every=4)
    log.append_many([("x", "a", {"i": i}) for i in range(10)])
    seg = log.export_segment(3, 9)
    assert seg["checkpoint"]["seq"] <= 9
    assert verify_segment(seg, KEY.public_key()).entries == 7
    seg["entries"][2]["data"] = '{"i":-1}'
    with pytest.raises(AuditTampered) as err:
        verify_segment(seg, KEY.public_key())
    assert err.value.seq == 5


def test_two_writers_never_fork_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    a, b = _log(path, every=7), _log(path, every=7)

    def write(log: AuditLog, tag: str) -> None:
        for i in range(60):
            log.append("x", tag, {"i": i})

    threads = [threading.Thread(target=write, args=(lg, t)) for lg, t in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = a.verify(KEY.public_key())
    assert sum(1 for e in a.entries() if e.kind != CHECKPOINT_KIND) == 120
    assert report.last_seq == report.entries


# ---- property test: any single edit, deletion or swap is caught at the right seq ----------

MUTATION = st.sampled_from(["edit-data", "edit-actor", "edit-hash", "delete", "swap"])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(n=st.integers(min_value=2, max_value=25), mutation=MUTATION, data=st.data())
def test_any_single_mutation_is_detected_at_its_seq(
    tmp_path_factory: pytest.TempPathFactory, n: int, mutation: str, data: st.DataObject
) -> None:
    path = tmp_path_factory.mktemp("prop") / "a.db"
    log = _log(path, every=4)
    log.append_many([("x", "a", {"i": i}) for i in range(n)])
    last = log.last_seq()
    db = _db(path)
    if mutation == "delete":
        target = data.draw(st.integers(1, last - 1))  # deleting the tail needs a saved checkpoint
        db.execute("DELETE FROM entries WHERE seq=?", (target,))
    elif mutation == "swap":
        target = data.draw(st.integers(1, last - 1))
        other = data.draw(st.integers(target + 1, last))
        db.execute("UPDATE entries SET seq=-1 WHERE seq=?", (target,))
        db.execute("UPDATE entries SET seq=? WHERE seq=?", (target, other))
        db.execute("UPDATE entries SET seq=? WHERE seq=-1", (other,))
    else:
        target = data.draw(st.integers(1, last))
        column = {"edit-data": "data", "edit-actor": "actor", "edit-hash": "hash"}[mutation]
        value = {"data": '{"i":"forged"}', "actor": "mallory", "hash": b"\x01" * 32}[column]
        db.execute(f"UPDATE entries SET {column}=? WHERE seq=?", (value, target))
    with pytest.raises(AuditTampered) as err:
        log.verify(KEY.public_key())
    assert err.value.seq == target
    log.close()


def test_deleting_the_tail_is_caught_with_a_saved_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    log = _log(path, every=1)
    log.append_many([("x", "a", {"i": i}) for i in range(3)])
    saved = log.latest_checkpoint()
    assert saved is not None
    _db(path).execute("DELETE FROM entries WHERE seq >= ?", (saved.seq,))
    log.verify(KEY.public_key())  # the chain alone cannot see a clean truncation...
    with pytest.raises(AuditTampered):  # ...the saved checkpoint can
        log.verify(KEY.public_key(), trusted_checkpoint=saved)
