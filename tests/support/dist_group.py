"""A one-rank gloo process group for tests that call DCP or Guard code in-process."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import torch.distributed as dist


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
