"""Live traffic → labeled data: the request logs of the served model joined with labels that arrive
later, written as a partition of the partitioned dataset, for any model module (no Airflow; the
``PredictionLog`` protos import TensorFlow).

- **Request logs**: TFRecord files of ``tensorflow.serving.PredictionLog`` written by the model
  server's sampled request logging (``logging_config`` of its model config; tf-serving-local,
  :mod:`tfmlops.serving.core.server_request_logger`). Each record carries the request, the answer
  and the request id (``log_metadata.request_origin``). Read by the model's spec
  (:func:`read_request_logs`): Predict records (the named raw inputs of ``serving_default``, or
  serialized ``tf.Example`` rows sent to the ``classification``/``regression`` signature) and
  Classify / Regress records (their ``tf.Example`` list, with its context), each input checked
  against the spec's dtype and shape; a record that does not fit is skipped and counted.
- **Labels**: JSON-lines files ``<root>/<dataset>/feedback/labels/*.jsonl``, one object a line:
  ``{"request_id": "...", "labels": [3, 7]}`` (one label per row of the request; ``"label": 3``
  for a one-row request): class ids or class names for a classifier, numbers for a regressor.
  Whoever learns the truth writes them (a review tool, the simulator).
- **Join** (:func:`join_feedback`): the labeled rows of logged requests become
  ``<root>/<dataset>/incoming/<partition-id>/data.parquet`` in the model module's Parquet layout
  (a column per input, the label, ``split`` with 30 % ``test``), so ingestion validates it with the
  champion's module like any other partition and ``tf_online_update`` trains on what users really
  sent (a module with its own ``load_data`` must read that layout). Label files that were joined
  move to ``feedback/joined/``; labels whose request is not (yet) in the logs stay for a later run,
  and are dropped with a count after ``max_label_age_s``. A label that does not fit its request
  (row count, class range) is refused with the reason and counted, never guessed.
"""

from __future__ import annotations

import json
import math
import logging
import os
import time
from pathlib import Path

import numpy as np

from tfmlops.partitions import dataset_path, new_partition_id, write_module_partition

log = logging.getLogger(__name__)

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


def _example_rows(spec, examples, context=None) -> dict[str, np.ndarray]:
    """Named input arrays of ``tf.Example`` protos (a Classify/Regress ``Input``; ``context`` features
    apply to every example, as ``ExampleListWithContext`` defines), each feature checked against the
    spec's dtype and fixed shape. Raises ``ValueError`` naming the feature that does not fit."""
    kinds = {"float32": "float_list", "int64": "int64_list", "string": "bytes_list"}
    columns: dict[str, list] = {name: [] for name in spec.inputs}
    for i, example in enumerate(examples):
        for name, (dtype, shape) in spec.inputs.items():
            feature = example.features.feature[name] if name in example.features.feature else None
            if feature is None and context is not None and name in context.features.feature:
                feature = context.features.feature[name]
            if feature is None:
                raise ValueError(f"example {i} has no feature {name!r}")
            kind = feature.WhichOneof("kind")
            if kind != kinds[dtype]:
                raise ValueError(f"example {i}: feature {name!r} is a {kind}, input {name!r} is {dtype}")
            values = list(getattr(feature, kind).value)
            if len(values) != int(np.prod(shape)):
                raise ValueError(f"example {i}: feature {name!r} has {len(values)} values, input {name!r} takes "
                                 f"{list(shape)}")
            columns[name].append(values)
    return {name: np.asarray(rows, dtype=object if spec.inputs[name][0] == "string" else spec.inputs[name][0])
            .reshape((len(rows), *spec.inputs[name][1])) for name, rows in columns.items()}


def _input_examples(inp):
    """The examples of a ``tensorflow.serving.Input`` and its context (None without one)."""
    kind = inp.WhichOneof("kind")
    if kind == "example_list":
        return list(inp.example_list.examples), None
    if kind == "example_list_with_context":
        return list(inp.example_list_with_context.examples), inp.example_list_with_context.context
    raise ValueError("the request's input holds no examples")


def _predict_rows(spec, request) -> dict[str, np.ndarray]:
    """Named input arrays of a logged Predict request: the raw named inputs (``serving_default``), or
    serialized ``tf.Example`` rows in ``inputs`` (the ``classification``/``regression`` signatures)."""
    from tensorflow.core.example import example_pb2

    from tfmlops.serving.tensors import make_ndarray

    sent = request.inputs
    if all(name in sent for name in spec.inputs):
        rows = {}
        for name, (dtype, shape) in spec.inputs.items():
            array = np.asarray(make_ndarray(sent[name], name, MAX_LOG_RECORD_BYTES))
            if dtype != "string" and array.dtype.kind not in "fiu":
                raise ValueError(f"input {name!r} was sent as {array.dtype}, the model takes {dtype}")
            n = len(array) if array.ndim else 0
            if array.ndim == 0 or array.size != n * int(np.prod(shape)):
                raise ValueError(f"input {name!r} was sent with shape {list(array.shape)}, the model takes "
                                 f"[batch{''.join(f', {d}' for d in shape)}]")
            rows[name] = array.reshape((n, *shape)).astype(object if dtype == "string" else dtype)
        if len({len(v) for v in rows.values()}) > 1:
            raise ValueError(f"inputs have different row counts: { {k: len(v) for k, v in rows.items()} }")
        return rows
    if "inputs" in sent:
        serialized = make_ndarray(sent["inputs"], "inputs", MAX_LOG_RECORD_BYTES).reshape(-1)
        return _example_rows(spec, [example_pb2.Example.FromString(bytes(s)) for s in serialized])
    raise ValueError(f"the request has inputs {sorted(sent)}, the model takes {sorted(spec.inputs)}")


