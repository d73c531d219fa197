"""A minimal HTTP endpoint for Prometheus: ``GET /metrics`` on the agent's event loop.

It serves only that one path, reads at most 8 KiB of request head, and closes every connection
after one reply, so a slow or hostile scraper costs nothing but a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

__all__ = ["serve_metrics"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def serve_metrics(metrics: Any, host: str, port: int) -> tuple[asyncio.AbstractServer, int]:
    """Start serving `metrics.render()`; returns the server and the bound port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
                body = await asyncio.to_thread(metrics.render)
                status, ctype = b"200 OK", CONTENT_TYPE.encode()
            else:
                body, status, ctype = b"not found\n", b"404 Not Found", b"text/plain"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + ctype
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass
        except Exception:  # noqa: BLE001 - a scrape must never take the agent down
            log.exception("metrics request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host=host.strip("[]"), port=port, limit=8192)
    return server, int(server.sockets[0].getsockname()[1])
