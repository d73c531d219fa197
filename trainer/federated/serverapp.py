"""The federation's ServerApp on Flower's deployment engine.

`flwr-serverapp` (started by the SuperLink's SuperExec) loads ``app`` from here. The run config
holds one key, ``spec``: the path of the server's spec (config file, overrides, TLS and CRL
paths, the rounds log). The trainguard strategy runs unchanged through Flower's
`DefaultWorkflow` with a `LegacyContext`; with ``federation.secure_aggregation`` the fit
step is Flower's `SecAggPlusWorkflow` (the strategy then receives only the sum). Sites are
admitted by the strategy (a signed nonce checked against the cluster CA and its CRL, see
membership.py) before their first round. At the end every node that connected gets a
``finished`` query, so `fl site` processes exit, and the rounds log gets its ``done`` line.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from trainguard.trainer.federated.engine import POLL_S

__all__ = ["FINISHED_KEY", "PollingGrid", "app"]

log = logging.getLogger(__name__)

FINISHED_KEY = "trainguard.finished"


class PollingGrid(Grid):
    """A Grid that polls for replies every `interval` seconds (flwr 1.42's HTTP grid sleeps a
    literal 3 s between polls) and never waits without a limit: `timeout` applies when a
    caller (Flower's legacy workflows and client proxies) passes none."""

    def __init__(self, inner: Grid, timeout: float, interval: float = POLL_S) -> None:
        self._inner, self._timeout, self._interval = inner, timeout, interval

    def set_run(self, run: Run) -> None:
        self._inner.set_run(run)

    @property
    def run(self) -> Run:
        return self._inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return self._inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        pending = set(self._inner.push_messages(messages))
        end = time.monotonic() + (self._timeout if timeout is None else timeout)
        replies: list[Message] = []
        while pending and time.monotonic() < end:
            got = list(self._inner.pull_messages(pending))
            replies += got
            pending -= {m.metadata.reply_to_message_id for m in got}
            if pending:
                time.sleep(self._interval)
        return replies


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    spec = json.loads(Path(str(context.run_config["spec"])).read_text(encoding="utf-8"))
    # flwr-serverapp's own output is not shown by the SuperExec: keep a log next to the others
    logs = Path(spec["rounds_log"]).parent / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    handler = logging.FileHandler(logs / "serverapp.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    try:
        run_federation(grid, context, spec)
    except BaseException:
        log.exception("the federation's ServerApp failed")
        raise


def _writer(path: Path) -> Callable[[dict[str, Any]], None]:
    def write(record: dict[str, Any]) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    return write


def run_federation(grid: Grid, context: Context, spec: dict[str, Any]) -> None:
    """Every round of the federation, then the finish notice and the ``done`` line."""
    import torch
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from trainguard.trainer.federated.config import load_fl_config
    from trainguard.trainer.federated.procs import server_strategy

    torch.set_num_threads(1)
    cfg = load_fl_config(Path(spec["config"]), spec.get("overrides", []))
    write = _writer(Path(spec["rounds_log"]))
    fed = cfg.federation
    strategy, close = server_strategy(spec, cfg, write)
    polling = PollingGrid(grid, timeout=fed.round_timeout)
    legacy = LegacyContext(context=context, strategy=strategy,
                           config=ServerConfig(num_rounds=fed.rounds, round_timeout=fed.round_timeout))
    fit = None
    if getattr(fed, "secure_aggregation", False):
        n = fed.sites
        # every site shares its key with every other; any n-1 shares rebuild a dropped one
        fit = SecAggPlusWorkflow(num_shares=n, reconstruction_threshold=max(2, n - 1),
                                 timeout=fed.round_timeout)
    try:
        DefaultWorkflow(fit_workflow=fit)(polling, legacy)
    finally:
        close()
        # the strategy names admitted sites by Flower client id (the node id as a string)
        admitted = None if spec.get("baseline") else {int(c) for c in strategy.sites_of}
        _notify_finished(polling, context.run_id, admitted)
    if not spec.get("baseline"):
        write({"done": True, "accuracy": strategy.accuracy,  # type: ignore[attr-defined]
               "rounds_joined": strategy.joined})  # type: ignore[attr-defined]


def _notify_finished(grid: Grid, run_id: int, admitted: set[int] | None) -> None:
    """Tell every connected node the federation is over, and whether it was admitted (refused
    ones get nothing else), so `fl site` exits instead of waiting for runs that will not come."""
    nodes = list(grid.get_node_ids())
    msgs = [Message(RecordDict({"config": ConfigRecord({
                FINISHED_KEY: run_id, "admitted": admitted is None or n in admitted})}),
                    dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    if msgs:
        replies = list(grid.send_and_receive(msgs, timeout=10.0))
        log.info("finish notice: %d of %d nodes answered", len(replies), len(nodes))
