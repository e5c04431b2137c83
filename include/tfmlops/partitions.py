"""New labeled data partitions: where they live, validation, quarantine and the ledger.

Layout under a partitions root (local folder or ``s3://bucket/prefix``), per dataset::

    <root>/<dataset>/incoming/<partition-id>/data.npz      (or data.parquet) new labeled data
    <root>/<dataset>/quarantine/<partition-id>/...         a bad partition, moved, + reason.json
    <root>/<dataset>/ledger.json                            consumed partitions → run, version

- :func:`ingest` validates every new partition with the training-data checks
  (:func:`tfmlops.data.load_validated`); a bad one is moved to ``quarantine/`` with its reason,
  without blocking the good ones; partitions already in the ledger are skipped.

The fine-tuning on new partitions is the step :func:`tfmlops.steps.online.update`.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from tfmlops import data
from tfmlops.storage import checked_name, list_s3_keys, read_bytes, s3, split_s3_uri, write_bytes

log = logging.getLogger(__name__)

PARTITION_FILES = ("data.npz", "data.parquet")
LEDGER = "ledger.json"
REASON = "reason.json"


# ------------------------------------------------------------------------------ storage layout
def _join(*parts: str) -> str:
    return "/".join([str(parts[0]).rstrip("/"), *[p.strip("/") for p in parts[1:]]])


def dataset_path(root: str, dataset: str, *parts: str) -> str:
    """``<root>/<dataset>/<parts...>``; the dataset name must be one path segment (checked)."""
    return _join(root, checked_name(dataset, "dataset"), *parts)


def partition_uri(root: str, dataset: str, partition_id: str) -> str:
    return dataset_path(root, dataset, "incoming", checked_name(partition_id, "partition id"), "data.npz")


def new_partition_id(seed: int | None = None) -> str:
    """Sortable by creation time: ``p20261125T220700-<suffix>``."""
    suffix = f"{seed:06d}" if seed is not None else f"{np.random.default_rng().integers(1_000_000):06d}"
    return time.strftime("p%Y%m%dT%H%M%S", time.gmtime()) + f"-{suffix}"


def write_partition(root: str, dataset: str, partition_id: str, arrays: dict[str, np.ndarray],
                    s3_client=None) -> str:
    """``<root>/<dataset>/incoming/<partition-id>/data.npz`` with ``arrays`` (compressed)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    uri = partition_uri(root, dataset, partition_id)
    write_bytes(uri, buffer.getvalue(), s3_client=s3_client)
    return uri


def module_table(spec, features: dict[str, np.ndarray], labels: np.ndarray, splits: list[str]):
    """A pyarrow Table in the default Parquet layout of a model module's data (the one
    :func:`tfmlops.model_data.load` reads): one column per input (a fixed-size list of its values,
    row-major, for a shaped input; UTF-8 text for strings), the label column and ``split``."""
    import pyarrow as pa

    columns = {}
    for name, (dtype, shape) in spec.inputs.items():
        flat = np.asarray(features[name]).reshape(len(labels), -1)
        if dtype == "string":
            leaves = pa.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                               for v in flat.reshape(-1).tolist()], pa.string())
        else:
            leaves = pa.array(flat.reshape(-1).astype(dtype))
        columns[name] = pa.FixedSizeListArray.from_arrays(leaves, flat.shape[1]) if shape else leaves
    columns[spec.label] = pa.array(np.asarray(labels))
    columns["split"] = pa.array(list(splits), pa.string())
    return pa.table(columns)


