"""Prometheus metrics and health endpoints, served on one HTTP port per component.

`/metrics` is the Prometheus text format of the default registry (or the one given);
`/healthz` answers 200 while the process lives; `/readyz` answers 200 when the
component's readiness check passes and 503 with the reason otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

# A readiness check returns (ready, reason).
ReadinessCheck = Callable[[], tuple[bool, str]]


class ObservabilityServer:
    """Background HTTP server for /metrics, /healthz and /readyz. Port 0 picks a free port."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        readiness: ReadinessCheck | None = None,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._readiness = readiness or (lambda: (True, "ok"))
        self._registry = registry
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server._registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/livez"):
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    try:
                        ready, reason = server._readiness()
                    except Exception as exc:
                        ready, reason = False, f"readiness check failed: {exc}"
                    self._send(200 if ready else 503, (reason + "\n").encode())
                else:
                    self._send(404, b"not found\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # scrapes every few seconds would drown the structured logs

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="observability", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def address(self) -> str:
        host = self._httpd.server_address[0]
        return f"{host!s}:{self.port}"

    def start(self) -> ObservabilityServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
