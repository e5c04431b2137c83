"""The HTTP/1.1 server of the REST API (keep-alive), on the standard library's threading HTTP
server, mirroring TF Serving's ``tensorflow_serving/model_servers/http_server.cc``: every
request goes to :class:`~tfmlops.serving.model_servers.http_rest_api_handler.RestApi`, every
answer is ``application/json``.

Deviations: a thread per connection (``--rest_api_num_threads`` is accepted and ignored); a
request body over ``--rest_api_max_body_bytes`` is answered 413; on shutdown in-flight requests
finish and idle keep-alive connections are closed.
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .. import json_tensor as J

log = logging.getLogger("tfmlops.serving")

DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tfmlops-tf-serving-local"
    sys_version = ""

    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.server._register(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server._unregister(self.connection)

    def log_message(self, fmt, *args):  # quiet access log
        log.debug("%s - %s", self.address_string(), fmt % args)

    def handle_one_request(self):
        try:
            self.raw_requestline = self.rfile.readline(65537)
            self.server._set_busy(self.connection, True)
            try:
                if len(self.raw_requestline) > 65536:
                    self.requestline = ""
                    self.request_version = ""
                    self.command = ""
                    self.send_error(414)
                    return
                if not self.raw_requestline:
                    self.close_connection = True
                    return
                if not self.parse_request():
                    return
                self._serve()
                self.wfile.flush()
            finally:
                self.server._set_busy(self.connection, False)
                if self.server.stopping:
                    self.close_connection = True
        except (TimeoutError, ConnectionError, OSError):
            self.close_connection = True

    def _read_body(self) -> bytes | None:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        limit = self.server.max_body_bytes
        if "chunked" in te:
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > limit:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self):
        path = self.path.split("?", 1)[0]
        try:
            body = self._read_body()
        except ValueError:
            self._respond(400, J.dumps({"error": "Malformed request body"}))
            self.close_connection = True
            return
        if body is None:
            self.close_connection = True
            self._respond(413, J.dumps({"error": f"Request body exceeds the limit of "
                                                 f"{self.server.max_body_bytes} bytes"}))
            return
        status, payload = self.server.api.handle(self.command, path, body)
        self._respond(status, payload)

    def _respond(self, status: int, payload: bytes):
        reason = self.responses.get(status, ("",))[0]
        head = [f"HTTP/1.1 {status} {reason}",
                "Content-Type: application/json",
                f"Content-Length: {len(payload)}"]
        if self.close_connection or self.server.stopping:
            head.append("Connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)

    # every other verb: same answer as TF Serving's handler
    def _other(self):
        self._serve()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _other


class RestServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, host: str, port: int, api, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.api = api
        self.max_body_bytes = max_body_bytes
        self.stopping = False
        self._conn_lock = threading.Condition()
        self._conns: dict = {}
        super().__init__((host, port), _Handler)
        self._thread: threading.Thread | None = None

    def _register(self, conn):
        with self._conn_lock:
            self._conns[conn] = False

    def _unregister(self, conn):
        with self._conn_lock:
            self._conns.pop(conn, None)
            self._conn_lock.notify_all()

    def _set_busy(self, conn, busy: bool):
        with self._conn_lock:
            if conn in self._conns:
                self._conns[conn] = busy
            if not busy:
                self._conn_lock.notify_all()
                if self.stopping:
                    _shutdown_read(conn)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="rest_accept", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float = 30.0) -> None:
        """Stop accepting, let in-flight requests finish, close idle keep-alive connections."""
        self.stopping = True
        self.shutdown()
        self.server_close()
        with self._conn_lock:
            for conn, busy in self._conns.items():
                if not busy:
                    _shutdown_read(conn)
            self._conn_lock.wait_for(lambda: not self._conns, timeout=grace_s)


def _shutdown_read(conn) -> None:
    try:
        conn.shutdown(socket.SHUT_RD)
    except OSError:
        pass
