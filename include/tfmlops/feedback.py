"""Live traffic → labeled data: the request logs of the served model joined with labels that arrive
later, written as a partition of the partitioned dataset (no Airflow, no TensorFlow).

- **Request logs**: TFRecord files of ``tensorflow.serving.PredictionLog`` written by the model
  server's sampled request logging (``logging_config`` of its model config; tf-serving-local,
  :mod:`tfmlops.serving.core.server_request_logger`). Each record carries the request (its
  ``pixels`` rows), the answer and the request id (``log_metadata.request_origin``).
- **Labels**: JSON-lines files ``<root>/<dataset>/feedback/labels/*.jsonl``, one object a line:
  ``{"request_id": "...", "labels": [3, 7]}`` (one label per row of the request; ``"label": 3``
  for a one-row request). Whoever learns the truth writes them (a review tool, the simulator).
- **Join** (:func:`join_feedback`): the labeled rows of logged requests become
  ``<root>/<dataset>/incoming/<partition-id>/data.npz`` (uint8 28×28 images, 30 % test split, the
  layout of every partition), so ingestion validates it like any other and ``tf_online_update``
  trains on what users really sent. Label files that were joined move to ``feedback/joined/``;
  labels whose request is not (yet) in the logs stay for a later run, and are dropped with a
  count after ``max_label_age_s``. A label that does not fit its request (row count, class range)
  is refused with the reason and counted, never guessed.
"""

from __future__ import annotations

import json
import math
import logging
import os
import time
from pathlib import Path

import numpy as np

from tfmlops.partitions import dataset_path, new_partition_id, write_partition

log = logging.getLogger(__name__)

INPUT_NAME = "pixels"
MAX_LABEL_FILE_BYTES = 64 << 20
MAX_LOG_RECORD_BYTES = 64 << 20


def _tfrecords(path: str):
    from tfmlops.serving.servables.warmup import read_tfrecords  # plain-Python TFRecord reader

    return read_tfrecords(path)


def complete_records(path: str):
    """The records of a log file; of a file still being written (``.partial``) the complete ones."""
    from tfmlops.serving.errors import StatusError

    if path.endswith(".partial") and not os.path.exists(path):
        path = path[:-len(".partial")]  # closed since it was listed
    try:
        yield from _tfrecords(path)
    except StatusError:
        if not path.endswith(".partial"):
            raise


def read_request_logs(paths: list[str], input_name: str = INPUT_NAME) -> dict[str, dict]:
    """``{request id: {"x": float32 rows, "predicted": classes, "model_version": int}}`` of the
    Predict records in ``paths`` (other log types are skipped)."""
    from tensorflow_serving.apis import prediction_log_pb2

    from tfmlops.serving.tensors import make_ndarray

    out: dict[str, dict] = {}
    for path in paths:
        for record in complete_records(path):
            plog = prediction_log_pb2.PredictionLog.FromString(record)
            if plog.WhichOneof("log_type") != "predict_log" or input_name not in plog.predict_log.request.inputs:
                continue
            x = np.asarray(make_ndarray(plog.predict_log.request.inputs[input_name], input_name), np.float32)
            outputs = plog.predict_log.response.outputs
            predicted = None
            if outputs:
                probs = make_ndarray(next(iter(outputs.values())), "output")
                predicted = np.asarray(probs).reshape(len(x), -1).argmax(axis=1)
            out[plog.log_metadata.request_origin] = {
                "x": x.reshape(len(x), -1), "predicted": predicted,
                "model_version": int(plog.log_metadata.model_spec.version.value)}
    return out


def list_request_logs(prefix: str, include_partial: bool = False) -> list[str]:
    """The complete log files of a ``filename_prefix`` (``<prefix>-….tfrecord``); files still being
    written (``.partial``) only with ``include_partial`` (monitoring may look at them, the join
    never does: it would take their records again once they are complete)."""
    directory, base = os.path.split(prefix)
    if not os.path.isdir(directory or "."):
        return []
    ends = (".tfrecord", ".tfrecord.partial") if include_partial else (".tfrecord",)
    return sorted(os.path.join(directory, f) for f in os.listdir(directory or ".")
                  if f.startswith(base + "-") and f.endswith(ends))


def read_labels(path: str, numeric: bool = False) -> tuple[dict[str, list], list[str]]:
    """``({request id: labels}, [problems])`` of one JSON-lines label file: class ids (integers), or
    with ``numeric`` any finite numbers (a regression's labels)."""
    if os.path.getsize(path) > MAX_LABEL_FILE_BYTES:
        raise ValueError(f"{path}: label file larger than {MAX_LABEL_FILE_BYTES} bytes")
    labels, problems = {}, []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                rid = doc["request_id"]
                values = doc["labels"] if "labels" in doc else [doc["label"]]
                kinds = (int, float) if numeric else int
                if not isinstance(rid, str) or not rid or not isinstance(values, list) or not all(
                        isinstance(v, kinds) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                    raise ValueError("request_id must be a string and labels a list of "
                                     + ("finite numbers" if numeric else "integers"))
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"{path}:{n}: {exc}")
                continue
            labels[rid] = values
    return labels, problems


