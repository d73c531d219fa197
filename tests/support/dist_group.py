"""Process groups in tests: a one-rank gloo group for tests that call DCP or Guard code
in-process, and `spawn` / `exit_now` for tests that run several ranks in child processes.

A rank that has finished its work (files written, process group destroyed) leaves through
``os._exit``, as trainguard's own worker does (trainer/worker.py): torch's C++ side can abort at
interpreter teardown now and then ("terminate called without an active exception", SIGABRT),
which would fail a test whose ranks all did what it checks.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def exit_now(code: int = 0) -> None:
    """Flush stdout / stderr and end this process without interpreter teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run_then_exit(rank: int, fn: Callable[..., None], *args: Any) -> None:
    fn(rank, *args)  # an exception propagates: mp.spawn reports it and the rank exits 1
    exit_now(0)


def spawn(fn: Callable[..., None], args: tuple[Any, ...], nprocs: int) -> None:
    """``mp.spawn(fn, args, nprocs, join=True)``, each rank leaving through `exit_now` once
    ``fn`` returns."""
    mp.spawn(_run_then_exit, args=(fn, *args), nprocs=nprocs, join=True)


@contextlib.contextmanager
def single_rank_group() -> Iterator[None]:
    """Initialise a world-size-1 gloo group on a free loopback port for the duration; reuse one
    that another test module left initialised (it must be world size 1)."""
    if dist.is_initialized():
        assert dist.get_world_size() == 1
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
