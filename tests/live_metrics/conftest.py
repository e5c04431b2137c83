"""Fixtures for the live-metrics tests: a tiny loopback HTTP server that answers recorded text
(a TF Serving metrics page, Prometheus API answers), changeable between requests; a real
Prometheus (Debian's ``prometheus`` binary) on loopback, scraping given targets every second."""

from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import devservers
import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docker" / "prometheus" / "rules.yml"


class TextServer:
    """``pages[path] = (status, body)``, or a function of the query parameters returning them; every
    request is recorded in ``requests`` (path, query parameters)."""

    def __init__(self):
        self.pages: dict[str, tuple[int, bytes]] = {}
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                server.requests.append((url.path, parse_qs(url.query)))
                page = server.pages.get(url.path, (404, b"not found\n"))
                status, body = page(parse_qs(url.query)) if callable(page) else page
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def text_server():
    server = TextServer()
    yield server
    server.close()


@contextlib.contextmanager
def prometheus_process(root: Path, targets: list[str], metrics_path: str, interval: str = "1s"):
    """A real Prometheus on a free loopback port, its data and log under ``root``, scraping
    ``targets`` as the job ``tf-serving`` with the stack's rules; yields its URL."""
    port = devservers.free_port()
    config = devservers.prometheus_config(root / "prometheus.yml", targets, metrics_path, interval, (RULES,))
    argv = devservers.prometheus_argv(config, root / "data", port)
    if argv is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install -y prometheus, or make system-deps as root)")
    devservers.start("prometheus", argv, root)
    try:
        devservers.wait_http(f"http://127.0.0.1:{port}/-/ready", 60, "prometheus", root)
        yield f"http://127.0.0.1:{port}"
    finally:
        devservers.stop("prometheus", root)


wait_for = devservers.wait_for  # the tests of this folder import it from here