def to_images(x: np.ndarray) -> np.ndarray:
    """Served ``pixels`` (float32 in [0, 1], N×side²) back to the partitions' uint8 N×side×side."""
    side = int(round(np.sqrt(x.shape[1])))
    if side * side != x.shape[1]:
        raise ValueError(f"logged inputs have {x.shape[1]} features, not a square image")
    return np.clip(np.rint(np.asarray(x) * 255.0), 0, 255).astype(np.uint8).reshape(len(x), side, side)


def join(requests: dict[str, dict], labels: dict[str, list[int]], num_classes: int = 10) -> dict:
    """Rows of the logged requests that have labels: ``{"x", "y", "joined_ids", "refused", "missing"}``."""
    xs, ys, joined, refused, missing = [], [], [], [], []
    for rid, values in labels.items():
        req = requests.get(rid)
        if req is None:
            missing.append(rid)
            continue
        if len(values) != len(req["x"]):
            refused.append(f"{rid}: {len(values)} labels for {len(req['x'])} rows")
            continue
        if not all(0 <= v < num_classes for v in values):
            refused.append(f"{rid}: labels outside [0, {num_classes})")
            continue
        xs.append(req["x"])
        ys.append(np.asarray(values, np.int64))
        joined.append(rid)
    x = np.concatenate(xs) if xs else np.zeros((0, 0), np.float32)
    y = np.concatenate(ys) if ys else np.zeros((0,), np.int64)
    return {"x": x, "y": y, "joined_ids": joined, "refused": refused, "missing": missing}


def join_feedback(log_prefix: str, root: str, dataset: str, *, min_rows: int = 50, test_fraction: float = 0.3,
                  num_classes: int = 10, max_label_age_s: float = 7 * 24 * 3600, seed: int = 0) -> dict:
    """Join the label files of ``<root>/<dataset>/feedback/labels/`` with the request logs of
    ``log_prefix``; with at least ``min_rows`` labeled rows, write them as a new partition. Returns
    the counts and, when written, ``partition_id`` and ``uri``."""
    if str(root).startswith("s3://") or str(log_prefix).startswith("s3://"):
        raise ValueError("the feedback join reads request logs and label files from local folders; "
                         f"s3:// is not supported here yet (root={root!r}, log prefix={log_prefix!r})")
    labels_dir = Path(dataset_path(root, dataset, "feedback", "labels"))
    done_dir = Path(dataset_path(root, dataset, "feedback", "joined"))
    files = sorted(labels_dir.glob("*.jsonl")) if labels_dir.is_dir() else []
    labels, problems, per_file = {}, [], {}
    for f in files:
        got, bad = read_labels(str(f))
        problems += bad
        labels.update(got)
        per_file[f] = got
    requests = read_request_logs(list_request_logs(log_prefix))
    result = join(requests, labels, num_classes)
    summary = {"label_files": len(files), "labels": len(labels), "logged_requests": len(requests),
               "joined_requests": len(result["joined_ids"]), "rows": int(len(result["y"])),
               "refused": result["refused"] + problems, "missing": len(result["missing"]), "partition_id": None}
    if len(result["y"]) < max(2, min_rows):
        log.info("feedback join: %d labeled rows, fewer than %d: nothing written (%s)", len(result["y"]),
                 min_rows, summary)
        return summary
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(result["y"]))
    images, y = to_images(result["x"])[order], result["y"][order]
    n_test = max(1, int(round(len(y) * test_fraction)))
    partition_id = new_partition_id()
    uri = write_partition(root, dataset, partition_id, {"x_train": images[n_test:], "y_train": y[n_test:],
                                                        "x_test": images[:n_test], "y_test": y[:n_test]})
    # joined and refused labels are done (kept in feedback/joined/); labels still without their
    # request stay in their file for a later run, until they are older than max_label_age_s
    missing, now = set(result["missing"]), time.time()
    done_dir.mkdir(parents=True, exist_ok=True)
    for f, got in per_file.items():
        waiting = {rid: v for rid, v in got.items() if rid in missing}
        written = f.stat().st_mtime
        os.replace(f, done_dir / f"{partition_id}-{f.name}")
        if waiting and now - written <= max_label_age_s:
            tmp = f.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps({"request_id": rid, "labels": v}) + "\n" for rid, v in waiting.items()))
            os.utime(tmp, (written, written))  # the labels' age stays that of their first file
            os.replace(tmp, f)
    summary.update(partition_id=partition_id, uri=uri)
    log.info("feedback join: %s", summary)
    return summary
