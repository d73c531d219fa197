"""Audit history that cannot be rewritten or replaced, through the real CLI (issue 21, section 3):
a signed genesis at init, the checkpoint cadence in `audit verify`, a missing or replaced log
refused as audit-tampered, the legacy-home migration, and copies kept by a witness peer."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from trainguard.agent.api.client import AgentClient
from trainguard.core.home import Home

pytestmark = pytest.mark.integration

GENESIS = bytes(32)
EVERY = {"TRAINGUARD_AUDIT_CHECKPOINT_EVERY": "3"}


def _init(cli, home: Path, node: str = "n1") -> None:  # noqa: ANN001
    r = cli("init", "--home", home, "--cluster", "c1", "--node", node, "--admin", "alice")
    assert r.code == 0, r.stderr


@pytest.fixture
def home(cli, tmp_path: Path) -> Path:  # noqa: ANN001
    h = tmp_path / "home"
    _init(cli, h)
    return h


def _events(cli, home: Path, n: int) -> None:  # noqa: ANN001
    for i in range(n):
        r = cli("pki", "issue", f"u{i}", "--kind", "user", "--out", home.parent / f"c{i}",
                "--home", home, env=EVERY)
        assert r.code == 0, r.stderr


def _rechain(db: Path, rows: list[tuple]) -> None:  # type: ignore[type-arg]
    """What an attacker without the key does: renumber and recompute every hash."""
    from trainguard.evidence.audit_chain import entry_hash

    out, prev = [], GENESIS
    for i, (_s, t, node, actor, kind, data, _p, _h) in enumerate(rows, start=1):
        digest = entry_hash(prev, i, t, node, actor, kind, data)
        out.append((i, t, node, actor, kind, data, prev, digest))
        prev = digest
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM entries")
        conn.executemany("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?)", out)


def _rows(db: Path) -> list[tuple]:  # type: ignore[type-arg]
    with sqlite3.connect(db) as conn:
        return [(*r[:6], bytes(r[6]), bytes(r[7])) for r in conn.execute("SELECT * FROM entries ORDER BY seq")]


def test_init_signs_a_genesis_and_records_it(cli, home: Path) -> None:  # noqa: ANN001
    r = cli("audit", "verify", "--home", home, "--format", "json")
    assert r.code == 0, r.stderr
    out = r.json()
    assert out["genesis"]["seq"] == 1 and out["genesis"]["legacy"] is False
    record = json.loads((home / "state" / "audit-genesis.json").read_text())
    assert record["log_id"] == out["genesis"]["log_id"] and record["node"] == "n1"
    first = cli("audit", "log", "--home", home, "--format", "json").json()[0]
    assert first["kind"] == "audit.genesis" and first["data"]["cluster"] == "c1"
    assert out["unsigned_tail"] == 0  # verify signed the tail it had just verified


def test_dropping_checkpoints_and_renumbering_fails_verify(cli, home: Path) -> None:  # noqa: ANN001
    """The attack found: checkpoints dropped, the rest renumbered and recomputed, no key."""
    _events(cli, home, 4)
    db = home / "state" / "audit.db"
    assert cli("audit", "verify", "--home", home, env=EVERY).code == 0
    _rechain(db, [r for r in _rows(db) if r[4] != "audit.checkpoint"])
    r = cli("audit", "verify", "--home", home, "--format", "json", env=EVERY)
    assert r.code == 1, r.stderr
    assert "without a signed checkpoint" in r.stderr and "audit log tampered at entry" in r.stderr
    assert r.stdout == ""
    # ... and the log was not signed over: the forged tail stays unsigned
    assert not any(row[4] == "audit.checkpoint" for row in _rows(db))


def test_log_rebuilt_without_genesis_fails_verify(cli, home: Path) -> None:  # noqa: ANN001
    db = home / "state" / "audit.db"
    _rechain(db, [r for r in _rows(db) if r[4] not in ("audit.genesis", "audit.checkpoint")])
    r = cli("audit", "verify", "--home", home)
    assert r.code == 1
    assert "genesis" in r.stderr and "audit-tampered" in r.stderr


def test_deleted_audit_db_is_audit_tampered_not_recreated(cli, home: Path, tmp_path: Path) -> None:  # noqa: ANN001
    db = home / "state" / "audit.db"
    backup = tmp_path / "backup.db"
    shutil.copy(db, backup)
    for extra in home.glob("state/audit.db*"):
        extra.unlink()
    for argv in (("audit", "log"), ("hooks", "test", "gpu-misuse"), ("agent", "run", "--once")):
        r = cli(*argv, "--home", home)
        assert r.code == 2, (argv, r.stderr)
        assert "audit log" in r.stderr and "missing" in r.stderr and "restore" in r.stderr
        assert not db.exists(), argv  # never silently recreated
    r = cli("audit", "verify", "--home", home, "--format", "json")
    assert r.code == 1 and "audit-tampered" in r.stderr and not db.exists()
    pending = [json.loads(line) for line in
               (home / "state" / "audit-tampered.jsonl").read_text().splitlines()]
    assert pending and all(p["kind"] == "audit-tampered" for p in pending)
    assert len(pending) == 1  # the same refusal is kept once, not once per command
    # Restoring the log from the backup: the pending incident lands in it.
    shutil.copy(backup, db)
    r = cli("audit", "log", "--home", home, "--kind", "incident", "--format", "json")
    assert r.code == 0, r.stderr
    assert [e["data"]["kind"] for e in r.json()] == ["audit-tampered"]
    assert cli("audit", "verify", "--home", home).code == 0


def test_emptied_log_or_whole_state_folder_is_refused(cli, home: Path) -> None:  # noqa: ANN001
    db = home / "state" / "audit.db"
    db.write_bytes(b"")  # SQLite would open an empty file as a fresh, empty log
    r = cli("audit", "log", "--home", home)
    assert r.code == 2 and "no genesis" in r.stderr
    assert cli("audit", "verify", "--home", home).code == 1
    for f in (home / "state").iterdir():  # the log and the home's record of it, all gone
        f.unlink()
    r = cli("hooks", "test", "gpu-misuse", "--home", home)
    assert r.code == 2 and "missing" in r.stderr
    assert not db.exists()


def test_replaced_audit_db_is_refused(cli, home: Path, tmp_path: Path) -> None:  # noqa: ANN001
    other = tmp_path / "other"
    _init(cli, other)  # same node and cluster names, another init: another log
    shutil.copy(other / "state" / "audit.db", home / "state" / "audit.db")
    r = cli("audit", "log", "--home", home)
    assert r.code == 2 and "was replaced" in r.stderr and "restore" in r.stderr
    r = cli("audit", "verify", "--home", home)
    assert r.code == 1 and "was replaced" in r.stderr
    # A deleted genesis record is as suspicious as a deleted log.
    shutil.copy(other / "state" / "audit.db", home / "state" / "audit.db")
    (other / "state" / "audit-genesis.json").unlink()
    r = cli("audit", "log", "--home", other)
    assert r.code == 2 and "record" in r.stderr


def test_legacy_home_migrates_with_seal_genesis(cli, home: Path) -> None:  # noqa: ANN001
    """A home made before genesis: a log without one, and no record. It keeps working; verify
    fails until `audit seal-genesis`, which is then refused a second time."""
    from trainguard.crypto.signing import SigningKey
    from trainguard.evidence.audit_log import AuditLog

    db = home / "state" / "audit.db"
    for f in home.glob("state/audit*"):
        f.unlink()
    key = SigningKey.load(home / "keys" / "node.ed25519")
    with AuditLog.open(db, "n1", key, checkpoint_every=3) as old:  # the old writer
        old.append_many([("home-created", "init", {"i": i}) for i in range(7)])
    r = cli("audit", "log", "--home", home)
    assert r.code == 0, r.stderr
    assert "seal-genesis" in r.stderr  # warned
    r = cli("audit", "verify", "--home", home)
    assert r.code == 1 and "seal-genesis" in r.stderr
    r = cli("audit", "seal-genesis", "--home", home, "--format", "json")
    assert r.code == 0, r.stderr
    assert r.json()["legacy_entries"] == 9 and r.json()["genesis_seq"] == 10  # 7 + 2 checkpoints
    r = cli("audit", "verify", "--home", home, "--format", "json")
    assert r.code == 0, r.stderr
    assert r.json()["genesis"]["legacy"] is True
    assert cli("audit", "seal-genesis", "--home", home).code == 2


# ---- the witness peer -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def witness(cli, cli_env: dict[str, str], tmp_path: Path, home: Path) -> Iterator[tuple[Path, str]]:  # noqa: ANN001
    """A witness agent (node w1) that shares a CA with `home` (node n1): n1's certificate is
    re-issued by the witness's CA, as nodes of one cluster are."""
    w = tmp_path / "witness"
    _init(cli, w, "w1")
    port = _free_port()
    with (w / "trainguard.toml").open("a") as f:
        f.write(f'\n[agent]\nlisten = "127.0.0.1:{port}"\n')
    out = tmp_path / "n1-cert"
    assert cli("pki", "issue", "n1", "--kind", "node", "--out", out, "--home", w).code == 0
    shutil.copy(out / "n1.crt", home / "pki" / "node.crt")
    shutil.copy(out / "n1.key", home / "pki" / "node.key")
    shutil.copy(w / "pki" / "ca.crt", home / "pki" / "ca.crt")
    with (home / "trainguard.toml").open("a") as f:
        f.write(f'\n[audit]\nwitness = "127.0.0.1:{port}"\ncheckpoint_every = 3\n')
    proc = subprocess.Popen([sys.executable, "-m", "trainguard.cli.main", "agent", "run", "--home", str(w)],
                            env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):  # the unix socket answers before the TCP listener is up
            if AgentClient(Home(w), timeout=2).ping() and _listening(port):
                break
            time.sleep(0.1)
        yield w, f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def _resign_rewrite(db: Path, key_path: Path, seq: int) -> None:
    """Root on the node: rewrite entry `seq` and re-sign every checkpoint with the real key."""
    from trainguard.crypto.signing import SigningKey
    from trainguard.evidence.audit_chain import Checkpoint, entry_hash

    key = SigningKey.load(key_path)
    out, prev = [], GENESIS
    for s, t, node, actor, kind, data, _p, _h in _rows(db):
        if s == seq:
            data = json.dumps({"rewritten": True})
        if kind == "audit.checkpoint":  # re-signed as the writer signs it (with its cadence)
            old = Checkpoint.from_dict(json.loads(data))
            unsigned = Checkpoint(node, s - 1, prev.hex(), key.key_id, "", old.every, old.seconds)
            sig = key.sign(unsigned.payload()).hex()
            cp = Checkpoint(node, s - 1, prev.hex(), key.key_id, sig, old.every, old.seconds)
            data = json.dumps(cp.to_dict(), sort_keys=True, separators=(",", ":"))
        digest = entry_hash(prev, s, t, node, actor, kind, data)
        out.append((s, t, node, actor, kind, data, prev, digest))
        prev = digest
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM entries")
        conn.executemany("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?)", out)


