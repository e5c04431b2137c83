"""Sharded datasets, streamed: TFRecord (``tf.Example``) or Parquet shards, local or ``s3://``, read
with ``tf.data`` a few shards at a time — never materialised whole.

**Layouts** (a dataset URI, local or ``s3://``; one shard format per dataset):

- a folder with a sub-folder per split — ``train/``, ``validation/`` (optional), ``test/`` — of shards;
- a folder of ``<split>-*`` shards (``train-00000-of-00008.tfrecord``);
- a pattern with ``{split}`` (``s3://bucket/ds/{split}/*.parquet``);
- a folder of Parquet shards with a ``split`` column (each split read from every shard, filtered).

Shards are ``.tfrecord`` / ``.tfrecords`` (``.gz``: GZIP) files of ``tf.Example`` parsed with the
feature spec of the model module's ``INPUTS`` and ``LABEL``, or ``.parquet`` files with a column per
input (fixed shapes as list columns) and the label column.

**Memory** is bounded by what is open at a time, not by the dataset: ``cycle_length`` shards
interleaved, the ``shuffle_buffer`` rows, one batch being parsed, and for Parquet one row group per
open shard — a row group over ``max_row_group_bytes`` is refused with how to rewrite the file.

**S3**: TensorFlow 2.21 has no S3 filesystem of its own (tensorflow-io, which had one, is
unmaintained) and pyarrow's would need the credentials and endpoint taken out of the boto3 client
the S3 connection gives. So a shard on S3 is streamed by boto3 (``download_fileobj``, in chunks)
into a local temporary file, read there by TF's own TFRecord reader (CRC-checked) or by pyarrow,
and deleted once read: a few shards of local disk, no memory per dataset size.

**Lineage**: the dataset's fingerprint is its manifest — every shard's URI, size and version (the
S3 ETag, a local file's modification time) — hashed, not the data. :func:`shard_batches` names the
shard and the record of a corrupt or wrong-schema row; :func:`profile_split` profiles a split in one
pass with bounded memory (both read through :class:`tfmlops.model_data.StreamedSplit`).
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import tempfile
import weakref
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfmlops.data import DatasetError
from tfmlops.modelspec import ModelSpec
from tfmlops.storage import split_s3_uri

SPLITS = ("train", "validation", "test")
TFRECORD = (".tfrecord", ".tfrecords", ".tfrecord.gz", ".tfrecords.gz")
PARQUET = (".parquet",)
DEFAULT_MAX_ROW_GROUP_BYTES = 256 << 20
SCAN_BATCH = 1024


@dataclass(frozen=True)
class Shard:
    uri: str
    size: int
    version: str  # the S3 ETag, or a local file's modification time (ns)


@dataclass
class Layout:
    """Where a sharded dataset's splits are: its shards per split, their format, and whether the
    splits are a ``split`` column (then every split lists every shard)."""

    source: str
    format: str  # "tfrecord" | "parquet"
    splits: dict[str, list[Shard]]
    split_column: bool = False

    def fingerprint(self) -> str:
        """SHA-256 of the manifest (shard URIs, sizes, versions per split): the dataset's identity."""
        manifest = {s: [asdict(x) for x in shards] for s, shards in sorted(self.splits.items())}
        return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()

    def manifest(self) -> dict:
        return {"source": self.source, "format": self.format, "split_column": self.split_column,
                "fingerprint": self.fingerprint(),
                "splits": {s: [asdict(x) for x in shards] for s, shards in self.splits.items()}}


def _format_of(name: str) -> str | None:
    lower = name.lower()
    return "tfrecord" if lower.endswith(TFRECORD) else "parquet" if lower.endswith(PARQUET) else None