def _classify_scores(spec, result) -> np.ndarray:
    """A ClassificationResult as scores [N, C] in ``CLASS_NAMES`` order (by label when labelled)."""
    index = {name: i for i, name in enumerate(spec.class_names)}
    scores = np.zeros((len(result.classifications), len(spec.class_names)), np.float32)
    for row, classification in enumerate(result.classifications):
        for j, cls in enumerate(classification.classes):
            col = index.get(cls.label, j) if cls.label else j
            if col >= scores.shape[1]:
                raise ValueError(f"classification answer names class {cls.label or j!r}, not one of "
                                 f"{spec.class_names}")
            scores[row, col] = cls.score
    return scores


def _logged(spec, plog) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """``(features, outputs by task or None)`` of one PredictionLog; ``ValueError`` when it does not fit."""
    from tfmlops.formats import task_outputs

    kind = plog.WhichOneof("log_type")
    if kind == "predict_log":
        features = _predict_rows(spec, plog.predict_log.request)
        got = plog.predict_log.response.outputs
        name = next((n for n in (spec.output_name, "scores", "outputs") if n in got), None)
        if name is None:
            return features, None
        from tfmlops.serving.tensors import make_ndarray

        return features, task_outputs(spec.task, make_ndarray(got[name], name, MAX_LOG_RECORD_BYTES))
    if kind in ("classify_log", "regress_log"):
        entry = getattr(plog, kind)
        examples, context = _input_examples(entry.request.input)
        features = _example_rows(spec, examples, context)
        result = entry.response.result
        if kind == "classify_log":
            if spec.task == "regression":
                raise ValueError("a Classify request to a regression model")
            outputs = task_outputs(spec.task, _classify_scores(spec, result)) if len(result.classifications) else None
        else:
            outputs = np.asarray([r.value for r in result.regressions], np.float32) if len(result.regressions) else None
        if outputs is not None and len(outputs) != len(examples):
            raise ValueError(f"{len(examples)} examples but {len(outputs)} answers")
        return features, outputs
    raise ValueError(f"{kind} records are not read (Predict, Classify and Regress are)")


def read_request_logs(paths: list[str], spec=None, problems: list[str] | None = None) -> dict[str, dict]:
    """``{request id: {"features": {input: rows}, "outputs": by task (class probabilities [N, C],
    the positive class's probability [N], the value [N]) or None, "model_version": int}}`` of the
    Predict, Classify and Regress records in ``paths``, read by the model's ``spec`` (its inputs by
    name, dtype and shape; default: the default model module's). A record that does not fit the spec
    (another model's inputs, a malformed example) is skipped and described in ``problems``."""
    from tensorflow_serving.apis import prediction_log_pb2

    from tfmlops.serving.errors import StatusError

    spec = spec or _default_spec()
    out: dict[str, dict] = {}
    for path in paths:
        for n, record in enumerate(complete_records(path)):
            plog = prediction_log_pb2.PredictionLog.FromString(record)
            try:
                features, outputs = _logged(spec, plog)
            except (ValueError, StatusError) as exc:
                if problems is not None:
                    problems.append(f"{path}: record {n} (request {plog.log_metadata.request_origin!r}): {exc}")
                continue
            out[plog.log_metadata.request_origin] = {
                "features": features, "outputs": outputs, "rows": len(next(iter(features.values()))),
                "model_version": int(plog.log_metadata.model_spec.version.value)}
    return out


def _default_spec():
    from tfmlops import modelspec

    return modelspec.read_spec(modelspec.DEFAULT_MODULE)


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