@pytest.mark.slow
def test_rewrite_with_the_node_key_is_caught_by_the_witness_copy(cli, home: Path, witness, tmp_path: Path) -> None:  # noqa: ANN001
    w, addr = witness
    _events(cli, home, 3)
    r = cli("audit", "verify", "--home", home, "--format", "json")
    assert r.code == 0, r.stderr
    sent = r.json()["witness"]
    assert sent["compared"] is True and sent["sent"] >= 2
    assert cli("audit", "verify", "--home", home, "--format", "json").json()["witness"]["checkpoints_compared"] >= 2
    _resign_rewrite(home / "state" / "audit.db", home / "keys" / "node.ed25519", seq=4)
    local = cli("audit", "verify", "--home", home, "--no-witness", "--format", "json")
    assert local.code == 0, local.stderr  # the limit: root with the key passes locally...
    r = cli("audit", "verify", "--home", home)
    assert r.code == 1  # ...not against the copy that left the node
    assert "history" in r.stderr and addr in r.stderr
    report = cli("audit", "report", "--home", home, "--out", tmp_path / "r", "--formats", "json",
                 "--format", "json")
    assert report.code == 1
    assert report.json()["nodes"][0]["log_verified"] is False
    assert report.json()["nodes"][0]["rolled_back"] is True
    # The witness recorded the conflicting submission and raised an incident on its side.
    wlog = cli("audit", "log", "--home", w, "--format", "json").json()
    kinds = {e["kind"] for e in wlog}
    assert "audit.witness-conflict" in kinds
    assert any(e["kind"] == "incident" and e["data"]["kind"] == "audit-tampered" for e in wlog)


