"""Replay of a version's warmup requests while it loads, mirroring TF Serving's
``tensorflow_serving/servables/tensorflow/saved_model_warmup_util.cc``: the
``PredictionLog`` records of ``assets.extra/tf_serving_warmup_requests`` (a TFRecord file) are
run as Predict / Classify / Regress / MultiInference requests on the new version before it becomes
AVAILABLE (each ``--num_request_iterations_for_warmup`` times, once by default); at most 1000
records, and any failure fails the load.

Deviation: the TFRecord reader does not verify the records' CRCs.
"""

from __future__ import annotations

import logging
import os
import struct
import time

from .. import tensors as T
from ..errors import Code, StatusError, invalid_argument
from ..util import monitoring

log = logging.getLogger("tfmlops.serving")

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000

_warmup_latency = monitoring.sampler(
    "/tensorflow/serving/model_warmup_latency",
    "Distribution of wall time (in microseconds) for warming up the model.",
    ("model_path", "status"), monitoring.exponential_buckets(10, 1.8, 33))
_warmup_records_read = monitoring.counter(
    "/tensorflow/serving/model_warmup_records_read", "Total number of warmup records read during model warmup.",
    "model_path", "status")


def read_tfrecords(path: str):
    """Minimal TFRecord reader (length, crc, data, crc); CRCs are not verified."""
    with open(path, "rb") as fh:
        while True:
            header = fh.read(12)
            if not header:
                return
            if len(header) < 12:
                raise StatusError(Code.DATA_LOSS, f"truncated record at {path}. Please verify your "
                                  "warmup data is in TFRecord format.")
            (length,) = struct.unpack("<Q", header[:8])
            data = fh.read(length)
            footer = fh.read(4)
            if len(data) < length or len(footer) < 4:
                raise StatusError(Code.DATA_LOSS, f"truncated record at {path}. Please verify your "
                                  "warmup data is in TFRecord format.")
            yield data


def _replay(servable, plog, kind: str) -> None:
    """RunWarmupRequest: one record as the request it logged."""
    if kind == "predict_log":
        req = plog.predict_log.request
        inputs = {k: T.make_ndarray(v, k) for k, v in req.inputs.items()}
        servable.predict(req.model_spec.signature_name, inputs, list(req.output_filter))
    elif kind == "classify_log":
        req = plog.classify_log.request
        servable.classify(req.model_spec.signature_name, req.input)
    elif kind == "regress_log":
        req = plog.regress_log.request
        servable.regress(req.model_spec.signature_name, req.input)
    elif kind == "multi_inference_log":
        servable.multi_inference(plog.multi_inference_log.request)
    else:
        raise invalid_argument(f"Unsupported log_type for warmup: {kind}")


def run_saved_model_warmup(servable, iterations: int = 1) -> int:
    """Replay ``<version dir>/assets.extra/tf_serving_warmup_requests`` on ``servable`` (each record
    ``iterations`` times); returns the number of records (0 without the file)."""
    path = os.path.join(servable.path, WARMUP_FILE)
    if not os.path.exists(path):
        return 0
    from tensorflow_serving.apis import prediction_log_pb2

    n, status, start = 0, "OK", time.monotonic()
    try:
        records = read_tfrecords(path)
        while True:
            if n > MAX_WARMUP_RECORDS:  # checked before each read, as TF Serving does
                raise invalid_argument(
                    f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
            record = next(records, None)
            if record is None:
                break
            plog = prediction_log_pb2.PredictionLog()
            try:
                plog.ParseFromString(record)
            except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends: a bad record
                raise invalid_argument(f"Failed to parse warmup record: {record!r} from {path}") from None
            kind = plog.WhichOneof("log_type")
            for _ in range(iterations):
                _replay(servable, plog, kind)
            n += 1
    except StatusError as exc:
        status = f"{exc.code.name}: {exc.message}"  # absl::Status::ToString
        raise
    finally:
        # RunSavedModelWarmup records both once the file exists, whatever the outcome.
        _warmup_latency.get_cell(servable.path, status).add((time.monotonic() - start) * 1e6)
        _warmup_records_read.get_cell(servable.path, status).increment_by(n)
    log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d.", path, n)
    return n
