"""`trainguard check` through the real CLI on a real home."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey

pytestmark = pytest.mark.integration


@pytest.fixture
def home(tmp_path: Path, cli) -> Path:  # noqa: ANN001
    root = tmp_path / "home"
    result = cli("init", "--home", root, "--admin", "alice", "--format", "json")
    if result.code != 0:  # `init` not built: a minimal home by hand
        h = Home(root)
        h.create_dirs()
        h.config_path.write_text("")
        SigningKey.generate().save(h.node_signing_key)
    return root


def test_check_json_lists_every_check_with_controls(cli, home: Path) -> None:  # noqa: ANN001
    r = cli("check", "--home", home, "--format", "json")
    assert r.code in (0, 1), r.stderr
    data = r.json()
    by_id = {x["id"]: x for x in data["results"]}
    assert {"home-modes", "kek-age", "node-cert", "traffic-isolation", "gpu-foreign-processes"} <= set(by_id)
    assert by_id["home-modes"]["status"] == "pass"
    assert by_id["home-modes"]["controls"]
    assert sum(data["summary"].values()) == len(data["results"])
    failing = [x for x in data["results"] if x["status"] in ("fail", "error")]
    assert (r.code == 1) == bool(failing)


def test_loose_key_mode_fails_with_exit_1(cli, home: Path) -> None:  # noqa: ANN001
    ok = cli("check", "--home", home, "--id", "home-modes", "--format", "json")
    assert ok.code == 0 and ok.json()["results"][0]["status"] == "pass"
    key = Home(home).node_signing_key
    key.chmod(0o644)
    bad = cli("check", "--home", home, "--id", "home-modes", "--format", "json")
    assert bad.code == 1
    result = bad.json()["results"][0]
    assert result["status"] == "fail"
    assert result["evidence"]["loose"][0]["path"] == str(key)
    assert f"chmod 600 {key}" in result["remediation"]


def test_text_output_is_a_table_with_remediation(cli, home: Path) -> None:  # noqa: ANN001
    Home(home).node_signing_key.chmod(0o640)
    r = cli("check", "--home", home, "--id", "home-modes", "--id", "traffic-isolation")
    assert r.code == 1
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["STATUS", "CHECK", "SEVERITY", "CONTROLS", "SUMMARY"]
    assert lines[1].startswith("FAIL") and "home-modes" in lines[1]
    assert "What to do:" in r.stdout and "chmod 600" in r.stdout


def test_training_environment_comes_from_the_shell(cli, home: Path) -> None:  # noqa: ANN001
    env = {"MASTER_ADDR": "8.8.8.8", "NCCL_SOCKET_IFNAME": "lo"}
    r = cli("check", "--home", home, "--id", "traffic-isolation", "--format", "json", env=env)
    assert r.code == 1
    assert "public address" in r.json()["results"][0]["summary"]


def test_unknown_id_is_a_usage_error(cli, home: Path) -> None:  # noqa: ANN001
    r = cli("check", "--home", home, "--id", "nope")
    assert r.code == 2 and "unknown check" in r.stderr


def test_list_needs_no_home(cli, tmp_path: Path) -> None:  # noqa: ANN001
    r = cli("check", "--list", "--home", tmp_path / "none", "--format", "json")
    assert r.code == 0
    assert {"id", "controls", "severity"} <= set(r.json()["checks"][0])