@pytest.mark.slow
def test_witness_copies_are_per_node_and_from_the_certificate(cli, home: Path, witness) -> None:  # noqa: ANN001
    """A node may submit checkpoints only for itself: the node is the certificate's."""
    from trainguard.core.errors import TrainguardError

    w, addr = witness
    r = cli("audit", "verify", "--home", home)
    assert r.code == 0, r.stderr
    pki = home / "pki"
    from trainguard.evidence.audit_log import AuditLog

    with AuditLog.open(w / "state" / "audit.db", "w1", None) as wlog:
        found = wlog.genesis()  # w1's own, validly signed genesis
    assert found is not None
    genesis = found[0].to_dict()
    cp = {"node": "w1", "seq": 1, "hash": "00" * 32, "key_id": "x", "signature": "00" * 64}
    with AgentClient.remote(addr, pki / "node.crt", pki / "node.key", pki / "ca.crt") as client:
        with pytest.raises(TrainguardError, match="only its own"):
            client.call("witness", genesis=genesis, checkpoints=[])
        mine = client.call("witness-copies", node="n1")
        with pytest.raises(TrainguardError, match="only its own"):
            client.call("witness", genesis=None, checkpoints=[cp])
        assert client.call("witness-copies", node="w1")["checkpoints"] == []
    assert mine["log_id"] and len(mine["checkpoints"]) >= 1
    refused = [e for e in cli("audit", "log", "--home", w, "--format", "json").json()
               if e["kind"] == "audit.witness-refused"]
    assert len(refused) == 2 and all("node/n1" in e["actor"] for e in refused)


