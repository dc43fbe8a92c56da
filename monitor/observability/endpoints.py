"""The HTTP endpoints of a running monitor: `/metrics`, `/healthz`, `/readyz` (an edge).

`/healthz` answers whether the loop is alive, `/readyz` whether the monitor is assigned and
caught up; each takes a probe returning (ok, text) so the server knows nothing of Kafka.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

Probe = Callable[[], tuple[bool, str]]


class Endpoints:
    """A small threaded HTTP server; `port` is the bound port (ask for 0 to get a free one)."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, *, health: Probe, ready: Probe
    ) -> None:
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry)),
            "/healthz": lambda: _probe(health),
            "/readyz": lambda: _probe(ready),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                status, content_type, body = (
                    route() if route else (404, "text/plain", b"not found\n")
                )
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would drown the log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="posmon-http", daemon=True
        )

    def start(self) -> Endpoints:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _probe(probe: Probe) -> tuple[int, str, bytes]:
    ok, text = probe()
    return (200 if ok else 503), "text/plain; charset=utf-8", (text + "\n").encode()


class Staged(CollectorRegistry):
    """What one /metrics serves for two loops of one process: `main`'s series, and those of each
    registry in `staged` with the label `stage` added, merged into the same families (a family
    must appear once in an exposition)."""

    def __init__(self, main: CollectorRegistry, staged: Mapping[str, CollectorRegistry]) -> None:
        super().__init__()
        self._main, self._staged = main, dict(staged)

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {f.name: f for f in self._main.collect()}
        for stage, registry in self._staged.items():
            for family in registry.collect():
                into = families.get(family.name)
                if into is None:
                    into = Metric(family.name, family.documentation, family.type, family.unit)
                    families[family.name] = into
                for sample in family.samples:
                    labels = {**sample.labels, "stage": stage}
                    into.samples.append(sample._replace(labels=labels))
        return families.values()
