"""Flower's deployment engine for a federation: the SuperLink, the SuperNodes, the app folder and
the run submitted to the SuperLink's Control API. Nothing is downloaded: the app folder names
modules of the installed trainguard, and runtime dependency installation is off.

Process tree of one federation::

    server process (procs.py)  -> SuperLink (`engine superlink`, TLS on its one HTTPS port:
                                  Fleet, Control and Runtime APIs)
                                  -> flower-superexec -> flwr-serverapp (serverapp.py)
    site process (procs.py)    -> SuperNode (`engine supernode`, connects to the SuperLink over
                                  TLS, verifies it against the cluster CA, `--isolation process`)
                                  + in the same process, `run_client_tasks`: the ClientApp
                                  (clientapp.py) runs each message the SuperNode receives

Sites run only the installed trainguard ClientApp: the FAB that comes with a run is never
installed or executed on a site (Flower's own SuperExec would install it and start a new
`flwr-clientapp` process per message, ~2 s of CPU for torch's import alone each time).
`run_client_tasks` takes the SuperExec's place: it acquires each task from the SuperNode's
Runtime API and runs it with the task functions of flwr's own `flwr-clientapp`.

Round latency. flwr 1.42 polls in three places with intervals that suit long-running
production rounds, not a few-second round: the SuperExec's task poll (1 s; set through
``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``), the SuperNode's idle loop (a literal 3 s sleep in
``flwr.supernode.start_client_internal``) and the ServerApp's ``Grid.send_and_receive``
(a literal 3 s sleep). The first is set by the environment; the SuperNode runs here with that
module's ``sleep`` capped at `POLL_S` (``python -m trainguard.trainer.federated.engine supernode``);
the ServerApp polls through `PollingGrid`; the ClientApp stays loaded (above). Together they
take a round from ~16 s plus two process start-ups per site to the training itself.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["POLL_S", "EngineError", "connect_host", "flwr_env", "free_port", "start_run",
           "superlink_args", "supernode_args", "wait_run", "write_app"]

log = logging.getLogger(__name__)

POLL_S = 0.1  # seconds between polls of the SuperNode loop, the SuperExec and the ServerApp
APP_NAME = "trainguard-fl"


class EngineError(RuntimeError):
    """The deployment engine did not start or run the federation."""


def flwr_env(flwr_home: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for every Flower process: its own FLWR_HOME, no telemetry or update check
    (nothing leaves the machine), short polls, and this interpreter's bin folder first on PATH
    (the SuperLink and SuperNode start `flower-superexec`, `flwr-serverapp` and `flwr-clientapp`
    by name)."""
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    env.update({
        "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(POLL_S),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    })
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connect_host(host: str) -> str:
    """The name a local process uses to reach a SuperLink bound to `host`: cluster
    certificates carry DNS names only, so loopback (and a bind-all address) is `localhost`."""
    return "localhost" if host in ("127.0.0.1", "localhost", "0.0.0.0", "") else host  # noqa: S104


def _host_for_tls(host: str) -> str:
    # The SuperExec connects back to the SuperLink's Runtime API at the bind address (a
    # bind-all address becomes 127.0.0.1, which no cluster certificate names): bind loopback
    # by name.
    return "localhost" if host in ("127.0.0.1", "localhost") else host


def superlink_args(host: str, port: int, tls: tuple[Path, Path, Path] | None) -> list[str]:
    """`flower-superlink` arguments; `tls` is (CA, certificate, key) or None (BENCHMARK BASELINE
    only: plaintext)."""
    args = ["--host", _host_for_tls(host) if tls else host, "--port", str(port),
            "--isolation", "subprocess", "--disable-runtime-dependency-installation"]
    if tls is None:
        return [*args, "--insecure"]
    ca, cert, key = tls
    return [*args, "--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert),
            "--ssl-keyfile", str(key)]


def supernode_args(superlink: str, ca: Path | None, spec: Path, runtime_port: int,
                   max_wait: float, task_secret: Path) -> list[str]:
    """`flower-supernode` arguments. The SuperNode's own Runtime API (the site's ClientApp takes
    its tasks from it) listens on loopback only, and hands out a task only to a caller that
    holds `task_secret` (Flower's SuperExec authentication), so another local user cannot take
    the site's messages."""
    args = ["--superlink", superlink, "--isolation", "process",
            "--host", "127.0.0.1", "--port", str(runtime_port),
            "--superexec-auth-secret-file", str(task_secret),
            "--node-config", f'spec="{spec}"', "--max-wait-time", str(max_wait)]
    return [*args, "--insecure"] if ca is None else [*args, "--root-certificates", str(ca)]


def write_app(folder: Path) -> Path:
    """The Flower app folder of a federation: a pyproject that names trainguard's ServerApp and
    ClientApp (installed modules, so the FAB carries no code) and one run-config key, the path
    of the server's spec."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    (folder / "pyproject.toml").write_text(
        "[build-system]\n"
        'requires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        f'[project]\nname = "{APP_NAME}"\nversion = "1.0.0"\n'
        'description = "trainguard federation"\nlicense = "Apache-2.0"\ndependencies = []\n\n'
        "[tool.hatch.build.targets.wheel]\npackages = []\n\n"
        '[tool.flwr.app]\npublisher = "trainguard"\n\n'
        "[tool.flwr.app.components]\n"
        'serverapp = "trainguard.trainer.federated.serverapp:app"\n'
        'clientapp = "trainguard.trainer.federated.clientapp:app"\n\n'
        '[tool.flwr.app.config]\nspec = ""\n',
        encoding="utf-8")
    return folder


def _control(address: str, ca: bytes | None) -> Any:
    from flwr.supercore.control.control_http_client import ControlHttpClient
    from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor

    return ControlHttpClient.from_server_address(
        server_address=address, insecure=ca is None, root_certificates=ca,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr CLI")])


def start_run(address: str, ca: bytes | None, app: Path, spec: Path, *,
              wait: float = 60.0) -> int:
    """Submit the app folder as a run to the SuperLink's Control API (what `flwr run` does,
    without its connection config file); retries until the SuperLink answers. Returns the run
    id."""
    import hashlib

    import httpx
    from flwr.cli.build import build_fab_from_disk
    from flwr.common.serde import fab_to_proto, user_config_to_proto
    from flwr.proto.control_pb2 import StartRunRequest
    from flwr.supercore.fab import Fab

    fab_bytes = build_fab_from_disk(app)
    fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
    req = StartRunRequest(fab=fab_to_proto(fab),
                          override_config=user_config_to_proto({"spec": str(spec)}))
    deadline = time.monotonic() + wait
    while True:
        try:
            with _control(address, ca) as client:
                res = client.StartRun(req)
            break
        except httpx.TransportError as exc:
            if time.monotonic() > deadline:
                raise EngineError(f"the SuperLink at {address} did not answer in {wait:.0f} s") from exc
            time.sleep(0.2)
    if not res.HasField("run_id"):
        raise EngineError("the SuperLink refused to start the run")
    return int(res.run_id)


def run_status(address: str, ca: bytes | None, run_id: int) -> tuple[str, str, str]:
    """(status, sub_status, details) of a run: status is starting | running | finished."""
    from flwr.proto.control_pb2 import ListRunsRequest

    with _control(address, ca) as client:
        res = client.ListRuns(ListRunsRequest(run_id=run_id))
    st = res.run_dict[run_id].status
    return st.status, st.sub_status, st.details


def wait_run(address: str, ca: bytes | None, run_id: int, deadline: float,
             alive: Iterable[Any] = ()) -> tuple[str, str]:
    """Wait until the run is finished; returns (sub_status, details). Raises EngineError when
    the deadline (time.monotonic()) passes or a watched process (Popen) exits first."""
    import httpx

    while time.monotonic() < deadline:
        try:
            status, sub, details = run_status(address, ca, run_id)
        except httpx.TransportError:
            status, sub, details = "?", "", ""
        if status == "finished":
            return sub, details
        for p in alive:
            if p.poll() is not None:
                raise EngineError(f"a Flower process exited with code {p.returncode} during the run")
        time.sleep(0.5)
    raise EngineError("the run did not finish in time")


def run_client_tasks(runtime_address: str, task_secret: bytes, stop: Any = None) -> None:
    """Run every ClientApp task of the SuperNode at `runtime_address` in this process, with
    trainguard's ClientApp object (what `flower-superexec` + `flwr-clientapp` do, minus the FAB
    install and the process per message). Returns when `stop` (an Event) is set."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import (
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    acquire = RuntimeHttpClient.from_server_address(
        server_address=runtime_address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec"),
                      SuperExecAuthHttpInterceptor(master_secret=task_secret,
                                                   protected_methods={"/flwr.proto.Runtime/AcquireTask"})],
        retry_invoker=make_simple_http_retry_invoker())
    import httpx

    while stop is None or not stop.is_set():
        try:
            res = acquire.AcquireTask(AcquireTaskRequest(
                supported_task_types=[TaskType.CLIENT_APP], agentapp_fab_hashes=[]))
        except httpx.TransportError:  # the SuperNode's Runtime API is not up yet
            time.sleep(0.5)
            continue
        if not (res.HasField("task") and res.token):
            time.sleep(POLL_S)
            continue
        try:
            _run_client_task(runtime_address, res.token)
        except Exception:  # noqa: BLE001 - one failed task must not stop the site
            log.exception("ClientApp task %d: could not hand back its result", res.task.task_id)