def _list(pattern: str, s3_client) -> list[Shard]:
    """Shards matching a glob pattern (``*`` within a name; a folder matched lists its files)."""
    if pattern.startswith("s3://"):
        bucket, key_pattern = split_s3_uri(pattern)
        prefix = key_pattern.split("*")[0].split("?")[0].split("[")[0]
        out = []
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if fnmatch.fnmatch(key, key_pattern) or fnmatch.fnmatch(key, key_pattern.rstrip("/") + "/*"):
                    out.append(Shard(f"s3://{bucket}/{key}", int(obj["Size"]), obj.get("ETag", "").strip('"')))
        return sorted(out, key=lambda s: s.uri)
    paths = []
    for path in sorted(glob.glob(pattern)):
        paths.extend(sorted(str(p) for p in Path(path).iterdir() if p.is_file()) if os.path.isdir(path) else [path])
    return [Shard(p, (st := os.stat(p)).st_size, str(st.st_mtime_ns)) for p in paths]


def discover(uri: str, s3_client=None) -> Layout:
    """The layout of the sharded dataset at ``uri``; a clear error when it has no train or test shards,
    mixes formats or holds files of neither format."""
    if uri.startswith("s3://"):
        from tfmlops.storage import s3

        s3_client = s3(s3_client)
    base = uri.rstrip("/")
    candidates = ([uri.replace("{split}", s) for s in SPLITS] if "{split}" in uri else
                  [f"{base}/{s}/*" for s in SPLITS])
    splits = {s: _list(p, s3_client) for s, p in zip(SPLITS, candidates)}
    if "{split}" not in uri and not any(splits.values()):  # <split>-* files, or shards with a split column
        splits = {s: _list(f"{base}/{s}-*", s3_client) for s in SPLITS}
        if not any(splits.values()):
            everything = _list(f"{base}/*", s3_client)
            if everything and all(_format_of(x.uri) == "parquet" for x in everything):
                return Layout(uri, "parquet", {s: everything for s in SPLITS}, split_column=True)
    splits = {s: shards for s, shards in splits.items() if shards}
    formats = {_format_of(x.uri) for shards in splits.values() for x in shards}
    if None in formats:
        odd = next(x.uri for shards in splits.values() for x in shards if _format_of(x.uri) is None)
        raise DatasetError(f"{uri}: {odd} is neither a TFRecord ({', '.join(TFRECORD)}) nor a Parquet shard")
    if len(formats) > 1:
        raise DatasetError(f"{uri}: mixes TFRecord and Parquet shards; a dataset has one format")
    for need in ("train", "test"):
        if need not in splits:
            raise DatasetError(f"{uri}: no {need} shards (expected {need}/ or {need}-* shards, a {{split}} "
                               "pattern, or Parquet shards with a 'split' column)")
    return Layout(uri, formats.pop(), splits)


# ------------------------------------------------------------------------------------------- reading
class _Fetched:
    """A shard as a local path: itself, or an S3 object streamed into a temporary file deleted on exit."""

    def __init__(self, shard: Shard, s3_client):
        self.shard, self.s3_client, self.tmp = shard, s3_client, None

    def __enter__(self) -> str:
        if not self.shard.uri.startswith("s3://"):
            return self.shard.uri
        bucket, key = split_s3_uri(self.shard.uri)
        suffix = ".gz" if key.endswith(".gz") else ""
        fd, self.tmp = tempfile.mkstemp(prefix="tfmlops-shard-", suffix=suffix)
        with os.fdopen(fd, "wb") as f:
            self.s3_client.download_fileobj(bucket, key, f)
        return self.tmp

    def __exit__(self, *exc) -> None:
        if self.tmp:
            Path(self.tmp).unlink(missing_ok=True)


class _Fetcher:
    """S3 shards fetched into temporary files for TF's own reader; what a reader left (an error, an
    iterator dropped half-way) is deleted when the dataset is."""

    def __init__(self, s3_client):
        self.s3_client, self.left = s3_client, set()
        weakref.finalize(self, _unlink_all, self.left)

    def fetch(self, uri) -> bytes:
        uri = uri.numpy().decode()
        bucket, key = split_s3_uri(uri)
        fd, path = tempfile.mkstemp(prefix="tfmlops-shard-", suffix=".gz" if key.endswith(".gz") else "")
        self.left.add(path)
        with os.fdopen(fd, "wb") as f:
            self.s3_client.download_fileobj(bucket, key, f)
        return path.encode()

    def done(self, path) -> bytes:
        path = path.numpy().decode()
        Path(path).unlink(missing_ok=True)
        self.left.discard(path)
        return b""