def read_labels(path: str, numeric: bool = False, class_names: list[str] | None = None
                ) -> tuple[dict[str, list], list[str]]:
    """``({request id: labels}, [problems])`` of one JSON-lines label file: class ids (integers; with
    ``class_names`` a class's name is taken for its id), or with ``numeric`` any finite numbers (a
    regression's labels)."""
    if os.path.getsize(path) > MAX_LABEL_FILE_BYTES:
        raise ValueError(f"{path}: label file larger than {MAX_LABEL_FILE_BYTES} bytes")
    index = {name: i for i, name in enumerate(class_names or [])}
    labels, problems = {}, []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                rid = doc["request_id"]
                values = doc["labels"] if "labels" in doc else [doc["label"]]
                if isinstance(values, list) and index and not numeric:
                    unknown = [v for v in values if isinstance(v, str) and v not in index]
                    if unknown:
                        raise ValueError(f"labels {unknown} are not class names ({list(index)})")
                    values = [index[v] if isinstance(v, str) else v for v in values]
                kinds = (int, float) if numeric else int
                if not isinstance(rid, str) or not rid or not isinstance(values, list) or not all(
                        isinstance(v, kinds) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                    raise ValueError("request_id must be a string and labels a list of "
                                     + ("finite numbers" if numeric else "class ids or names"))
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"{path}:{n}: {exc}")
                continue
            labels[rid] = values
    return labels, problems


def join(requests: dict[str, dict], labels: dict[str, list], spec=None) -> dict:
    """Rows of the logged requests that have labels: ``{"features", "y", "joined_ids", "refused",
    "missing"}`` (a classifier's labels must be class ids of ``spec``, a regressor's finite numbers)."""
    spec = spec or _default_spec()
    parts, ys, joined, refused, missing = [], [], [], [], []
    for rid, values in labels.items():
        req = requests.get(rid)
        if req is None:
            missing.append(rid)
            continue
        if len(values) != req["rows"]:
            refused.append(f"{rid}: {len(values)} labels for {req['rows']} rows")
            continue
        if spec.task != "regression" and not all(isinstance(v, int) and 0 <= v < spec.num_classes for v in values):
            refused.append(f"{rid}: labels outside the class ids [0, {spec.num_classes})")
            continue
        parts.append(req["features"])
        ys.append(np.asarray(values, np.float32 if spec.task == "regression" else np.int64))
        joined.append(rid)
    features = {name: (np.concatenate([p[name] for p in parts]) if parts else
                       np.zeros((0, *shape), object if dtype == "string" else dtype))
                for name, (dtype, shape) in spec.inputs.items()}
    y = np.concatenate(ys) if ys else np.zeros((0,), np.float32 if spec.task == "regression" else np.int64)
    return {"features": features, "y": y, "joined_ids": joined, "refused": refused, "missing": missing}


def join_feedback(log_prefix: str, root: str, dataset: str, spec=None, *, min_rows: int = 50,
                  test_fraction: float = 0.3, max_label_age_s: float = 7 * 24 * 3600, seed: int = 0) -> dict:
    """Join the label files of ``<root>/<dataset>/feedback/labels/`` with the request logs of
    ``log_prefix``, read by the model's ``spec`` (default: the default model module's); with at least
    ``min_rows`` labeled rows, write them as a new partition ``incoming/<id>/data.parquet`` in the
    module's Parquet layout (:func:`tfmlops.partitions.module_table`; ``test_fraction`` of the rows in ``test``).
    Returns the counts and, when written, ``partition_id`` and ``uri``."""
    if str(root).startswith("s3://") or str(log_prefix).startswith("s3://"):
        raise ValueError("the feedback join reads request logs and label files from local folders; "
                         f"s3:// is not supported here yet (root={root!r}, log prefix={log_prefix!r})")
    spec = spec or _default_spec()
    labels_dir = Path(dataset_path(root, dataset, "feedback", "labels"))
    done_dir = Path(dataset_path(root, dataset, "feedback", "joined"))
    files = sorted(labels_dir.glob("*.jsonl")) if labels_dir.is_dir() else []
    labels, problems, per_file = {}, [], {}
    for f in files:
        got, bad = read_labels(str(f), numeric=spec.task == "regression", class_names=spec.class_names)
        problems += bad
        labels.update(got)
        per_file[f] = got
    skipped: list[str] = []
    requests = read_request_logs(list_request_logs(log_prefix), spec, skipped)
    result = join(requests, labels, spec)
    summary = {"model_module": spec.module, "label_files": len(files), "labels": len(labels),
               "logged_requests": len(requests), "skipped_records": len(skipped), "joined_requests":
               len(result["joined_ids"]), "rows": int(len(result["y"])), "refused": result["refused"] + problems,
               "missing": len(result["missing"]), "partition_id": None}
    if skipped:
        log.warning("feedback join: %d logged records do not fit model module %s, e.g. %s", len(skipped),
                    spec.module, skipped[:3])
    if len(result["y"]) < max(2, min_rows):
        log.info("feedback join: %d labeled rows, fewer than %d: nothing written (%s)", len(result["y"]),
                 min_rows, summary)
        return summary
    order = np.random.default_rng(seed).permutation(len(result["y"]))
    n_test = max(1, int(round(len(order) * test_fraction)))
    partition_id = new_partition_id()
    features = {k: v[order] for k, v in result["features"].items()}
    uri = write_module_partition(root, dataset, partition_id, spec, features, result["y"][order],
                                 ["test"] * n_test + ["train"] * (len(order) - n_test))
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