def _run_client_task(runtime_address: str, token: str) -> None:
    """One ClientApp task, as `flwr.supernode.runtime.run_clientapp` runs it."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output
    from trainguard.trainer.federated.clientapp import app

    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                      RuntimeTokenHttpInterceptor(token)],
        retry_invoker=make_simple_http_retry_invoker())
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = reply = context = None
    sub_status, details = SubStatus.FAILED, "ClientApp task failed"
    try:
        message, context, _run, _fab = pull_task_input(client)
        reply = app(message=message, context=context)
        sub_status, details = SubStatus.COMPLETED, ""
    except Exception as exc:  # noqa: BLE001 - the server gets the error, the SuperNode goes on
        log.exception("ClientApp task failed")
        details = f"{type(exc).__name__}: {exc}"
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                            reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            push_task_output(client=client, context=context, sub_status=sub_status, details=details)
        finally:
            heartbeat.stop()
            client.close()


def _supernode_main(argv: list[str]) -> None:
    """`flower-supernode` with its idle poll capped at POLL_S and the ClientApp tasks run in
    this process (see the module docstring)."""
    import threading

    import flwr.supernode.start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    class _ShortSleeps:  # the module's `time`, with `sleep` capped
        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        @staticmethod
        def sleep(seconds: float) -> None:
            time.sleep(min(seconds, POLL_S))

    loop.time = _ShortSleeps()  # type: ignore[assignment]
    from trainguard.trainer.federated.clientapp import load_site

    # ready to answer before connecting: the first message (admission) has a deadline
    load_site(Path(argv[argv.index("--node-config") + 1].partition("=")[2].strip('"')))
    runtime = f"127.0.0.1:{argv[argv.index('--port') + 1]}"
    secret = Path(argv[argv.index("--superexec-auth-secret-file") + 1]).read_bytes()
    threading.Thread(target=run_client_tasks, args=(runtime, secret), daemon=True,
                     name="trainguard-clientapp").start()
    sys.argv = ["flower-supernode", *argv]
    flower_supernode()


def _superlink_main(argv: list[str]) -> None:
    from flwr.superlink.cli import flower_superlink

    sys.argv = ["flower-superlink", *argv]
    flower_superlink()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("superlink", "supernode"):
        print("usage: python -m trainguard.trainer.federated.engine superlink|supernode ARGS...",
              file=sys.stderr)
        raise SystemExit(2)
    (_superlink_main if args[0] == "superlink" else _supernode_main)(args[1:])


if __name__ == "__main__":
    main()