def _unlink_all(paths: set) -> None:
    for path in list(paths):
        Path(path).unlink(missing_ok=True)


def _fetched_records(tf, fetcher: _Fetcher, compression):
    """A shard URI → its records, read from a fetched copy that is deleted once the last record is
    read (an empty element, filtered out, runs the deletion after the shard's records)."""
    def read(uri):
        path = tf.py_function(fetcher.fetch, [uri], tf.string)
        path.set_shape([])
        cleanup = tf.data.Dataset.from_tensors(path).map(
            lambda p: tf.ensure_shape(tf.py_function(fetcher.done, [p], tf.string), []))  # records are scalars
        return tf.data.TFRecordDataset(path, compression_type=compression).concatenate(
            cleanup.filter(lambda _: False))

    return read


def _feature_spec(tf, spec: ModelSpec) -> dict:
    features = {name: tf.io.FixedLenFeature(shape, tf.string if dtype == "string" else getattr(tf, dtype))
                for name, (dtype, shape) in spec.inputs.items()}
    features[spec.label] = tf.io.FixedLenFeature([], tf.float32 if spec.task == "regression" else tf.int64)
    return features


def _parquet_batches(spec: ModelSpec, path: str, name: str, split: str | None, max_row_group_bytes: int):
    """(features, labels) NumPy batches of a Parquet shard, one row group at a time."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise DatasetError(f"{name}: not a readable Parquet shard ({exc})") from exc
    columns = [*spec.inputs, spec.label] + (["split"] if split else [])
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
        raise DatasetError(f"{name}: missing columns {missing}; model module {spec.module!r} reads one column per "
                           f"input {sorted(spec.inputs)}, the label {spec.label!r}" + (" and 'split'" if split else ""))
    offset = 0
    for i in range(pf.num_row_groups):
        size = pf.metadata.row_group(i).total_byte_size
        if size > max_row_group_bytes:
            raise DatasetError(f"{name}: row group {i} is {size / 2**20:.0f} MiB, over the "
                               f"{max_row_group_bytes / 2**20:.0f} MiB a reader holds at once; rewrite the shard "
                               "with smaller row groups, e.g. pyarrow.parquet.write_table(table, path, "
                               "row_group_size=50_000)")
        table = pf.read_row_group(i, columns=columns)
        n = table.num_rows
        keep = None if not split else np.asarray(table.column("split").to_pylist(), dtype=object) == split
        features = {}
        for key, (dtype, shape) in spec.inputs.items():
            column = table.column(key)
            if shape:
                values = column.combine_chunks()
                try:
                    for _ in shape:  # a list column per dimension of the input's shape
                        values = values.flatten()
                except (AttributeError, NotImplementedError) as exc:
                    raise DatasetError(f"{name}: column {key!r} is not a list column of shape {list(shape)} "
                                       f"(input {key!r}); it is {column.type}") from exc
                values = values.to_numpy(zero_copy_only=False)
                size_per_row = int(np.prod(shape))
                if values.size != n * size_per_row:
                    raise DatasetError(f"{name}: column {key!r} rows near record {offset} do not hold {size_per_row} "
                                       f"values each (input {key!r} has the fixed shape {list(shape)})")
                values = values.reshape((n, *shape))
            else:
                values = column.to_numpy(zero_copy_only=False)
            features[key] = values.astype(object) if dtype == "string" else values
        labels = table.column(spec.label).to_numpy(zero_copy_only=False)
        if keep is not None:
            features, labels = {k: v[keep] for k, v in features.items()}, labels[keep]
        yield offset, features, labels
        offset += n


def tfrecord_batches(tf, spec: ModelSpec, path: str, name: str, batch: int = SCAN_BATCH):
    """(offset, features, labels) NumPy batches of a TFRecord shard, parsed with the module's spec;
    a corrupt or wrong-schema record is named by shard and record offset."""
    features_spec = _feature_spec(tf, spec)
    compression = "GZIP" if path.endswith(".gz") else None
    offset = 0
    try:
        for serialized in tf.data.TFRecordDataset(path, compression_type=compression).batch(batch):
            parsed = {k: v.numpy() for k, v in tf.io.parse_example(serialized, features_spec).items()}
            labels = parsed.pop(spec.label)
            yield offset, parsed, labels
            offset += int(serialized.shape[0])
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as exc:
        message = exc.message.splitlines()[0] if exc.message else type(exc).__name__
        raise DatasetError(f"{name}: cannot read tf.Example records for model module {spec.module!r} near "
                           f"record {offset}: {message}") from exc


def shard_batches(spec: ModelSpec, layout: Layout, split: str, s3_client=None,
                  max_row_group_bytes: int = DEFAULT_MAX_ROW_GROUP_BYTES):
    """Every (shard, offset, features, labels) batch of ``split``, shard after shard in manifest order
    (what validation, profiles and samples read: :meth:`tfmlops.model_data.StreamedSplit.batches`;
    training reads through :func:`dataset`)."""
    shards = layout.splits.get(split, [])
    tf = None
    if layout.format == "tfrecord":
        import tensorflow as tf
    for shard in shards:
        with _Fetched(shard, s3_client) as path:
            batches = (tfrecord_batches(tf, spec, path, shard.uri) if tf is not None else
                       _parquet_batches(spec, path, shard.uri, split if layout.split_column else None,
                                        max_row_group_bytes))
            for offset, features, labels in batches:
                yield shard, offset, features, labels


def dataset(spec: ModelSpec, layout: Layout, split: str, *, batch_size: int, shuffle_buffer: int = 10_000,
            seed: int = 0, cycle_length: int = 4, s3_client=None, repeat: bool = False,
            max_row_group_bytes: int = DEFAULT_MAX_ROW_GROUP_BYTES):
    """``split`` as a batched ``tf.data.Dataset`` of ``(features, labels)``: shard order shuffled per
    epoch (seeded; ``shuffle_buffer=0``: nothing shuffled, the same order every time), ``cycle_length`` shards
    interleaved, rows shuffled within ``shuffle_buffer``, parsed in parallel, prefetched. TFRecord
    shards go through TF's own reader (S3 ones once fetched into a temporary file, deleted as soon
    as the shard is read: ``cycle_length`` shards of local disk); Parquet shards through a per-shard
    generator of row groups."""
    import tensorflow as tf

    shards = layout.splits.get(split, [])
    if not shards:
        raise DatasetError(f"{layout.source}: no {split} shards")
    shuffle = shuffle_buffer > 0
    uris = tf.data.Dataset.from_tensor_slices([s.uri for s in shards])
    if shuffle:
        uris = uris.shuffle(len(shards), seed=seed, reshuffle_each_iteration=True)
    cycle = max(1, min(cycle_length, len(shards)))
    if layout.format == "tfrecord":
        compression = "GZIP" if shards[0].uri.endswith(".gz") else None
        read = (lambda p: tf.data.TFRecordDataset(p, compression_type=compression)) if not \
            layout.source.startswith("s3://") else _fetched_records(tf, _Fetcher(s3_client), compression)
        records = uris.interleave(read, cycle_length=cycle, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if shuffle:
            records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            records = records.repeat()
        features_spec = _feature_spec(tf, spec)

        def parse(serialized):
            parsed = tf.io.parse_example(serialized, features_spec)
            return {k: parsed[k] for k in spec.inputs}, parsed[spec.label]

        return records.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    by_uri = {s.uri: s for s in shards}

    def batches(uri):
        shard = by_uri[uri.decode() if isinstance(uri, bytes) else uri]
        one = Layout(layout.source, layout.format, {split: [shard]}, layout.split_column)
        for _, _, features, labels in shard_batches(spec, one, split, s3_client, max_row_group_bytes):
            yield ({k: _as(features[k], spec.inputs[k][0]) for k in spec.inputs},
                   labels.astype(np.float32 if spec.task == "regression" else np.int64))

    element = signature(tf, spec)
    rows = uris.interleave(lambda u: tf.data.Dataset.from_generator(batches, output_signature=element, args=(u,)),
                           cycle_length=cycle, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
    if shuffle:
        rows = rows.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        rows = rows.repeat()
    return rows.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def signature(tf, spec: ModelSpec):
    """The ``tf.data`` element spec of validated batches of ``spec``'s inputs and label."""
    label_dtype = tf.float32 if spec.task == "regression" else tf.int64
    return ({k: tf.TensorSpec((None, *shape), tf.string if dtype == "string" else getattr(tf, dtype))
             for k, (dtype, shape) in spec.inputs.items()}, tf.TensorSpec((None,), label_dtype))


