"""Fixtures for the live-metrics tests: a tiny loopback HTTP server that answers recorded text
(a TF Serving metrics page, Prometheus API answers), changeable between requests."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest


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