def test_unreachable_witness_fails_verify_unless_told(cli, home: Path) -> None:  # noqa: ANN001
    with (home / "trainguard.toml").open("a") as f:
        f.write(f'\n[audit]\nwitness = "127.0.0.1:{_free_port()}"\n')
    r = cli("audit", "verify", "--home", home)
    assert r.code == 1 and "cannot compare the log with its witness" in r.stderr
    assert "--no-witness" in r.stderr
    r = cli("audit", "verify", "--home", home, "--no-witness", "--format", "json")
    assert r.code == 0 and r.json()["witness"]["compared"] is False


@pytest.mark.slow
def test_agent_cycle_sends_checkpoints_to_the_witness(cli, home: Path, witness) -> None:  # noqa: ANN001
    """The agent, not only `audit verify`, ships checkpoints off the node, and a witness outage
    costs nothing: what was not acknowledged is sent on the next cycle."""
    w, addr = witness
    _events(cli, home, 2)
    pki = home / "pki"

    def held() -> int:
        with AgentClient.remote(addr, pki / "node.crt", pki / "node.key", pki / "ca.crt") as c:
            return len(c.call("witness-copies", node="n1")["checkpoints"])

    assert held() == 0
    r = cli("agent", "run", "--once", "--home", home, "--format", "json")
    assert r.code in (0, 1), r.stderr
    first = held()
    assert first >= 2
    sent = json.loads((home / "state" / "witness-sent.json").read_text())
    assert sent["witness"] == addr and sent["seq"] > 0
    _events(cli, home, 2)
    assert cli("agent", "run", "--once", "--home", home).code in (0, 1)
    assert held() > first


@pytest.mark.slow
def test_log_deleted_under_a_running_agent_is_audit_tampered(cli, witness) -> None:  # noqa: ANN001
    """The agent holds the log open; deleting the file must not leave it writing evidence into
    an unlinked inode that nobody will read."""
    from trainguard.core.errors import TrainguardError

    w, _addr = witness  # a running agent
    client = AgentClient(Home(w), timeout=10)
    client.record("train.step", "x", {"step": 1})  # works while the file is there
    for f in w.glob("state/audit.db*"):
        f.unlink()
    with pytest.raises(TrainguardError, match="missing"):
        client.record("train.step", "x", {"step": 2})
    client.close()
    pending = (w / "state" / "audit-tampered.jsonl").read_text().splitlines()
    assert pending and json.loads(pending[0])["kind"] == "audit-tampered"
    assert not (w / "state" / "audit.db").exists()
    r = cli("audit", "verify", "--home", w)
    assert r.code == 1 and "missing" in r.stderr