def _as(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "string":
        return np.asarray([v.encode() if isinstance(v, str) else v for v in values.reshape(-1)],
                          dtype=object).reshape(values.shape)
    return values.astype(np.float32 if dtype == "float32" else np.int64)


# ------------------------------------------------------------------------------- validation + profile
@dataclass
class _Numeric:
    """Count, mean, std, min, max (merged batch by batch: Chan et al.) and a fixed-size reservoir
    of values for quantiles (seeded; error ~1/sqrt(size) in rank)."""

    size: int
    rng: np.random.Generator
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    low: float = float("inf")
    high: float = float("-inf")
    seen: int = 0
    reservoir: list = field(default_factory=list)

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if not v.size:
            return
        n, mean = v.size, float(v.mean())
        delta = mean - self.mean
        total = self.count + n
        self.m2 += float(((v - mean) ** 2).sum()) + delta ** 2 * self.count * n / total
        self.mean += delta * n / total
        self.count = total
        self.low, self.high = min(self.low, float(v.min())), max(self.high, float(v.max()))
        sample = v if v.size <= self.size else self.rng.choice(v, self.size, replace=False)
        for x in sample:  # reservoir sampling (Vitter's R) over the batch's sample
            self.seen += 1
            if len(self.reservoir) < self.size:
                self.reservoir.append(float(x))
            else:
                j = int(self.rng.integers(0, self.seen))
                if j < self.size:
                    self.reservoir[j] = float(x)

    def summary(self) -> dict:
        q = np.quantile(self.reservoir, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]).tolist() if self.reservoir else []
        return {"kind": "numeric", "count": self.count, "mean": self.mean,
                "std": float(np.sqrt(self.m2 / self.count)) if self.count else 0.0,
                "min": self.low if self.count else None, "max": self.high if self.count else None,
                "quantiles": dict(zip(["p01", "p05", "p25", "p50", "p75", "p95", "p99"], q))}