def write_module_partition(root: str, dataset: str, partition_id: str, spec, features: dict[str, np.ndarray],
                           labels: np.ndarray, splits: list[str], s3_client=None) -> str:
    """``<root>/<dataset>/incoming/<partition-id>/data.parquet`` in a model module's layout (:func:`module_table`)."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(module_table(spec, features, labels, splits), buffer)
    uri = dataset_path(root, dataset, "incoming", checked_name(partition_id, "partition id"), "data.parquet")
    write_bytes(uri, buffer.getvalue(), s3_client=s3_client)
    return uri


def _list_keys(uri_prefix: str, s3_client) -> list[str]:
    bucket, prefix = split_s3_uri(uri_prefix)
    return list(list_s3_keys(s3(s3_client), bucket, prefix.rstrip("/") + "/"))


def list_partitions(root: str, dataset: str, area: str = "incoming", s3_client=None) -> dict[str, str]:
    """``{partition_id: data file URI}`` of the partitions in ``incoming`` (or ``quarantine``), sorted by id."""
    base = dataset_path(root, dataset, area)
    found: dict[str, str] = {}
    if base.startswith("s3://"):
        bucket, prefix = split_s3_uri(base)
        for key in _list_keys(base, s3_client):
            rest = key[len(prefix.rstrip("/")) + 1:].split("/")
            if len(rest) == 2 and rest[1] in PARTITION_FILES:
                found.setdefault(rest[0], f"s3://{bucket}/{key}")
    elif Path(base).is_dir():
        for folder in Path(base).iterdir():
            for name in PARTITION_FILES:
                if (folder / name).is_file():
                    found[folder.name] = str(folder / name)
                    break
    return dict(sorted(found.items()))


def read_ledger(root: str, dataset: str, s3_client=None) -> dict:
    try:
        return json.loads(read_bytes(dataset_path(root, dataset, LEDGER), s3_client=s3_client))
    except FileNotFoundError:
        return {"partitions": {}}


def write_ledger(root: str, dataset: str, ledger: dict, s3_client=None) -> None:
    write_bytes(dataset_path(root, dataset, LEDGER), json.dumps(ledger, indent=1, sort_keys=True).encode(),
                s3_client=s3_client)


def quarantine(root: str, dataset: str, partition_id: str, reason: str, s3_client=None) -> str:
    """Move ``incoming/<id>/`` to ``quarantine/<id>/`` and write ``reason.json`` there."""
    checked_name(partition_id, "partition id")
    src = dataset_path(root, dataset, "incoming", partition_id)
    dst = dataset_path(root, dataset, "quarantine", partition_id)
    if src.startswith("s3://"):
        client = s3(s3_client)
        bucket, src_prefix = split_s3_uri(src)
        _, dst_prefix = split_s3_uri(dst)
        for key in _list_keys(src, client):
            new_key = dst_prefix + key[len(src_prefix):]
            client.copy_object(Bucket=bucket, Key=new_key, CopySource={"Bucket": bucket, "Key": key})
            client.delete_object(Bucket=bucket, Key=key)
    else:
        target = Path(dst)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, target)
    record = {"partition_id": partition_id, "dataset": dataset, "reason": reason,
              "quarantined_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_bytes(_join(dst, REASON), json.dumps(record, indent=1).encode(), s3_client=s3_client)
    log.warning("quarantined partition %s of %s: %s", partition_id, dataset, reason)
    return dst


# ------------------------------------------------------------------------------------- ingest
def module_validate(spec, module, s3_client=None):
    """``validate(uri)`` for :func:`ingest`: the partition read by the model module's loader and
    checked against its spec (names, dtypes, shapes, labels, NaN) like training data."""
    from tfmlops import model_data

    return lambda uri: model_data.load(spec, module, uri, s3_client=s3_client)[1]


def _default_validate(s3_client=None):
    """The default module's one input (the MNIST example) checked by :func:`tfmlops.data.load_validated`."""
    from tfmlops import modelspec

    spec = modelspec.read_spec(modelspec.DEFAULT_MODULE)
    (_, shape), = spec.inputs.values()
    return lambda uri: data.load_validated(uri, int(np.prod(shape)), spec.num_classes, s3_client=s3_client)[1]


def ingest(root: str, dataset: str, partition_ids: list[str] | None = None, s3_client=None, validate=None) -> dict:
    """Validate new partitions (all unconsumed ones when ``partition_ids`` is empty) with
    ``validate(uri) -> report`` (``train_rows``, ``test_rows``, ``fingerprint``; raises
    :class:`~tfmlops.data.DatasetError` for a bad partition): a model module's loader and checks
    (:func:`tfmlops.steps.online.ingest` passes the champion's), by default the default module's.

    Returns ``valid`` (id, uri, rows, fingerprint), ``quarantined`` (id, reason), ``consumed``
    (ids already in the ledger: skipped) and ``missing`` (requested ids that are not there)."""
    ledger = read_ledger(root, dataset, s3_client)["partitions"]
    available = list_partitions(root, dataset, s3_client=s3_client)
    wanted = list(partition_ids) if partition_ids else list(available)
    result: dict[str, list] = {"valid": [], "quarantined": [], "consumed": [], "missing": []}
    for pid in wanted:
        if pid in ledger:
            result["consumed"].append(pid)
        elif pid not in available:
            result["missing"].append(pid)
        else:
            try:
                report = (validate or _default_validate(s3_client))(available[pid])
            except data.DatasetError as exc:
                quarantine(root, dataset, pid, str(exc), s3_client)
                result["quarantined"].append({"partition_id": pid, "reason": str(exc)})
                continue
            result["valid"].append({"partition_id": pid, "uri": available[pid], "train_rows": report["train_rows"],
                                    "test_rows": report["test_rows"], "fingerprint": report["fingerprint"]})
    log.info("ingest %s: %d valid, %d quarantined, %d already consumed, %d missing", dataset, len(result["valid"]),
             len(result["quarantined"]), len(result["consumed"]), len(result["missing"]))
    return result
