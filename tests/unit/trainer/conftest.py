"""Fixtures of the trainer's unit tests: the real key service on a unix socket, in a thread."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from trainguard.core.home import Home


@pytest.fixture
def key_socket(home: Home) -> Iterator[Path]:
    """`trainguard.agent.api.keys.serve` for `home` (what the launcher's key process runs)."""
    from trainguard.agent.api.keys import serve

    folder = Path(tempfile.mkdtemp(prefix="tgk-"))
    path = folder / "keys.sock"
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(home, path), kwargs={"until": stop.is_set},
                              daemon=True)
    thread.start()
    _wait_listening(path)  # the socket file exists after bind(), before listen(): connect
    yield path
    stop.set()
    thread.join(5)
    folder.rmdir()


def _wait_listening(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.01)


@pytest.fixture
def keys(key_socket: Path):
    from trainguard.trainer.keys import KeyClient

    client = KeyClient(key_socket)
    yield client
    client.close()