@dataclass
class _Categorical:
    """Frequencies of up to ``limit`` distinct values; the rest counted as ``other``."""

    limit: int
    counts: Counter = field(default_factory=Counter)
    other: int = 0
    count: int = 0

    def add(self, values: np.ndarray) -> None:
        for v in np.asarray(values, dtype=object).reshape(-1):
            key = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            self.count += 1
            if key in self.counts or len(self.counts) < self.limit:
                self.counts[key] += 1
            else:
                self.other += 1

    def summary(self) -> dict:
        return {"kind": "categorical", "count": self.count, "distinct_kept": len(self.counts), "other": self.other,
                "top": self.counts.most_common(20)}


def profile_split(spec: ModelSpec, batches, rng: np.random.Generator, reservoir: int = 10_000,
                  max_categories: int = 1_000) -> dict:
    """One split's profile from its validated batches (:class:`tfmlops.model_data.Split` s), in one
    pass: rows, per-input statistics (numeric: count, mean, std, min, max, quantiles from a
    reservoir; strings: frequencies of the first ``max_categories`` values) and the label's (class
    counts, or numeric). Memory: one batch plus the reservoirs and counters."""
    stats = {k: (_Categorical(max_categories) if dtype == "string" else _Numeric(reservoir, rng))
             for k, (dtype, _) in spec.inputs.items()}
    label = _Numeric(reservoir, rng) if spec.task == "regression" else None
    classes = np.zeros(spec.num_classes, dtype=np.int64) if spec.task != "regression" else None
    rows = 0
    for batch in batches:
        for k, s in stats.items():
            s.add(batch.features[k])
        if label is not None:
            label.add(batch.labels)
        else:
            classes += np.bincount(batch.labels, minlength=spec.num_classes)
        rows += len(batch.labels)
    return {"rows": rows, "features": {k: s.summary() for k, s in stats.items()},
            "label": label.summary() if label is not None else {"kind": "classes", "counts": classes.tolist()}}