@pytest.mark.slow
def test_report_of_a_remote_node_compares_it_with_the_witness_copies(
    cli, cli_env: dict[str, str], home: Path, witness, tmp_path: Path  # noqa: ANN001
) -> None:
    """`audit report --node URL` on the witness: the node's log, pulled over mTLS, is checked
    against the copies this witness holds, so a rewrite with the node's own key is flagged."""
    w, _addr = witness
    _events(cli, home, 2)
    assert cli("audit", "verify", "--home", home).code == 0  # copies now on the witness
    port = _free_port()
    with (home / "trainguard.toml").open("a") as f:
        f.write(f'\n[agent]\nlisten = "127.0.0.1:{port}"\nadmin_names = ["auditor"]\n')
    auditor = tmp_path / "auditor"
    assert cli("pki", "issue", "auditor", "--kind", "user", "--out", auditor, "--home", w).code == 0
    args = ("--node", f"tls://127.0.0.1:{port}", "--cert", auditor / "auditor.crt",
            "--key", auditor / "auditor.key", "--ca", w / "pki" / "ca.crt", "--no-local",
            "--formats", "json", "--format", "json")
    proc = subprocess.Popen([sys.executable, "-m", "trainguard.cli.main", "agent", "run", "--home", str(home)],
                            env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            if AgentClient(Home(home), timeout=2).ping() and _listening(port):
                break
            time.sleep(0.1)
        ok = cli("audit", "report", "--home", w, "--out", tmp_path / "r1", *args)
        assert ok.code in (0, 1), ok.stderr
        node = ok.json()["nodes"][0]
        assert node["name"] == "n1" and node["log_verified"] is True, ok.stdout
        full = json.loads((tmp_path / "r1" / "trainguard-report.json").read_text())
        assert "checkpoint copies held off-node" in json.dumps(full)
        _resign_rewrite(home / "state" / "audit.db", home / "keys" / "node.ed25519", seq=4)
        # Forget what the first report saw: only the witness copies can catch the rewrite now.
        (w / "state" / "report-state.json").unlink()
        bad = cli("audit", "report", "--home", w, "--out", tmp_path / "r2", *args)
        assert bad.code == 1
        node = bad.json()["nodes"][0]
        assert node["log_verified"] is False and node["rolled_back"] is True
        full = json.loads((tmp_path / "r2" / "trainguard-report.json").read_text())
        assert "copy held by the witness on this node" in json.dumps(full)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_rewrite_with_the_key_is_caught_by_the_export_stream_copy(cli, home: Path) -> None:  # noqa: ANN001
    """The JSON-lines export ([export] file) carries every checkpoint off the node as it is
    written; `audit verify --copies` holds the log to them."""
    with (home / "trainguard.toml").open("a") as f:
        f.write('\n[export]\nfile = "export/audit.jsonl"\n')
    _events(cli, home, 3)
    assert cli("audit", "verify", "--home", home).code == 0  # signs the tail
    r = cli("agent", "run", "--once", "--home", home)  # forwards the log to the export file
    assert r.code in (0, 1), r.stderr
    exported = home / "export" / "audit.jsonl"
    assert any('"audit.checkpoint"' in line for line in exported.read_text().splitlines())
    r = cli("audit", "verify", "--home", home, "--copies", exported, "--format", "json")
    assert r.code == 0, r.stderr
    assert r.json()["export_copies"] >= 2
    _resign_rewrite(home / "state" / "audit.db", home / "keys" / "node.ed25519", seq=4)
    assert cli("audit", "verify", "--home", home).code == 0  # the limit, again
    r = cli("audit", "verify", "--home", home, "--copies", exported)
    assert r.code == 1 and "history rewritten" in r.stderr and "export" in r.stderr
    (home / "export" / "junk.jsonl").write_text("not json\n")
    r = cli("audit", "verify", "--home", home, "--copies", home / "export" / "junk.jsonl")
    assert r.code == 1 and "line 1 is not JSON" in r.stderr
