"""The deployment-engine glue, without processes: the app folder builds into a FAB that names
trainguard's installed ServerApp and ClientApp, TLS is never dropped outside the benchmark
baseline, the ServerApp's grid polls quickly and never waits without a limit, and a site's
ClientApp refuses a plain update when its config asks for SecAgg+ (and the reverse)."""

from __future__ import annotations

import io
import json
import tomllib
import zipfile
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.cli.build import build_fab_from_disk
from trainguard.trainer.federated.engine import superlink_args, supernode_args, write_app
from trainguard.trainer.federated.serverapp import PollingGrid

FL = Path(__file__).resolve().parents[3] / "trainer" / "examples" / "fl-digits.toml"


def test_the_app_folder_builds_a_fab_that_names_trainguards_apps(tmp_path: Path) -> None:
    fab = build_fab_from_disk(write_app(tmp_path / "app"))
    with zipfile.ZipFile(io.BytesIO(fab)) as z:
        names = z.namelist()
        project = tomllib.loads(z.read("pyproject.toml").decode())
    assert not [n for n in names if n.endswith(".py")]  # no code travels: sites run their own
    comps = project["tool"]["flwr"]["app"]["components"]
    assert comps == {"serverapp": "trainguard.trainer.federated.serverapp:app",
                     "clientapp": "trainguard.trainer.federated.clientapp:app"}
    assert project["project"]["dependencies"] == []  # nothing to install at run time


def test_tls_is_on_unless_the_baseline_asks_for_plaintext(tmp_path: Path) -> None:
    tls = (tmp_path / "ca.crt", tmp_path / "node.crt", tmp_path / "node.key")
    args = superlink_args("127.0.0.1", 9000, tls)
    assert "--insecure" not in args and args[args.index("--ssl-certfile") + 1] == str(tls[1])
    assert args[args.index("--host") + 1] == "localhost"  # certificates name DNS, not IPs
    assert "--insecure" in superlink_args("127.0.0.1", 9000, None)
    node = supernode_args("localhost:9000", tls[0], tmp_path / "s.json", 9100, 60.0,
                          tmp_path / "task.secret")
    assert "--insecure" not in node and node[node.index("--root-certificates") + 1] == str(tls[0])
    assert node[node.index("--isolation") + 1] == "process"
    assert node[node.index("--superexec-auth-secret-file") + 1] == str(tmp_path / "task.secret")


class _FakeGrid(PollingGrid):
    """An inner grid whose replies arrive after `after` polls (only push/pull are used)."""

    def __init__(self, after: int) -> None:
        self.after, self.polls = after, 0

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.polls += 1
        if self.polls < self.after:
            return []
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))  # type: ignore[misc]
                for i in sorted(message_ids)]


def _messages(n: int) -> list[Message]:
    return [object() for _ in range(n)]  # type: ignore[misc]


def test_the_grid_polls_every_interval_and_returns_all_replies() -> None:
    inner = _FakeGrid(after=5)
    grid = PollingGrid(inner, timeout=30.0, interval=0.001)
    replies = list(grid.send_and_receive(_messages(3)))
    assert len(replies) == 3 and inner.polls == 5


def test_the_grid_stops_at_its_timeout_when_a_caller_gives_none() -> None:
    inner = _FakeGrid(after=10**9)
    grid = PollingGrid(inner, timeout=0.05, interval=0.001)
    assert list(grid.send_and_receive(_messages(2))) == []
    assert inner.polls >= 2


def _context(tmp_path: Path, *overrides: str) -> Context:
    spec = {"config": str(FL), "overrides": ["federation.monitor=false", *overrides],
            "site": "site-1", "baseline": True}
    path = tmp_path / "site.json"
    path.write_text(json.dumps(spec))
    return Context(run_id=1, node_id=1, node_config={"spec": str(path)}, state=RecordDict(),
                   run_config={})


def _train(secagg_stage: bool) -> Message:
    content = RecordDict({"fitins.parameters": ArrayRecord(), "fitins.config": ConfigRecord({})})
    if secagg_stage:
        content["secaggplus_configs"] = ConfigRecord({"stage": "setup"})
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What flwr-clientapp sets for the task it runs (messages are created inside one)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


@pytest.mark.usefixtures("task_identity")
def test_a_site_that_requires_secagg_refuses_a_plain_update(tmp_path: Path) -> None:
    from trainguard.trainer.federated.clientapp import secure_aggregation_mod

    def never(msg: Message, ctx: Context) -> Message:
        raise AssertionError("the update must not be computed")

    ctx = _context(tmp_path, "federation.secure_aggregation=true")
    with pytest.raises(PermissionError, match="requires secure aggregation"):
        secure_aggregation_mod(_train(False), ctx, never)
    (tmp_path / "plain").mkdir()
    plain = _context(tmp_path / "plain")
    with pytest.raises(PermissionError, match="does not enable"):
        secure_aggregation_mod(_train(True), plain, never)
