"""TF Serving's REST API (``tensorflow_serving/model_servers/http_rest_api_handler.cc``) on
the standard library's threading HTTP/1.1 server (keep-alive).

Routes (case-insensitive, as TF Serving's regexes):
  GET  /v1/models/{m}[/versions/{n}|/labels/{l}]            model status
  GET  /v1/models/{m}[/versions/{n}|/labels/{l}]/metadata   signature defs
  POST /v1/models/{m}[/versions/{n}|/labels/{l}]:(predict|classify|regress)
Other paths under /v1/ -> 400 "Malformed request: METHOD PATH"; paths outside /v1/ -> 404
with an empty body, like TF Serving. One extra, non-TF path:
  GET  /monitoring/tfmlops/batching  -> batching counters (JSON), for tests/benchmarks.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from tensorflow_serving.apis import input_pb2, model_pb2

from . import json_codec as J
from .errors import Code, StatusError, invalid_argument
from .service import ServingCore, metadata_json, status_json

log = logging.getLogger("tfmlops.serving")

PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
V1_RE = re.compile(r"/v1/.*", re.I | re.S)
DEBUG_BATCHING_PATH = "/monitoring/tfmlops/batching"
DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024
_INT64_MAX = (1 << 63) - 1


class RestApi:
    def __init__(self, core: ServingCore, timeout_ms: int = 30000):
        self.core = core
        self.timeout_ms = timeout_ms if timeout_ms and timeout_ms > 0 else None

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if not V1_RE.fullmatch(path):
            if method == "GET" and path == DEBUG_BATCHING_PATH:
                b = self.core.batcher
                return 200, J.dumps(b.stats() if b is not None else {"enabled": False})
            return 404, b""
        try:
            return 200, self._dispatch(method, path, body)
        except StatusError as exc:
            if exc.code != Code.NOT_FOUND:
                log.debug("REST %s %s failed: %s", method, path, exc)
            return exc.http_status, J.dumps({"error": exc.message})
        except Exception as exc:  # pragma: no cover - defensive
            log.exception("REST %s %s crashed", method, path)
            return 500, J.dumps({"error": f"{type(exc).__name__}: {exc}"})

    @staticmethod
    def _model_info(m):
        name = unquote(m.group(1)) if m.group(1) else ""
        version = None
        if m.group(2):
            version = int(m.group(2))
            if version > _INT64_MAX:
                raise invalid_argument(f"Failed to convert version: {m.group(2)} to numeric.")
        label = unquote(m.group(3)) if m.group(3) else None
        return name, version, label

    def _dispatch(self, method: str, path: str, body: bytes) -> bytes:
        malformed = invalid_argument(f"Malformed request: {method} {path}")
        if method == "POST":
            m = PREDICT_RE.fullmatch(path)
            if not m:
                raise malformed
            name, version, label = self._model_info(m)
            verb = m.group(4)
            if verb == "predict":
                return self._predict(name, version, label, body)
            if verb == "classify":
                return self._classify_regress(name, version, label, body, classify=True)
            if verb == "regress":
                return self._classify_regress(name, version, label, body, classify=False)
            raise malformed  # e.g. ":PREDICT" matches the regex but not the dispatch
        if method == "GET":
            m = STATUS_RE.fullmatch(path)
            if not m:
                raise malformed
            name, version, label = self._model_info(m)
            if not name:
                raise invalid_argument("Missing model name in request.")
            if m.group(4) == "metadata":
                spec = model_pb2.ModelSpec(name=name)
                if version is not None:
                    spec.version.value = version
                elif label is not None:
                    spec.version_label = label
                return metadata_json(self.core.metadata(spec, ["signature_def"]))
            if m.group(4):
                raise malformed
            return status_json(self.core.model_status(name, version))
        raise malformed

    def _predict(self, name, version, label, body) -> bytes:
        doc = J.parse_json(body)
        sig_name = J.signature_name(doc)
        servable = self.core.manager.acquire(name, version, label)
        try:
            key = sig_name or "serving_default"
            sig = servable.signatures.get(key)
            if sig is None:
                raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
            inputs, fmt = J.predict_inputs(doc, sig)
            _, outputs = servable.predict(sig_name, inputs, (), self.timeout_ms)
        finally:
            servable.release()
        return J.predict_outputs_json(outputs, fmt)

    def _classify_regress(self, name, version, label, body, classify: bool) -> bytes:
        doc = J.parse_json(body)
        sig_name = J.signature_name(doc)
        inp = input_pb2.Input()
        J.classify_regress_input(doc, inp)
        servable = self.core.manager.acquire(name, version, label)
        try:
            if classify:
                _, rows, _, _ = servable.classify(sig_name, inp, self.timeout_ms)
            else:
                _, values = servable.regress(sig_name, inp, self.timeout_ms)
        finally:
            servable.release()
        return J.classification_json(rows) if classify else J.regression_json(values)


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

    def __init__(self, host: str, port: int, api: RestApi, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
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
