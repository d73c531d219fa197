"""``/metrics`` for Prometheus through prometheus_client's own exposition.

prometheus_client's WSGI app does content negotiation (the OpenMetrics format when the scraper's
``Accept`` asks for it), gzip when ``Accept-Encoding`` allows it, and ``OPTIONS``; this module
adds ``HEAD`` (the same headers as ``GET``, no body), refuses other paths with 404, and runs the
app in a small threading server beside the agent's event loop, so a slow scraper never blocks it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import make_wsgi_app

__all__ = ["MetricsServer", "metrics_app", "serve_metrics"]

_StartResponse = Callable[..., Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Scrapes are not news; errors reach the agent's log through the app."""


class _ThreadingServer(WSGIServer):
    daemon_threads = True

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(target=self._serve_one, args=(request, client_address), daemon=True)
        t.start()

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - one broken scrape never stops the server
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


def metrics_app(registry: CollectorRegistry) -> Callable[[dict[str, Any], _StartResponse], Iterable[bytes]]:
    """The WSGI app: prometheus_client's, plus HEAD, and only the ``/metrics`` path."""
    inner = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") not in ("/metrics", "/metrics/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: scrape /metrics\n"]
        if environ.get("REQUEST_METHOD") == "HEAD":
            body = b"".join(inner({**environ, "REQUEST_METHOD": "GET"}, start_response))
            del body  # HEAD: the same headers, no body
            return [b""]
        return inner(environ, start_response)

    return app


class MetricsServer:
    """A running ``/metrics`` server; `close()` then `await wait_closed()` stops it."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    async def wait_closed(self) -> None:
        await asyncio.to_thread(self._thread.join, 10)


async def serve_metrics(metrics: Any, host: str, port: int) -> tuple[MetricsServer, int]:
    """Start serving `metrics.registry`; returns the server and the bound port."""
    host = host.strip("[]")
    server_class = _ThreadingServer6 if ":" in host else _ThreadingServer
    httpd = make_server(host, port, metrics_app(metrics.registry),
                        server_class=server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    server = MetricsServer(httpd, thread)
    return server, server.port
