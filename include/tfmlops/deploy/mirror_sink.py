"""Request logs that work in front of real TF Serving: the router mirrors a sample of the requests
with their answers to this sink, which writes them as TF Serving ``PredictionLog`` TFRecords.

Open-source TF Serving cannot log requests (any ``logging_config`` fails with "No
request-logger-creator provided"), so the logs come from the router (:mod:`.router`,
``RouterConfig.mirror_rate`` / ``mirror_sink``), which sees every request and its answer anyway.

How the router mirrors (HAProxy 2.6 + ``mirror.lua``), and why this way:

- **Sampling** is HAProxy's own (``rand(1000000) lt rate·10⁶``), of the Predict/Classify/Regress
  calls only (REST ``POST /v1/models/…:predict|classify|regress``; gRPC
  ``/tensorflow.serving.PredictionService/Predict|Classify|Regress``). Requests not sampled take
  none of the steps below (a ``txn`` variable guards every rule).
- **Bodies**: the REST frontend already buffers request bodies (``option http-buffer-request``);
  the gRPC frontend waits for a sampled request's body (``http-request wait-for-body``), which for
  a unary call arrives with its headers. The answer of a sampled request is held until complete
  (``http-response wait-for-body``): for TF Serving's unary answers (one DATA frame, then the
  trailers, or one JSON body) that is the time the last byte takes anyway. A Lua action
  (``http-request``) keeps the request body (``req.body``), another (``http-response``) frames
  request body, response body and a meta record (request id, path, server, group, HTTP status,
  ``grpc-status``, latency from the complete request to the complete answer, the replica's
  address) and appends it to a bounded in-memory queue. A body larger than HAProxy's buffer
  (``tune.bufsize``, 16 KiB by default) is not seen whole: that record is dropped and counted
  (``incomplete``).
- **Delivery** is off the request path: a ``core.register_task`` loop drains the queue in batches
  and POSTs them with ``core.httpclient()`` (HAProxy 2.5+). Calling the httpclient inside the
  response action instead (``RouterConfig.mirror_delivery="inline"``, kept for the measurement)
  holds every sampled answer until the sink has answered. ``tests/rollout/test_mirror.py``
  measures both against no mirror, 100 % mirrored, same replicas, on this 2-core machine: client
  p50 +0.0–1.1 ms with the task (the sink's and HAProxy's CPU on the same cores, no waiting),
  +2.0–2.5 ms inline, and +45 ms inline before the sink set TCP_NODELAY — whatever the sink
  costs, inline delivery adds it to the client's answer, the task does not.
  When the sink is slow or down the queue fills and further records are dropped (counted), the
  clients never wait; a batch the sink refuses is dropped, not retried (bounded memory). The
  counters are on the router's metrics port at ``/mirror/stats``.
- **gRPC**: HTTP/2 bodies are the gRPC length-prefixed message (1 byte compressed flag, 4 bytes
  length); the sink parses the ``PredictRequest``/``PredictResponse`` (Classify/Regress) from
  them. The trailers (``grpc-status`` of a successful call) are not visible to HAProxy 2.6's Lua;
  a ``grpc-status`` header (trailers-only answer: an error) is: a call that has a complete
  response message and no ``grpc-status`` header is taken as OK. Compressed gRPC messages are
  not logged (counted).

The sink (this module, a small HTTP server; no Airflow import):

- ``POST /v1/mirror``: a batch of frames ``>I4 meta JSON, >I4 request body, >I4 response body``
  (``Content-Length`` required, at most ``max_batch_bytes``; malformed → 400, too large → 413,
  no length → 411, queue full → 503). A batch id (``X-Mirror-Batch``) already taken is answered
  200 and not logged again: HAProxy's httpclient resends a request after some failures by itself,
  which made the same records appear twice. Each successful record becomes a ``PredictionLog``:
  REST JSON is converted with the serving package's JSON↔tensor code
  (:mod:`tfmlops.serving.json_tensor`, the signature's dtypes and output names from the
  replica's ``GET /v1/models/<m>/metadata``, cached ``metadata_ttl_s``); gRPC bodies are the
  protos. ``log_metadata.request_origin`` is the request id (the client's ``X-Request-Id`` /
  ``x-request-id``, else the router's ``uuid``), ``model_spec`` the answering version (gRPC: the
  response's; REST: the path's version, else the one the replica's metadata names),
  ``sampling_config.sampling_rate`` the router's rate. Failed calls are counted, not logged (TF
  Serving's loggers log answered requests only).
- Records are written per replica group by the existing :class:`TFRecordLogCollector` (rotation
  by size and age, ``s3://`` with a spool): **layout** ``<log_prefix>/<group>/requests-<UTC
  time>-<pid>-<n>.tfrecord`` (:func:`group_log_prefix`), i.e. one TF Serving ``filename_prefix``
  per group, read with :func:`tfmlops.feedback.list_request_logs` /
  :func:`tfmlops.feedback.read_request_logs`.
- ``GET /v1/mirror/records?after=<seq>&max=<n>``: the latest logged records (a bounded ring,
  ``ring_records`` / ``ring_bytes``), as frames ``>I4 meta JSON (seq, group, protocol,
  latency_ms, …), >I4 serialized PredictionLog`` — what a shadow comparison (:mod:`.shadow`)
  replays without waiting for a file to close. ``GET /v1/mirror/stats``: the counters.
- Bounds: the body size, the connections served at once (``max_connections``; more → 503), the
  socket timeouts, the writer queue (``max_queue``), the number of groups; nothing a client sends
  can make it allocate more or crash it (a bad record → 4xx / counted).
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import re
import signal
import socketserver
import struct
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("tfmlops.mirror")

DEFAULT_PORT = 8650
MAX_BATCH_BYTES = 8 << 20
MAX_RECORD_META_BYTES = 4096
GROUP_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_GROUPS = 16
REST_PATH_RE = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(predict|classify|regress)")
GRPC_PREFIX = "/tensorflow.serving.PredictionService/"
GRPC_METHODS = {"Predict": "predict", "Classify": "classify", "Regress": "regress"}
ADDR_RE = re.compile(r"[0-9A-Za-z.:_-]{1,255}")


class BadRecord(ValueError):
    """A mirrored record that cannot be made a PredictionLog (the message says why)."""


def group_log_prefix(log_prefix: str, group: str) -> str:
    """The TF Serving ``filename_prefix`` of one replica group's logs."""
    return f"{log_prefix.rstrip('/')}/{group}/requests"


