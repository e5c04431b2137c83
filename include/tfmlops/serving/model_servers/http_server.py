"""The HTTP/1.1 server of the REST API (keep-alive), on the standard library's HTTP server,
mirroring TF Serving's ``tensorflow_serving/model_servers/http_server.cc``: every request goes to
:class:`~tfmlops.serving.model_servers.http_rest_api_handler.RestApi`, whose answers are
``application/json`` unless it names another type (the Prometheus path's ``text/plain``).

It is built to face hostile clients with bounded threads, memory and time:

* **Framing is strict** (request smuggling and unbounded reads): a request with both
  ``Transfer-Encoding`` and ``Content-Length``, a transfer coding other than ``chunked``, a
  ``Content-Length`` that is not a plain decimal number (negative, signed, several different
  values), a chunk size that is not 1-16 hex digits, chunk data not followed by CRLF, more than
  64 trailer lines, or a body shorter than announced is answered 400 and the connection closed.
* **Bodies are bounded**: over ``max_body_bytes`` (chunked bodies counted as they arrive) → 413
  and close, without reading the rest.
* **Time is bounded** per connection by a watchdog that closes it when a phase overruns: waiting
  for the next request on a keep-alive connection (``idle_timeout_s``), reading the request line
  and headers (``header_timeout_s``), reading the body (``body_timeout_s``), writing the answer
  (``write_timeout_s``). Handling the request itself is bounded by the model run's own timeout
  (``--rest_api_timeout_in_ms``).
* **Threads are bounded**: one thread per connection, at most ``max_connections`` of them; a
  connection beyond that is answered 503 and closed at once.
* **Shutdown is fast**: idle, header-reading and body-reading connections are closed at once;
  only requests being handled get the grace period.
* A HEAD request gets the status and headers the REST handler gives it, without the body.

Deviations: a thread per connection (TF Serving: libevent with ``--rest_api_num_threads``
workers); the framing errors, 413 and 503 answers are this server's own (TF Serving's evhttp
answers its own HTML error pages).
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .. import json_tensor as J

log = logging.getLogger("tfmlops.serving")

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_TIMEOUTS_S = {"idle": 60.0, "header": 10.0, "body": 60.0, "write": 60.0}
MAX_TRAILERS = 64
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS = re.compile(r"[0-9]{1,19}")


class FramingError(ValueError):
    """The request's framing is invalid or ambiguous: answered 400, connection closed."""


class BodyTooLarge(ValueError):
    """The body exceeds ``max_body_bytes``: answered 413, connection closed."""


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

    def finish(self):
        try:
            super().finish()
        finally:
            self.server._unregister(self.connection)

    def log_message(self, fmt, *args):  # quiet access log
        log.debug("%s - %s", self.address_string(), fmt % args)

    def handle_one_request(self):
        srv, conn = self.server, self.connection
        try:
            srv._phase(conn, "idle")
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                self.close_connection = True
                return
            srv._phase(conn, "header")
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.parse_request():  # reads the headers (at most 100, 64 KiB a line)
                return
            self._serve()
        except (TimeoutError, ConnectionError, OSError):
            self.close_connection = True
        finally:
            if srv.stopping:
                self.close_connection = True

    # ------------------------------------------------------------------ body
    def _read_exactly(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) != n:
            raise FramingError(f"body ended after {len(data)} of {n} bytes")
        return data

    def _read_body(self) -> bytes:
        te = self.headers.get_all("Transfer-Encoding") or []
        cl = self.headers.get_all("Content-Length") or []
        limit = self.server.max_body_bytes
        if te and cl:
            raise FramingError("both Transfer-Encoding and Content-Length")
        if te:
            codings = [c.strip().lower() for value in te for c in value.split(",")]
            if codings != ["chunked"]:
                raise FramingError(f"unsupported Transfer-Encoding: {', '.join(te)}")
            return self._read_chunked(limit)
        if not cl:
            return b""
        values = {v.strip() for v in cl}
        if len(values) != 1 or not _DIGITS.fullmatch(next(iter(values))):
            raise FramingError(f"invalid Content-Length: {', '.join(cl)}")
        length = int(values.pop())
        if length > limit:
            raise BodyTooLarge(length)
        return self._read_exactly(length) if length else b""

    def _read_chunked(self, limit: int) -> bytes:
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(1026)
            if not line.endswith(b"\r\n"):
                raise FramingError("chunk size line not terminated by CRLF")
            size_field = line[:-2].split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_field):
                raise FramingError(f"invalid chunk size {size_field[:20]!r}")
            size = int(size_field, 16)
            if size == 0:
                for _ in range(MAX_TRAILERS + 1):
                    trailer = self.rfile.readline(8194)
                    if trailer == b"\r\n":
                        return b"".join(chunks)
                    if not trailer.endswith(b"\r\n"):
                        raise FramingError("trailer not terminated by CRLF")
                raise FramingError(f"more than {MAX_TRAILERS} trailer lines")
            total += size
            if total > limit:
                raise BodyTooLarge(total)
            chunks.append(self._read_exactly(size))
            if self.rfile.read(2) != b"\r\n":
                raise FramingError("chunk data not followed by CRLF")

    # ------------------------------------------------------------------ answer
    def _serve(self):
        srv, conn = self.server, self.connection
        path = self.path.split("?", 1)[0]
        srv._phase(conn, "body")
        try:
            body = self._read_body()
        except FramingError as exc:
            self.close_connection = True
            self._respond(400, J.dumps({"error": f"Malformed request: {exc}"}))
            self._linger()
            return
        except BodyTooLarge:
            self.close_connection = True
            self._respond(413, J.dumps({"error": f"Request body exceeds the limit of {srv.max_body_bytes} bytes"}))
            self._linger()
            return
        srv._phase(conn, "busy")
        self._respond(*srv.api.handle(self.command, path, body, self.headers.get("X-Request-Id")))

    def _respond(self, status: int, payload: bytes, content_type: str = "application/json"):
        self.server._phase(self.connection, "write")
        reason = self.responses.get(status, ("",))[0]
        head = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}", f"Content-Length: {len(payload)}"]
        if self.close_connection or self.server.stopping:
            head.append("Connection: close")
        out = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(out if self.command == "HEAD" else out + payload)
        self.wfile.flush()

    def _linger(self, seconds: float = 2.0, max_bytes: int = 4 << 20) -> None:
        """Close gently after an error answer while the client may still be sending: closing a
        socket with unread input makes the kernel reset the connection, which discards the answer
        before the client reads it. So: send FIN after the answer, discard input for a moment."""
        conn = self.connection
        try:
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(0.25)
            deadline, drained = time.monotonic() + seconds, 0
            while time.monotonic() < deadline and drained < max_bytes:
                data = conn.recv(65536)
                if not data:
                    break
                drained += len(data)
        except OSError:
            pass

    # every verb goes to the REST handler, which answers as TF Serving's does
    def _other(self):
        self._serve()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _other


class RestServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, host: str, port: int, api, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, timeouts_s: dict | None = None):
        self.api = api
        self.max_body_bytes = max_body_bytes
        self.max_connections = max_connections
        self.timeouts_s = {**DEFAULT_TIMEOUTS_S, **(timeouts_s or {})}
        self.stopping = False
        self._conn_lock = threading.Condition()
        self._conns: dict = {}  # connection -> [phase, deadline (monotonic) or None]
        self.closed_by_watchdog = 0
        super().__init__((host, port), _Handler)

    # ------------------------------------------------------------------ connections
    def process_request(self, request, client_address):
        """One thread per connection, up to ``max_connections``; beyond: 503 and close."""
        with self._conn_lock:
            full = len(self._conns) >= self.max_connections
            if not full:
                self._conns[request] = ["idle", time.monotonic() + self.timeouts_s["idle"]]
        if full:
            log.warning("REST: %d connections open, refusing one from %s", self.max_connections, client_address[0])
            payload = J.dumps({"error": "Too many connections"})
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n"
                                + payload)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def _unregister(self, conn):
        with self._conn_lock:
            self._conns.pop(conn, None)
            self._conn_lock.notify_all()

    def _phase(self, conn, phase: str) -> None:
        timeout = self.timeouts_s.get(phase)
        with self._conn_lock:
            state = self._conns.get(conn)
            if state is not None:
                state[0], state[1] = phase, (time.monotonic() + timeout if timeout else None)
                if self.stopping and phase in ("idle", "header", "body"):
                    _shutdown(conn)

    def _watchdog(self) -> None:
        """Close connections whose current phase overran its timeout (slow or idle clients)."""
        while not self.stopping:
            time.sleep(0.25)
            now = time.monotonic()
            with self._conn_lock:
                late = [(c, s[0]) for c, s in self._conns.items() if s[1] is not None and now > s[1]]
                for conn, phase in late:
                    self._conns[conn][1] = None
                    self.closed_by_watchdog += 1
                    log.debug("REST: closing a connection that overran its %s timeout", phase)
                    _shutdown(conn)

    def start(self) -> None:
        threading.Thread(target=self._watchdog, name="rest_watchdog", daemon=True).start()
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="rest_accept",
                         daemon=True).start()

    def stop(self, grace_s: float = 30.0) -> None:
        """Stop accepting; close idle and slow connections at once; let requests being handled finish."""
        self.stopping = True
        self.shutdown()
        self.server_close()
        with self._conn_lock:
            for conn, (phase, _) in self._conns.items():
                if phase in ("idle", "header", "body"):
                    _shutdown(conn)
            self._conn_lock.wait_for(lambda: not self._conns, timeout=grace_s)


def _shutdown(conn) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