# ------------------------------------------------------------------------------------------- writing
def _example(tf, spec: ModelSpec, features: dict, label, i: int) -> bytes:
    feature = {}
    for k, (dtype, _) in spec.inputs.items():
        v = np.asarray(features[k][i]).reshape(-1)
        if dtype == "string":
            feature[k] = tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[x.encode() if isinstance(x, str) else x for x in v]))
        elif dtype == "int64":
            feature[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=v.astype(np.int64)))
        else:
            feature[k] = tf.train.Feature(float_list=tf.train.FloatList(value=v.astype(np.float32)))
    y = label[i]
    feature[spec.label] = (tf.train.Feature(float_list=tf.train.FloatList(value=[float(y)]))
                           if spec.task == "regression" else
                           tf.train.Feature(int64_list=tf.train.Int64List(value=[int(y)])))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shards(spec: ModelSpec, folder: str | Path, split: str, batches, fmt: str = "tfrecord",
                 rows_per_shard: int = 10_000, row_group_size: int = 5_000) -> list[Path]:
    """``batches`` of ``(features, labels)`` NumPy arrays written as ``<folder>/<split>/part-NNNNN``
    shards of ``rows_per_shard`` rows (TFRecord of tf.Example, or Parquet with list columns for
    fixed shapes and row groups of ``row_group_size``); memory: one shard's rows."""
    out = Path(folder) / split
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    pending: list[tuple[dict, np.ndarray]] = []
    rows = 0

    def flush():
        nonlocal pending, rows
        if not rows:
            return
        features = {k: np.concatenate([f[k] for f, _ in pending]) for k in spec.inputs}
        labels = np.concatenate([y for _, y in pending])
        path = out / f"part-{len(written):05d}.{'tfrecord' if fmt == 'tfrecord' else 'parquet'}"
        tmp = path.with_name(f".{path.name}.tmp")
        if fmt == "tfrecord":
            import tensorflow as tf

            with tf.io.TFRecordWriter(str(tmp)) as w:
                for i in range(len(labels)):
                    w.write(_example(tf, spec, features, labels, i))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            columns = {}
            for k, (dtype, shape) in spec.inputs.items():
                x = features[k]
                if shape:
                    column = pa.array(x.reshape(-1).tolist() if dtype == "string" else
                                      x.reshape(-1).astype(np.float32 if dtype == "float32" else np.int64))
                    for dim in reversed(shape):  # a fixed-size list column per dimension
                        column = pa.FixedSizeListArray.from_arrays(column, int(dim))
                    columns[k] = column
                else:
                    columns[k] = pa.array(x.tolist() if dtype == "string" else x)
            columns[spec.label] = pa.array(labels)
            pq.write_table(pa.table(columns), tmp, row_group_size=row_group_size)
        os.replace(tmp, path)
        written.append(path)
        pending, rows = [], 0

    for features, labels in batches:
        start = 0
        while start < len(labels):
            take = min(rows_per_shard - rows, len(labels) - start)
            pending.append(({k: np.asarray(features[k])[start:start + take] for k in spec.inputs},
                            np.asarray(labels)[start:start + take]))
            rows += take
            start += take
            if rows == rows_per_shard:
                flush()
    flush()
    return written