# ---------------------------------------------------------------------------- framing
def pack_frames(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def unpack_frames(body: bytes, per_record: int, max_records: int = 100_000) -> list[tuple[bytes, ...]]:
    """``body`` as records of ``per_record`` length-prefixed parts; raises BadRecord on any
    inconsistency (a length past the end, a partial record, too many records)."""
    out, i, n = [], 0, len(body)
    view = memoryview(body)
    while i < n:
        parts = []
        for _ in range(per_record):
            if i + 4 > n:
                raise BadRecord(f"truncated frame at byte {i}")
            (length,) = struct.unpack_from(">I", body, i)
            if i + 4 + length > n:
                raise BadRecord(f"frame at byte {i} declares {length} bytes, {n - i - 4} left")
            parts.append(bytes(view[i + 4:i + 4 + length]))
            i += 4 + length
        out.append(tuple(parts))
        if len(out) > max_records:
            raise BadRecord(f"more than {max_records} records in one batch")
    return out


def grpc_message(body: bytes, what: str) -> bytes:
    """The one message of a unary gRPC body (5-byte prefix: compressed flag, big-endian length)."""
    if len(body) < 5:
        raise BadRecord(f"gRPC {what}: {len(body)} bytes, not a length-prefixed message")
    flag, length = body[0], struct.unpack_from(">I", body, 1)[0]
    if flag != 0:
        raise BadRecord(f"gRPC {what}: compressed message (not logged)")
    if length != len(body) - 5:
        raise BadRecord(f"gRPC {what}: message declares {length} bytes, body has {len(body) - 5}")
    return body[5:]


# ---------------------------------------------------------------------------- REST JSON -> protos
class SignatureCache:
    """Signatures (input/output dtypes and names) and served version of a model as a replica's
    REST ``metadata`` API reports them; cached ``ttl_s`` per (replica, model, version or label),
    at most ``max_entries``; a failed look-up is cached as long (an unreachable replica costs one
    timeout per ``ttl_s``, not one per record)."""

    def __init__(self, ttl_s: float = 5.0, timeout_s: float = 5.0, max_entries: int = 256):
        self.ttl_s, self.timeout_s, self.max_entries = ttl_s, timeout_s, max_entries
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, addr: str, port: int, model: str, version: str | None, label: str | None):
        key = (addr, port, model, version, label)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit and now - hit[0] < self.ttl_s:
            if isinstance(hit[1], BadRecord):  # a failed look-up is not repeated for every record
                raise hit[1]
            return hit[1]
        try:
            value = self._fetch(addr, port, model, version, label)
        except BadRecord as exc:
            value = exc
        with self._lock:
            self._cache[key] = (now, value)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        if isinstance(value, BadRecord):
            raise value
        return value

    def _fetch(self, addr, port, model, version, label):
        from tensorflow.core.framework import types_pb2

        if not ADDR_RE.fullmatch(addr or "") or not 0 < int(port) < 65536:
            raise BadRecord(f"replica address {addr!r}:{port} unusable")
        host = f"[{addr}]" if ":" in addr else addr
        path = f"/v1/models/{model}" + (f"/versions/{version}" if version else f"/labels/{label}" if label else "")
        url = f"http://{host}:{int(port)}{path}/metadata"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                doc = json.loads(resp.read(4 << 20))
        except (OSError, urllib.error.URLError, ValueError) as exc:
            raise BadRecord(f"metadata of {model} from {url}: {exc}") from None
        sigs = {}
        try:
            for name, sd in doc["metadata"]["signature_def"]["signature_def"].items():
                sigs[name] = SimpleNamespace(
                    name=name,
                    inputs={k: SimpleNamespace(dtype=types_pb2.DataType.Value(v["dtype"]))
                            for k, v in sd.get("inputs", {}).items()},
                    outputs={k: SimpleNamespace(dtype=types_pb2.DataType.Value(v["dtype"]))
                             for k, v in sd.get("outputs", {}).items()})
            served = int(doc["model_spec"]["version"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRecord(f"metadata of {model} from {url} not understood: {exc}") from None
        return served, sigs


def _predict_outputs_from_json(doc: dict, sig) -> dict:
    """The inverse of ``predict_outputs_json``: ``{"predictions": …}`` (row) or ``{"outputs": …}``
    (columnar) → ``{alias: ndarray}`` in the signature's output dtypes."""
    from tfmlops.serving import json_tensor as J

    specs = sig.outputs
    if not specs:
        raise BadRecord(f"signature {sig.name} has no outputs")
    if "predictions" in doc:
        preds = doc["predictions"]
        if len(specs) == 1:
            (name, spec), = specs.items()
            return {name: J.value_to_array(preds, spec.dtype)}
        if not isinstance(preds, list) or not all(isinstance(p, dict) for p in preds):
            raise BadRecord("row-format predictions of several outputs must be a list of objects")
        return {n: J.value_to_array([p[n] for p in preds], s.dtype) for n, s in specs.items()}
    if "outputs" in doc:
        outs = doc["outputs"]
        if len(specs) == 1 and not isinstance(outs, dict):
            (name, spec), = specs.items()
            return {name: J.value_to_array(outs, spec.dtype)}
        if not isinstance(outs, dict):
            raise BadRecord("columnar outputs of several tensors must be an object")
        return {n: J.value_to_array(outs[n], specs[n].dtype) for n in outs if n in specs}
    raise BadRecord("response has neither 'predictions' nor 'outputs'")


def _rest_log(meta: dict, request: bytes, response: bytes, sigs: SignatureCache, plog) -> None:
    from tfmlops.serving import json_tensor as J
    from tfmlops.serving import tensors as T

    m = REST_PATH_RE.fullmatch(meta.get("path", ""))
    if not m:
        raise BadRecord(f"not a Predict/Classify/Regress REST path: {meta.get('path')!r}")
    model, version, label, verb = unquote(m.group(1)), m.group(2), m.group(3), m.group(4)
    label = unquote(label) if label else None
    try:
        doc, answer = J.parse_json(request), J.parse_json(response)
    except Exception as exc:  # noqa: BLE001 - the serving package's StatusError: not JSON
        raise BadRecord(f"REST body is not JSON: {getattr(exc, 'message', exc)}") from None
    if not isinstance(doc, dict) or not isinstance(answer, dict):
        raise BadRecord("REST bodies must be JSON objects")
    sig_name = J.signature_name(doc) or "serving_default"
    served, signatures = sigs.get(meta["server_addr"], meta["server_port"], model, version, label)
    spec = plog.log_metadata.model_spec
    spec.name, spec.signature_name = model, sig_name
    spec.version.value = int(version) if version else served
    try:
        if verb == "predict":
            sig = signatures.get(sig_name)
            if sig is None:
                raise BadRecord(f"signature {sig_name!r} not in {model}'s metadata")
            inputs, _ = J.predict_inputs(doc, sig)
            outputs = _predict_outputs_from_json(answer, sig)
            entry = plog.predict_log
            for k, v in inputs.items():
                T.make_tensor_proto(v, entry.request.inputs[k])
            for k, v in outputs.items():
                T.make_tensor_proto(v, entry.response.outputs[k])
        else:
            entry = plog.classify_log if verb == "classify" else plog.regress_log
            J.classify_regress_input(doc, entry.request.input)
            results = answer.get("results")
            if not isinstance(results, list):
                raise BadRecord(f"{verb} response has no 'results' list")
            if verb == "classify":
                for row in results:
                    c = entry.response.result.classifications.add()
                    for lab, score in row:
                        c.classes.add(label=str(lab).encode(), score=float(score))
            else:
                for v in results:
                    entry.response.result.regressions.add().value = float(v)
    except BadRecord:
        raise
    except Exception as exc:  # noqa: BLE001 - conversion errors of a record are the record's
        raise BadRecord(f"REST {verb} of {model}: {getattr(exc, 'message', exc)}") from None
    entry.request.model_spec.CopyFrom(spec)
    entry.response.model_spec.CopyFrom(spec)


def _grpc_log(meta: dict, request: bytes, response: bytes, plog) -> None:
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import classification_pb2, predict_pb2, regression_pb2

    method = meta.get("path", "")[len(GRPC_PREFIX):] if meta.get("path", "").startswith(GRPC_PREFIX) else ""
    kind = GRPC_METHODS.get(method)
    if kind is None:
        raise BadRecord(f"not a PredictionService Predict/Classify/Regress call: {meta.get('path')!r}")
    req_cls, resp_cls = {"predict": (predict_pb2.PredictRequest, predict_pb2.PredictResponse),
                         "classify": (classification_pb2.ClassificationRequest,
                                      classification_pb2.ClassificationResponse),
                         "regress": (regression_pb2.RegressionRequest, regression_pb2.RegressionResponse)}[kind]
    entry = getattr(plog, f"{kind}_log")
    try:
        entry.request.CopyFrom(req_cls.FromString(grpc_message(request, "request")))
        entry.response.CopyFrom(resp_cls.FromString(grpc_message(response, "response")))
    except DecodeError as exc:
        raise BadRecord(f"gRPC {method}: not a {req_cls.__name__}/{resp_cls.__name__}: {exc}") from None
    spec = entry.response.model_spec if entry.response.HasField("model_spec") else entry.request.model_spec
    plog.log_metadata.model_spec.CopyFrom(spec)


def validate_meta(raw: bytes) -> dict:
    if len(raw) > MAX_RECORD_META_BYTES:
        raise BadRecord(f"record meta of {len(raw)} bytes (at most {MAX_RECORD_META_BYTES})")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise BadRecord(f"record meta is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise BadRecord("record meta must be a JSON object")
    if meta.get("protocol") not in ("rest", "grpc"):
        raise BadRecord(f"record protocol must be rest or grpc, got {meta.get('protocol')!r}")
    if not isinstance(meta.get("path"), str) or not isinstance(meta.get("status"), int):
        raise BadRecord("record meta needs a path (string) and a status (integer)")
    group = meta.get("group", "stable")
    if not isinstance(group, str) or not GROUP_RE.fullmatch(group):
        raise BadRecord(f"group {group!r}: letters, digits, _ and - only, at most 32")
    meta["group"] = group
    for key in ("latency_ms", "rate", "time_ms"):
        if not isinstance(meta.get(key, 0), (int, float)):
            raise BadRecord(f"record meta {key} must be a number")
    if not isinstance(meta.get("server_port", 0), int) or not isinstance(meta.get("server_addr", ""), str):
        raise BadRecord("record meta server_addr/server_port malformed")
    return meta


def answered_ok(meta: dict) -> bool:
    """HTTP 200 and, for gRPC, no error ``grpc-status`` header (an OK call's is in the trailers)."""
    return meta["status"] == 200 and str(meta.get("grpc_status", "") or "0") == "0"


def to_prediction_log(meta: dict, request: bytes, response: bytes, sigs: SignatureCache, tags=("serve",)):
    """One mirrored (answered) request as a ``tensorflow.serving.PredictionLog``."""
    from tensorflow_serving.apis import prediction_log_pb2

    from tfmlops.serving.core.server_request_logger import request_id_or_new

    plog = prediction_log_pb2.PredictionLog()
    if meta["protocol"] == "rest":
        _rest_log(meta, request, response, sigs, plog)
    else:
        _grpc_log(meta, request, response, plog)
    lm = plog.log_metadata
    rate = float(meta.get("rate", 0) or 0)
    if 0 <= rate <= 1:
        lm.sampling_config.sampling_rate = rate
    lm.saved_model_tags.extend(tags)
    t = float(meta.get("time_ms") or 0) / 1000.0
    lm.timestamp_secs = int(t) if t > 0 else int(time.time())
    lm.request_origin = request_id_or_new(meta.get("request_id") if isinstance(meta.get("request_id"), str)
                                          else None)
    return plog


# ---------------------------------------------------------------------------- the sink
class MirrorSink:
    """Converts mirrored records and writes them (one collector per group); keeps the last ones
    in a ring for :mod:`.shadow`. Thread-safe; the HTTP front end is :func:`serve`."""

    def __init__(self, log_prefix: str, *, max_file_bytes: int | None = None, max_file_age_s: float | None = None,
                 max_queue: int = 10_000, ring_records: int = 4096, ring_bytes: int = 32 << 20,
                 metadata_ttl_s: float = 5.0, s3_client=None, spool_dir: str | None = None):
        from tfmlops.serving.core.log_collector import DEFAULT_MAX_FILE_AGE_S, DEFAULT_MAX_FILE_BYTES

        self.log_prefix = log_prefix
        self.collector_options = {"max_file_bytes": max_file_bytes or DEFAULT_MAX_FILE_BYTES,
                                  "max_file_age_s": max_file_age_s or DEFAULT_MAX_FILE_AGE_S,
                                  "s3_client": s3_client, "spool_dir": spool_dir}
        self.sigs = SignatureCache(ttl_s=metadata_ttl_s)
        self._collectors: dict = {}
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._ring: deque = deque()
        self._ring_bytes, self.ring_records, self.ring_max_bytes = 0, ring_records, ring_bytes
        self._seq = 0
        self._lock = threading.Lock()
        self.counts = {"records": 0, "logged": 0, "not_ok": 0, "rejected": 0, "dropped_queue_full": 0,
                       "write_errors": 0, "batches": 0, "bad_batches": 0,
                       "duplicate_batches": 0}
        self.last_errors: deque = deque(maxlen=20)
        self._batches: OrderedDict = OrderedDict()  # recent batch ids (bounded)
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="mirror_writer", daemon=True)
        self._writer.start()

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def seen_batch(self, batch_id: str | None) -> bool:
        """Whether ``batch_id`` was taken already (then it is not taken again); remembers it."""
        if not batch_id:
            return False
        with self._lock:
            if batch_id in self._batches:
                return True
            self._batches[batch_id[:128]] = True
            while len(self._batches) > 4096:
                self._batches.popitem(last=False)
        return False

    def add_batch(self, body: bytes) -> dict:
        """Take one POSTed batch; raises BadRecord when it is malformed as a whole."""
        records = unpack_frames(body, 3)
        self._count("batches")
        accepted, rejected, full = 0, [], 0
        for raw_meta, request, response in records:
            self._count("records")
            try:
                meta = validate_meta(raw_meta)
                if not answered_ok(meta):
                    self._count("not_ok")
                    accepted += 1
                    continue
                plog = to_prediction_log(meta, request, response, self.sigs)
            except BadRecord as exc:
                self._count("rejected")
                rejected.append(str(exc))
                self.last_errors.append(str(exc))
                continue
            data = plog.SerializeToString()
            info = {"group": meta["group"], "protocol": meta["protocol"], "server": meta.get("server", ""),
                    "latency_ms": meta.get("latency_ms"), "request_id": plog.log_metadata.request_origin,
                    "kind": plog.WhichOneof("log_type")}
            try:
                self._queue.put_nowait((info, data))
            except queue.Full:
                full += 1
                self._count("dropped_queue_full")
                continue
            accepted += 1
        return {"records": len(records), "accepted": accepted, "rejected": len(rejected),
                "queue_full": full, "errors": rejected[:5]}

    def _collector(self, group: str):
        from tfmlops.serving.core.log_collector import TFRecordLogCollector

        c = self._collectors.get(group)
        if c is None:
            if len(self._collectors) >= MAX_GROUPS:
                raise BadRecord(f"more than {MAX_GROUPS} replica groups")
            c = self._collectors[group] = TFRecordLogCollector(group_log_prefix(self.log_prefix, group),
                                                               **self.collector_options)
        return c

    def _write_loop(self) -> None:
        last_rotation = time.monotonic()
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                info, data = self._queue.get(timeout=0.5)
            except queue.Empty:
                info = None
            if info is not None:
                try:
                    self._collector(info["group"]).collect_serialized(data)
                    self._count("logged")
                    self._remember(info, data)
                except Exception as exc:  # noqa: BLE001 - a full disk must not end the writer
                    self._count("write_errors")
                    self.last_errors.append(f"write: {type(exc).__name__}: {exc}")
                    log.warning("mirror record not written: %s", exc)
            if time.monotonic() - last_rotation >= 0.5:  # files close by age even without records
                last_rotation = time.monotonic()
                for c in list(self._collectors.values()):
                    try:
                        c.rotate_if_due()
                    except Exception as exc:  # noqa: BLE001
                        log.warning("mirror log rotation failed: %s", exc)

    def _remember(self, info: dict, data: bytes) -> None:
        with self._lock:
            self._seq += 1
            self._ring.append((self._seq, info, data))
            self._ring_bytes += len(data)
            while self._ring and (len(self._ring) > self.ring_records or self._ring_bytes > self.ring_max_bytes):
                self._ring_bytes -= len(self._ring.popleft()[2])

    def records_after(self, after: int, max_records: int = 500) -> bytes:
        """Frames (meta JSON with ``seq``, serialized PredictionLog) of the ring after ``after``."""
        with self._lock:
            items = [r for r in self._ring if r[0] > after][:max_records]
            first = self._ring[0][0] if self._ring else self._seq + 1
        parts = []
        for seq, info, data in items:
            parts.append(pack_frames(json.dumps({**info, "seq": seq, "first_seq": first}).encode(), data))
        return b"".join(parts)

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every accepted record is written."""
        deadline = time.monotonic() + timeout_s
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.02)

    def stats(self) -> dict:
        with self._lock:
            return {**self.counts, "queued": self._queue.qsize(), "ring_records": len(self._ring),
                    "last_seq": self._seq, "last_errors": list(self.last_errors)[-5:]}

    def close(self) -> None:
        self._stop.set()
        self._writer.join(30)
        for c in list(self._collectors.values()):
            c.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tfmlops-mirror-sink"
    timeout = 10  # a client that stops sending is dropped
    # headers and body are two writes: without TCP_NODELAY the body waits for the peer's delayed
    # ACK (40 ms per answer, measured: the router's task could deliver ~25 batches/s at most)
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):  # noqa: D401 - quiet: the counters say what happened
        log.debug("%s " + fmt, self.address_string(), *args)

    def _reply(self, code: int, doc, content_type: str = "application/json", close: bool = False) -> None:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 - http.server's name
        sink: MirrorSink = self.server.sink
        if urlsplit(self.path).path != "/v1/mirror":
            return self._reply(404, {"error": f"no such path {self.path[:100]!r}"}, close=True)
        if self.headers.get("Transfer-Encoding"):
            return self._reply(411, {"error": "Content-Length required (no chunked bodies)"}, close=True)
        try:
            length = int(self.headers.get("Content-Length", ""))
            if length < 0:
                raise ValueError
        except ValueError:
            return self._reply(411, {"error": "Content-Length required"}, close=True)
        if length > self.server.max_batch_bytes:
            sink._count("bad_batches")
            return self._reply(413, {"error": f"batch of {length} bytes (at most {self.server.max_batch_bytes})"},
                               close=True)
        body = self.rfile.read(length)
        if len(body) != length:
            return self._reply(400, {"error": "body shorter than its Content-Length"}, close=True)
        if sink.seen_batch(self.headers.get("X-Mirror-Batch")):
            sink._count("duplicate_batches")
            return self._reply(200, {"duplicate": True})
        try:
            result = sink.add_batch(body)
        except BadRecord as exc:
            sink._count("bad_batches")
            return self._reply(400, {"error": str(exc)})
        if result["records"] and result["rejected"] == result["records"]:
            return self._reply(400, {"error": "no record could be logged", **result})
        if result["queue_full"] and not result["accepted"]:
            return self._reply(503, {"error": "writer queue full", **result})
        return self._reply(200, result)

    def do_GET(self):  # noqa: N802
        sink: MirrorSink = self.server.sink
        url = urlsplit(self.path)
        if url.path == "/v1/mirror/stats":
            return self._reply(200, sink.stats())
        if url.path == "/v1/mirror/records":
            q = parse_qs(url.query)
            try:
                after = int(q.get("after", ["0"])[0])
                n = max(1, min(2000, int(q.get("max", ["500"])[0])))
            except ValueError:
                return self._reply(400, {"error": "after and max must be integers"})
            return self._reply(200, sink.records_after(after, n), "application/x-tfmlops-mirror-records")
        return self._reply(404, {"error": f"no such path {self.path[:100]!r}"}, close=True)


class SinkServer(ThreadingHTTPServer):
    """At most ``max_connections`` connections served at once; more are answered 503 and closed."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, sink: MirrorSink, max_batch_bytes: int = MAX_BATCH_BYTES, max_connections: int = 32):
        self.sink, self.max_batch_bytes = sink, max_batch_bytes
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            socketserver.ThreadingMixIn.process_request_thread(self, request, client_address)
        finally:
            self._slots.release()


def serve(sink: MirrorSink, host: str = "127.0.0.1", port: int = DEFAULT_PORT, **kwargs) -> SinkServer:
    """The sink's HTTP server, bound (serve it with ``serve_forever``)."""
    return SinkServer((host, port), sink, **kwargs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tfmlops.deploy.mirror_sink", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback unless told)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--log_prefix", required=True, help="local directory or s3://bucket/prefix; "
                   "files go to <log_prefix>/<group>/requests-*.tfrecord")
    p.add_argument("--max_file_bytes", type=int, default=None)
    p.add_argument("--max_file_age_s", type=float, default=None)
    p.add_argument("--spool_dir", default=None, help="with s3://: where files wait for their upload")
    p.add_argument("--max_batch_bytes", type=int, default=MAX_BATCH_BYTES)
    p.add_argument("--max_connections", type=int, default=32)
    p.add_argument("--max_queue", type=int, default=10_000)
    p.add_argument("--metadata_ttl_s", type=float, default=5.0)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # the first batch must not wait for these imports (the router's httpclient would time out)
    import tensorflow  # noqa: F401
    from tensorflow_serving.apis import classification_pb2, prediction_log_pb2  # noqa: F401
    sink = MirrorSink(a.log_prefix, max_file_bytes=a.max_file_bytes, max_file_age_s=a.max_file_age_s,
                      max_queue=a.max_queue, metadata_ttl_s=a.metadata_ttl_s, spool_dir=a.spool_dir)
    server = serve(sink, a.host, a.port, max_batch_bytes=a.max_batch_bytes, max_connections=a.max_connections)

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("mirror sink on %s:%d writing %s/<group>/requests-*.tfrecord", a.host, a.port, a.log_prefix)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        sink.close()  # the open files are closed (renamed from .partial) and uploaded
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
