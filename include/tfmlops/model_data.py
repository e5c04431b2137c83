"""A model module's data: its ``train`` / ``validation`` / ``test`` splits as named feature arrays,
read through the module's ``load_data`` or the platform's default loaders, and checked against
its :class:`~tfmlops.modelspec.ModelSpec` before anything trains on them.

Default loaders (when the module has no ``load_data``), by dataset URI (local path or ``s3://``;
a relative path is looked up under the data folder, ``TFMLOPS_DATA_DIR``, default ``data/``):

- ``mnist`` and ``.npz`` (``x_train``/``y_train``/``x_test``/``y_test``) — the project's built-in
  formats, for a module with one input (rows are reshaped to its shape; uint8 pixels scaled to [0, 1]);
- ``.parquet`` — one column per input (fixed-shape inputs as list columns), the ``LABEL`` column and
  a ``split`` column (``train``/``validation``/``test``); a module with one input may instead
  have one numeric column per value and a ``label`` column (the project's flat format);
- shards (:mod:`tfmlops.shards`): TFRecord files of ``tf.Example`` (parsed with the feature spec
  the module's ``INPUTS`` and ``LABEL`` give) or Parquet files — a pattern with ``{split}``
  (``s3://b/d/{split}-*.tfrecord``), or a folder holding ``<split>/`` folders or ``<split>-*`` files
  (Parquet shards may instead carry a ``split`` column).

A missing validation split is carved from train: its last ``validation_split`` share (as Keras'
``fit(validation_split=...)`` does; not a seeded random carve, which would change the MNIST
example's numbers: a deviation in the README). The test split is used only by evaluation and the gate.

**Streamed datasets.** A sharded layout (:mod:`tfmlops.shards`: a folder or ``{split}`` pattern of
TFRecord or Parquet shards) of at least ``TFMLOPS_STREAM_MIN_MB`` (default 256 MiB) is not loaded:
:func:`load` gives :class:`StreamedSplit` s that read it with ``tf.data`` a few shards at a time
(training), batch by batch (predictions, profiles) or its first rows (smoke/warmup). Smaller ones
load into memory (NumPy), the faster path for data that fits, with the exact carve and sampling
above. Streamed, the validation split is carved and a ``sample_fraction`` taken **by shard** (the
last ``validation_split`` share of the train shards; a seeded share of each split's shards), the
test/train overlap is not checked (it would hold a hash per row), and the fingerprint is the
shards' manifest (URI, size, ETag or modification time).

A module's ``load_data`` may return an unbatched ``tf.data.Dataset`` per split: it is read into
memory unless it holds ``TFMLOPS_STREAM_MIN_MB`` of arrays or more, in which case the whole
dataset streams (:class:`ModuleSplit`: the module's pipeline is read batch by batch each time a
step needs it). Rows are then picked **by their index**: a ``sample_fraction`` keeps that share of
every split evenly spaced (its phase from the seed), and a carved validation split is every
``1/validation_split``-th row of train (evenly spaced rather than the last share: the length is
not known before a full pass). The fingerprint is the module file's SHA-256 with the URI, the
splits' element specs and the picks: it names the code that reads the data, not the bytes it reads
(the profile's row counts and statistics, logged with the run, describe those).

No TensorFlow import except in the TFRecord loader and for a ``tf.data`` result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfmlops import data as builtin
from tfmlops import sample_cache, shards
from tfmlops.data import DatasetError
from tfmlops.modelspec import ModelModuleError, ModelSpec
from tfmlops.storage import read_bytes

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
MAX_ROWS = 5_000_000  # a split larger than this is refused (memory), until datasets stream


@dataclass
class Split:
    features: dict[str, np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows) -> "Split":
        return Split({k: v[rows] for k, v in self.features.items()}, self.labels[rows])

    def head(self, n: int) -> "Split":
        return self.take(slice(0, n))


@dataclass
class ModelData:
    source: str
    train: Split
    validation: Split
    test: Split
    validation_carved: bool = False

    def fingerprint(self) -> str:
        """SHA-256 over the arrays (after loading and sampling): the dataset's identity in lineage tags.
        For one input with a carved validation split this is the fingerprint :mod:`tfmlops.data` gave
        the same rows (train, labels, test, labels)."""
        digest = hashlib.sha256()
        splits = [self.train, self.test] if self.validation_carved else [self.train, self.validation, self.test]
        if self.validation_carved:
            splits[0] = concatenate([self.train, self.validation])
        for split in splits:
            for array in [*(split.features[k] for k in sorted(split.features)), split.labels]:
                digest.update(str(array.shape).encode())
                if array.dtype == object:
                    for value in array.reshape(-1):
                        digest.update(len(value).to_bytes(4, "little") + value)
                else:
                    digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


class StreamedSplit:
    """A split read batch by batch, never whole: :meth:`dataset` (``tf.data``, for training),
    :meth:`batches` (validated NumPy batches in reading order), :meth:`head` (its first rows). From
    shards (:class:`ShardSplit`) or from a model module's ``tf.data.Dataset`` (:class:`ModuleSplit`)."""

    spec: ModelSpec
    name: str
    source: str

    def batches(self):  # pragma: no cover - each kind reads its own way
        raise NotImplementedError

    def dataset(self, batch_size: int, seed: int | None = None):  # pragma: no cover
        raise NotImplementedError

    def head(self, n: int) -> Split:
        got, rows = [], 0
        for _, batch in self.batches():
            got.append(batch.head(n - rows))
            rows += len(got[-1])
            if rows >= n:
                break
        if not got:
            raise DatasetError(f"{self.source}: the {self.name} split is empty")
        return concatenate(got)

    def _in_memory(self, *_):
        raise DatasetError(f"{self.source}: the {self.name} split streams (a dataset of "
                           f"{stream_min_bytes() / 2**20:g} MiB or more); this step reads splits in memory and does "
                           "not stream yet: use a smaller dataset or sample_fraction")

    # what only a split in memory has: a step that would load the split whole says so
    features = labels = property(_in_memory)
    __len__ = take = _in_memory


@dataclass
class ShardSplit(StreamedSplit):
    """A split read from its shards (:mod:`tfmlops.shards`)."""

    spec: ModelSpec
    layout: shards.Layout  # this split's shards under the name ``name``
    name: str
    s3_client: object = None
    max_row_group_bytes: int = shards.DEFAULT_MAX_ROW_GROUP_BYTES  # a larger Parquet row group is refused

    @property
    def source(self) -> str:
        return self.layout.source

    def batches(self):
        """(where, validated batch) in manifest order, each checked (:func:`validate_split`; an error
        names the shard and the record offset): memory of one batch."""
        for shard, offset, features, labels in shards.shard_batches(self.spec, self.layout, self.name, self.s3_client,
                                                                    self.max_row_group_bytes):
            if len(labels):
                where = f"{shard.uri} (records {offset}..{offset + len(labels) - 1})"
                yield where, validate_split(self.spec, where, self.name, Split(features, labels))

    def dataset(self, batch_size: int, seed: int | None = None):
        """Batched ``(features, labels)``; shuffled (shards and a 10 000-row buffer) when ``seed`` is given."""
        return shards.dataset(self.spec, self.layout, self.name, batch_size=batch_size,
                              shuffle_buffer=0 if seed is None else 10_000, seed=seed or 0, s3_client=self.s3_client)


@dataclass
class ModuleSplit(StreamedSplit):
    """A split of a model module's ``load_data`` result (an unbatched ``tf.data.Dataset`` of
    ``(features, label)``), read batch by batch every time it is needed — never whole. ``picks``
    select rows by their index, one after the other (a ``sample_fraction``, then the validation
    carve): ``(share, phase, selected)`` keeps row ``i`` when ``floor((i+1)*share + phase) >
    floor(i*share + phase)`` (evenly spaced, ``share`` of the rows) equals ``selected``."""

    spec: ModelSpec
    name: str
    source: str
    rows: object  # the module's tf.data.Dataset
    picks: tuple = ()

    def batches(self):
        """(where, validated batch) in reading order: what the module's dataset yields, checked
        (:func:`validate_split`; an error names the module, the split and the row offset)."""
        where = f"{self.source}: load_data of model module {self.spec.module!r}, split {self.name!r}"
        seen = [0] * len(self.picks)  # rows each pick has looked at
        offset = 0
        rows = self.rows.batch(shards.SCAN_BATCH).as_numpy_iterator()
        while True:
            try:
                features, labels = next(rows)
            except StopIteration:
                return
            except Exception as exc:  # the module's pipeline may raise anything (a bad record, a lost file)
                raise DatasetError(f"{where}: reading rows from {offset} on raised {type(exc).__name__}: "
                                   f"{str(exc)[:500]}") from exc
            n = len(labels)
            keep = np.ones(n, dtype=bool)
            for k, (share, phase, selected) in enumerate(self.picks):
                index = seen[k] + np.arange(int(keep.sum()), dtype=np.float64)
                seen[k] += len(index)
                keep[keep] = (np.floor((index + 1) * share + phase) > np.floor(index * share + phase)) == selected
            here = f"{where} (rows {offset}..{offset + n - 1})"
            offset += n
            if keep.any():
                yield here, validate_split(self.spec, here, self.name, Split(features, labels).take(keep))

    def dataset(self, batch_size: int, seed: int | None = None):
        """Batched ``(features, labels)`` of the validated rows; shuffled in a 10 000-row buffer when
        ``seed`` is given."""
        import tensorflow as tf

        rows = tf.data.Dataset.from_generator(
            lambda: ((b.features, b.labels) for _, b in self.batches()),
            output_signature=shards.signature(tf, self.spec)).unbatch()
        if seed is not None:
            rows = rows.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
        return rows.batch(batch_size).prefetch(tf.data.AUTOTUNE)


@dataclass
class StreamedData:
    """A sharded dataset's splits, streamed (see the module's doc)."""

    source: str
    train: StreamedSplit
    validation: StreamedSplit
    test: StreamedSplit
    validation_carved: bool
    manifest: dict

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()


def sampled(data: ModelData | StreamedData, rows: int, seed: int = 0) -> ModelData:
    """``data`` itself when it is in memory; a streamed dataset as a seeded sample of at most ``rows``
    rows per split (:func:`sample`: each split read once through a reservoir), for a step that needs
    its rows in memory — fine-tuning on a sample, calibrating, scoring and checking formats on one —
    with memory bounded by ``rows``, not by the dataset. A shard dataset's sample is kept on the
    machine (:mod:`tfmlops.sample_cache`): the next task that asks for it reads that file instead of
    the shards."""
    if isinstance(data, ModelData):
        return data
    cached = sample_cache.path_for(data.fingerprint(), rows, seed) if isinstance(data.train, ShardSplit) else None
    if cached is not None and cached.exists():
        try:
            splits = sample_cache.load(cached)
            log.info("%s streams: its seeded sample of at most %d rows per split read from %s", data.source, rows,
                     cached)
            return ModelData(data.source, *(splits[name] for name in SPLITS), data.validation_carved)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # a damaged file: sample again
            log.warning("sample cache %s unreadable (%s): sampling the shards again", cached, exc)
    log.info("%s streams: a seeded sample of at most %d rows per split is read into memory", data.source, rows)
    result = ModelData(data.source, sample(data.train, rows, seed), sample(data.validation, rows, seed + 1),
                       sample(data.test, rows, seed + 2), data.validation_carved)
    if cached is not None:
        try:
            sample_cache.save(cached, {name: getattr(result, name) for name in SPLITS})
        except OSError as exc:  # a full or read-only disk costs the next task a new pass, nothing else
            log.warning("sample cache %s not written: %s", cached, exc)
    return result


def stream_min_bytes() -> int:
    return int(float(os.environ.get("TFMLOPS_STREAM_MIN_MB", "256")) * 2**20)


def _names_shards(uri: str, s3_client) -> bool:
    """Whether ``uri`` names a sharded layout (a ``{split}`` pattern or a folder) for the default loaders."""
    if uri == "mnist" or uri.split("?")[0].lower().endswith((".npz", ".parquet")):
        return False
    return "{split}" in uri or _is_dir(uri, s3_client)


def _bytes(layout: shards.Layout) -> int:
    return sum(x.size for x in {x.uri: x for found in layout.splits.values() for x in found}.values())


def _load_streamed(spec: ModelSpec, layout: shards.Layout, sample_fraction: float, seed: int,
                   s3_client) -> tuple[StreamedData, dict]:
    uri = layout.source
    rng = np.random.default_rng(seed)
    chosen = {}
    for name, found in layout.splits.items():
        if sample_fraction < 1 and not layout.split_column:
            keep = max(1, int(round(len(found) * sample_fraction)))
            found = [found[i] for i in sorted(rng.choice(len(found), size=keep, replace=False))]
        chosen[name] = found
    carved = "validation" not in chosen
    if carved:
        train = chosen["train"]
        share = float(spec.hparams.get("validation_split", 0.1))
        n_val = max(1, int(round(len(train) * share))) if share > 0 else 0
        if n_val == 0 or len(train) - n_val < 1:
            raise DatasetError(f"{uri}: {len(train)} train shard(s) and no validation shards: a streamed dataset's "
                               "validation split is carved by shard (the last validation_split share of the train "
                               "shards); add validation/ shards or write the train split in more shards")
        chosen["train"], chosen["validation"] = train[:-n_val], train[-n_val:]
    if sample_fraction < 1 and layout.split_column:
        raise DatasetError(f"{uri}: sample_fraction < 1 is taken by shard when a dataset streams, and this one's "
                           "splits are a 'split' column in every shard: use sample_fraction 1")
    split = {name: ShardSplit(spec, shards.Layout(uri, layout.format, {name: found}, layout.split_column), name,
                                 s3_client) for name, found in chosen.items()}
    manifest = {"source": uri, "format": layout.format, "split_column": layout.split_column,
                "validation_carved": carved, "sample_fraction": sample_fraction, "seed": seed,
                "splits": {name: [dataclasses.asdict(x) for x in found] for name, found in sorted(chosen.items())}}
    data = StreamedData(uri, split["train"], split["validation"], split["test"], carved, manifest)
    report = {"source": uri, "module": spec.module, "streamed": True, "format": layout.format,
              "validation_carved": carved, "inputs": sorted(spec.inputs), "fingerprint": data.fingerprint(),
              "shards": {name: len(found) for name, found in chosen.items()},
              "bytes": {name: sum(x.size for x in found) for name, found in chosen.items()},
              # rows are known once the splits are read: validate_data's scan counts them
              "train_rows": None, "validation_rows": None, "test_rows": None}
    return data, report


def concatenate(splits: list[Split]) -> Split:
    """The rows of ``splits`` (in memory) one after the other; empty ones left out (all empty: the first)."""
    full = [s for s in splits if len(s)] or splits[:1]
    return Split({k: np.concatenate([s.features[k] for s in full]) for k in full[0].features},
                 np.concatenate([s.labels for s in full]))


def data_dir() -> Path:
    return Path(os.environ.get("TFMLOPS_DATA_DIR", Path(__file__).resolve().parents[2] / "data"))


def resolve_uri(uri: str) -> str:
    """A relative local path is looked up under :func:`data_dir` first (``examples/churn.parquet``)."""
    if uri == "mnist" or "://" in uri or os.path.isabs(uri):
        return uri
    under = data_dir() / uri
    if under.exists() or under.parent.exists() and "{split}" in uri:
        return str(under)
    return uri


# ------------------------------------------------------------------ loading
def load(spec: ModelSpec, module, uri: str, sample_fraction: float = 1.0, seed: int = 0, s3_client=None,
         max_overlap_fraction: float = 0.0) -> tuple[ModelData, dict]:
    """Load every split, sample, validate against ``spec``; returns the data and a report."""
    if not 0 < sample_fraction <= 1:
        raise DatasetError(f"{uri}: sample fraction must be in (0, 1], got {sample_fraction}")
    uri = resolve_uri(str(uri))
    if hasattr(module, "load_data"):
        raw = _load_module(spec, module, uri, sample_fraction, seed)
        if isinstance(raw, tuple):  # it streams
            return raw
    elif _names_shards(uri, s3_client):
        layout = shards.discover(uri, s3_client)
        if _bytes(layout) >= stream_min_bytes():
            return _load_streamed(spec, layout, sample_fraction, seed, s3_client)
        raw = _load_shards(spec, layout, s3_client)
    else:
        raw = _load_raw(spec, uri, s3_client)
    rng = np.random.default_rng(seed)
    splits = {}
    for name in SPLITS:
        split = raw.get(name)
        if split is None:
            continue
        split = validate_split(spec, uri, name, split)
        if sample_fraction < 1:
            n = len(split)
            split = split.take(np.sort(rng.choice(n, size=max(1, int(round(n * sample_fraction))), replace=False)))
        splits[name] = split
    for name in ("train", "test"):
        if name not in splits:
            raise DatasetError(f"{uri}: no {name} split (model module {spec.module!r})")
    carved = "validation" not in splits
    if carved:
        train = splits["train"]
        share = float(spec.hparams.get("validation_split", 0.1))
        n_val = int(len(train) * share) if len(train) >= 20 else 0
        cut = len(train) - n_val
        splits["train"], splits["validation"] = train.take(slice(0, cut)), train.take(slice(cut, None))
    result = ModelData(uri, splits["train"], splits["validation"], splits["test"], validation_carved=carved)
    overlap = _overlap(result)
    fraction = overlap / len(result.test)
    if fraction > max_overlap_fraction:
        raise DatasetError(f"{uri}: {overlap} of {len(result.test)} test rows ({fraction:.2%}) also appear in train "
                           f"(allowed: {max_overlap_fraction:.2%})")
    report = {"source": uri, "module": spec.module, "train_rows": len(result.train) + (
        len(result.validation) if carved else 0), "validation_rows": len(result.validation),
        "validation_carved": carved, "test_rows": len(result.test), "inputs": sorted(spec.inputs),
        "test_overlap_rows": overlap, "fingerprint": result.fingerprint()}
    if spec.task != "regression":
        report["train_class_counts"] = np.bincount(concatenate([result.train, result.validation]).labels,
                                                   minlength=spec.num_classes).tolist()
    else:
        labels = result.train.labels
        report["train_label_mean"], report["train_label_std"] = float(labels.mean()), float(labels.std())
    return result, report


def _load_raw(spec: ModelSpec, uri: str, s3_client) -> dict[str, Split | None]:
    if uri == "mnist" or uri.split("?")[0].lower().endswith(".npz"):
        return _single_input(spec, uri, builtin.load_dataset(uri, s3_client=s3_client))
    if uri.split("?")[0].lower().endswith(".parquet"):
        return _load_parquet(spec, uri, s3_client)
    raise DatasetError(f"{uri}: unsupported dataset for model module {spec.module!r}: use 'mnist', a .npz or "
                       ".parquet file, TFRecord or Parquet shards (a pattern with {split} or a folder), or give the "
                       "module a load_data(uri, split)")


def _is_dir(uri: str, s3_client) -> bool:
    """A local folder, or an S3 prefix that is a "folder": written with its trailing ``/``, or with
    objects under ``<uri>/`` (one listing call)."""
    if uri.startswith("s3://"):
        if uri.endswith("/"):
            return True
        from tfmlops.storage import s3, split_s3_uri

        bucket, key = split_s3_uri(uri)
        return bool(s3(s3_client).list_objects_v2(Bucket=bucket, Prefix=f"{key}/", MaxKeys=1).get("KeyCount"))
    return os.path.isdir(uri)


def _module_results(spec: ModelSpec, module, uri: str) -> dict:
    """What the module's ``load_data(uri, split)`` returns for each split (``validation`` may be None)."""
    out = {}
    for split in SPLITS:
        try:
            got = module.load_data(uri, split)
        except (DatasetError, ModelModuleError):
            raise
        except Exception as exc:  # the user's loader may raise anything
            raise DatasetError(f"{uri}: load_data of model module {spec.module!r} raised for split {split!r}: "
                               f"{type(exc).__name__}: {exc}") from exc
        if got is None and split != "validation":
            raise DatasetError(f"{uri}: load_data of model module {spec.module!r} returned None for the "
                               f"{split} split (only 'validation' may be None: carved from train)")
        if got is not None and not _is_arrays(got) and not _is_tf_dataset(got):
            raise DatasetError(f"{uri}: load_data of model module {spec.module!r}, split {split!r}: returned "
                               f"{type(got).__name__}; expected an unbatched tf.data.Dataset of (features_dict, "
                               "label) or a (features_dict, labels) tuple of NumPy arrays")
        if _is_tf_dataset(got):
            element = got.element_spec
            if not (isinstance(element, tuple) and len(element) == 2 and isinstance(element[0], dict)):
                raise DatasetError(f"{uri}: load_data of model module {spec.module!r}, split {split!r}: the "
                                   f"tf.data.Dataset must yield (features_dict, label) pairs, yields {element}")
        out[split] = got
    return out


def _is_arrays(got) -> bool:
    return isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], dict)


def _is_tf_dataset(got) -> bool:
    if _is_arrays(got) or got is None:
        return False
    import tensorflow as tf

    return isinstance(got, tf.data.Dataset)


def _from_module_result(spec: ModelSpec, uri: str, split: str, got, max_bytes: int | None = None) -> Split | None:
    """A module's split in memory; a ``tf.data.Dataset`` is read until ``max_bytes`` of arrays
    (None: when that is passed, the split is to stream)."""
    if _is_arrays(got):
        features, labels = got
        return Split({k: np.asarray(v) for k, v in features.items()}, np.asarray(labels))
    where = f"{uri}: load_data of model module {spec.module!r}, split {split!r}"
    columns: dict[str, list] = {k: [] for k in got.element_spec[0]}
    labels, n, size = [], 0, 0
    try:
        for batch_features, batch_labels in got.batch(1024).as_numpy_iterator():
            for k in columns:
                x = batch_features[k]
                columns[k].append(x)
                size += sum(map(len, x.reshape(-1))) if x.dtype == object else x.nbytes  # strings: their bytes
            labels.append(batch_labels)
            n += len(batch_labels)
            if n > MAX_ROWS:
                raise DatasetError(f"{where}: more than {MAX_ROWS} rows (split too large to load in memory)")
            if max_bytes is not None and size > max_bytes:
                return None
    except DatasetError:
        raise
    except Exception as exc:  # the module's pipeline may raise anything
        raise DatasetError(f"{where}: reading rows from {n} on raised {type(exc).__name__}: {str(exc)[:500]}") from exc
    if not labels:
        return Split({k: np.zeros((0,)) for k in columns}, np.zeros((0,)))
    return Split({k: np.concatenate(v) for k, v in columns.items()}, np.concatenate(labels))


def _load_module(spec: ModelSpec, module, uri: str, sample_fraction: float, seed: int):
    """The module's splits in memory, or — when one of its ``tf.data.Dataset`` s holds
    :func:`stream_min_bytes` or more — the whole dataset streamed (:class:`ModuleSplit` s) with its
    report."""
    results = _module_results(spec, module, uri)
    raw = {}
    for split, got in results.items():
        raw[split] = None if got is None else _from_module_result(
            spec, uri, split, got, stream_min_bytes() if _is_tf_dataset(got) else None)
        if got is not None and raw[split] is None:
            log.info("%s: load_data's %s split holds %g MiB or more: the dataset streams", uri, split,
                     stream_min_bytes() / 2**20)
            return _load_module_streamed(spec, module, uri, results, sample_fraction, seed)
    return raw


def _load_module_streamed(spec: ModelSpec, module, uri: str, results: dict, sample_fraction: float,
                          seed: int) -> tuple[StreamedData, dict]:
    """A module's dataset streamed (see the module's doc: rows picked by index, not by shard)."""
    import tensorflow as tf

    phase = float(np.random.default_rng(seed).random())
    picks = ((sample_fraction, phase, True),) if sample_fraction < 1 else ()
    rows = {name: got if _is_tf_dataset(got) else tf.data.Dataset.from_tensor_slices(got)
            for name, got in results.items() if got is not None}
    split = {name: ModuleSplit(spec, name, uri, ds, picks) for name, ds in rows.items()}
    carved = "validation" not in split
    share = float(spec.hparams.get("validation_split", 0.1))
    if carved:
        if not 0 < share < 1:
            raise DatasetError(f"{uri}: load_data of model module {spec.module!r} gives no validation split and "
                               f"validation_split is {share}: give one, or a validation_split in (0, 1)")
        split["validation"] = ModuleSplit(spec, "validation", uri, rows["train"], (*picks, (share, 0.0, True)))
        split["train"] = ModuleSplit(spec, "train", uri, rows["train"], (*picks, (share, 0.0, False)))
    manifest = {"source": uri, "load_data": f"{spec.module}.load_data", "module_sha256": _module_digest(module),
                "validation_carved": carved, "sample_fraction": sample_fraction, "seed": seed,
                "validation_split": share if carved else None,
                "splits": {name: repr(ds.element_spec) for name, ds in sorted(rows.items())}}
    data = StreamedData(uri, split["train"], split["validation"], split["test"], carved, manifest)
    report = {"source": uri, "module": spec.module, "streamed": True, "format": "tf.data",
              "validation_carved": carved, "inputs": sorted(spec.inputs), "fingerprint": data.fingerprint(),
              "train_rows": None, "validation_rows": None, "test_rows": None}
    return data, report


def _module_digest(module) -> str | None:
    """SHA-256 of the module's source file (a streamed module dataset's identity, with its URI)."""
    import inspect

    try:
        return hashlib.sha256(Path(inspect.getsourcefile(module)).read_bytes()).hexdigest()
    except (TypeError, OSError):
        return None


def _single_input(spec: ModelSpec, uri: str, dataset: builtin.Dataset) -> dict[str, Split | None]:
    if len(spec.inputs) != 1:
        raise DatasetError(f"{uri}: a 'mnist'/.npz dataset holds one feature array; model module {spec.module!r} "
                           f"has inputs {sorted(spec.inputs)} (use Parquet/TFRecord with a column per input)")
    name = next(iter(spec.inputs))
    out: dict[str, Split | None] = {"validation": None}
    for split in ("train", "test"):
        x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 255.0
        out[split] = Split({name: x}, y)
    return out


def _load_parquet(spec: ModelSpec, uri: str, s3_client) -> dict[str, Split | None]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(read_bytes(uri, s3_client=s3_client)))
    except FileNotFoundError as exc:
        raise DatasetError(f"{uri}: dataset file not found") from exc
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise DatasetError(f"{uri}: not a readable parquet file ({exc})") from exc
    columns = set(table.column_names)
    if not set(spec.inputs) <= columns and len(spec.inputs) == 1 and {"label", "split"} <= columns:
        return _single_input(spec, uri, builtin._load_parquet_table(uri, table))
    missing = [c for c in [*spec.inputs, spec.label, "split"] if c not in columns]
    if missing:
        raise DatasetError(f"{uri}: missing columns {missing}; model module {spec.module!r} reads one column per "
                           f"input {sorted(spec.inputs)}, the label {spec.label!r} and 'split'")
    split_col = np.asarray(table.column("split").to_pylist(), dtype=object)
    bad = sorted({str(s) for s in set(split_col)} - set(SPLITS))
    if bad:
        raise DatasetError(f"{uri}: column 'split' may only hold {list(SPLITS)}, found {bad}")
    arrays = {c: _column(table, c, spec.inputs[c] if c in spec.inputs else None, uri) for c in [*spec.inputs]}
    labels = np.asarray(table.column(spec.label).to_numpy(zero_copy_only=False))
    out: dict[str, Split | None] = {}
    for split in SPLITS:
        rows = split_col == split
        out[split] = Split({k: v[rows] for k, v in arrays.items()}, labels[rows]) if rows.any() else None
    return out


def _column(table, name: str, declared, uri: str) -> np.ndarray:
    dtype, shape = declared
    column = table.column(name)
    if not shape:
        values = column.to_numpy(zero_copy_only=False)
        return values.astype(object) if dtype == "string" else values
    rows = column.to_pylist()
    try:
        array = np.asarray(rows, dtype=object if dtype == "string" else None)
    except ValueError as exc:
        raise DatasetError(f"{uri}: column {name!r} holds lists of different lengths; input {name!r} has the fixed "
                           f"shape {list(shape)}") from exc
    size = int(np.prod(shape))
    if array.ndim < 2 or array.shape[0] != len(rows) or int(np.prod(array.shape[1:])) != size:
        raise DatasetError(f"{uri}: column {name!r} rows have shape {list(array.shape[1:])}; input {name!r} takes "
                           f"{list(shape)} ({size} values)")
    return array.reshape((len(rows), *shape))


def _load_shards(spec: ModelSpec, layout: shards.Layout, s3_client) -> dict[str, Split | None]:
    """A sharded layout (:func:`tfmlops.shards.discover`) small enough not to stream: read whole."""
    uri = layout.source
    out: dict[str, Split | None] = {}
    for split in SPLITS:
        if split not in layout.splits:
            out[split] = None
            continue
        got, rows = [], 0
        for _, _, features, labels in shards.shard_batches(spec, layout, split, s3_client):
            got.append(Split(features, labels))
            rows += len(labels)
            if rows > MAX_ROWS:
                raise DatasetError(f"{uri}: the {split} split has more than {MAX_ROWS} rows (loaded in memory)")
        out[split] = concatenate(got) if rows else None
    return out


# ------------------------------------------------------------------ validation
def validate_split(spec: ModelSpec, uri: str, name: str, split: Split) -> Split:
    where = f"{uri}: {name} split"
    if len(split.labels) == 0:
        raise DatasetError(f"{where} is empty")
    if len(split.labels) > MAX_ROWS:
        raise DatasetError(f"{where} has {len(split.labels)} rows, more than {MAX_ROWS} (loaded in memory)")
    missing = [k for k in spec.inputs if k not in split.features]
    if missing:
        raise DatasetError(f"{where} has no feature {missing}; model module {spec.module!r} takes "
                           f"{sorted(spec.inputs)}")
    n = len(split.labels)
    clean = {}
    for key, (dtype, shape) in spec.inputs.items():
        x = np.asarray(split.features[key])
        if len(x) != n:
            raise DatasetError(f"{where}: feature {key!r} has {len(x)} rows but there are {n} labels")
        size = int(np.prod(shape)) if shape else 1
        if int(np.prod(x.shape[1:])) != size:
            got = int(np.prod(x.shape[1:]))
            raise DatasetError(f"{where}: feature {key!r} rows have shape {list(x.shape[1:])} ({got} values); "
                               f"input {key!r} takes {list(shape)} ({size} values)")
        x = x.reshape((n, *shape))
        if dtype == "string":
            if x.dtype.kind not in "OSU":
                raise DatasetError(f"{where}: feature {key!r} has dtype {x.dtype}; input {key!r} takes strings")
            bad = [v for v in x.reshape(-1)[:100000] if not isinstance(v, (str, bytes))]
            if bad:
                raise DatasetError(f"{where}: feature {key!r} holds non-strings (e.g. {bad[0]!r})")
            x = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(x) if x.size else \
                x.astype(object)
        else:
            if x.dtype == np.bool_ or x.dtype.kind not in "iuf":
                raise DatasetError(f"{where}: feature {key!r} has dtype {x.dtype}; input {key!r} takes {dtype}")
            if x.dtype.kind == "f" and not np.isfinite(x).all():
                rows = int((~np.isfinite(x)).reshape(n, -1).any(axis=1).sum())
                raise DatasetError(f"{where}: feature {key!r} has NaN or inf values in {rows} rows")
            if dtype == "int64" and x.dtype.kind == "f":
                if not (x == np.round(x)).all():
                    raise DatasetError(f"{where}: feature {key!r} has fractional values; input {key!r} is int64")
            x = x.astype(np.float32 if dtype == "float32" else np.int64)
        clean[key] = x
    return Split(clean, _labels(spec, where, np.asarray(split.labels)))


def _labels(spec: ModelSpec, where: str, y: np.ndarray) -> np.ndarray:
    y = y.reshape(len(y), -1) if y.ndim > 1 else y
    if y.ndim != 1:
        if y.shape[1] != 1:
            raise DatasetError(f"{where}: labels must be one value per row, got shape {list(y.shape)}")
        y = y[:, 0]
    if y.dtype == np.bool_ or y.dtype.kind not in "iuf":
        raise DatasetError(f"{where}: label {spec.label!r} has dtype {y.dtype}; expected "
                           + ("numbers" if spec.task == "regression" else "integer class indices"))
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        bad = int((~np.isfinite(y)).sum())
        raise DatasetError(f"{where}: label {spec.label!r} has NaN or inf values in {bad} rows")
    if spec.task == "regression":
        return y.astype(np.float32)
    if y.dtype.kind == "f" and not (y == np.round(y)).all():
        raise DatasetError(f"{where}: label {spec.label!r} holds fractional values; classification labels are class "
                           f"indices 0..{spec.num_classes - 1}")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= spec.num_classes:
        raise DatasetError(f"{where}: labels span [{low}, {high}]; expected [0, {spec.num_classes - 1}] "
                           f"({spec.num_classes} classes: {spec.class_names})")
    return y.astype(np.int64)


def _row_hashes(split: Split) -> list[bytes]:
    n = len(split)
    digests = [hashlib.blake2b(digest_size=16) for _ in range(n)]
    for key in sorted(split.features):
        x = split.features[key]
        if x.dtype == object:
            flat = x.reshape(n, -1)
            for i in range(n):
                for value in flat[i]:
                    digests[i].update(len(value).to_bytes(4, "little") + value)
        else:
            rows = np.ascontiguousarray(x.reshape(n, -1))
            for i in range(n):
                digests[i].update(rows[i].tobytes())
    return [d.digest() for d in digests]


def _overlap(data: ModelData) -> int:
    train = set(_row_hashes(data.train)) | set(_row_hashes(data.validation))
    return sum(h in train for h in _row_hashes(data.test))


def from_dataset(dataset: builtin.Dataset, input_name: str) -> ModelData:
    """A one-input :class:`tfmlops.data.Dataset` (float rows, class ids) as the splits of a model
    whose one input is ``input_name`` (no validation split)."""
    empty = Split({input_name: dataset.x_train[:0]}, dataset.y_train[:0])
    return ModelData(dataset.source, Split({input_name: dataset.x_train}, dataset.y_train), empty,
                     Split({input_name: dataset.x_test}, dataset.y_test))


def sample_features(split: Split | StreamedSplit, rows: int) -> dict[str, np.ndarray]:
    """The first ``rows`` rows of ``split``'s features (``build_model``'s ``sample`` to adapt on)."""
    return split.head(rows).features


def sample(split: Split | StreamedSplit | list, rows: int, seed: int = 0) -> Split:
    """A seeded sample of ``rows`` rows without replacement (all of them when there are fewer), in
    reading order, from one split or from several read one after the other (``[split, …]``: one
    sample of their union). Splits in memory are sampled directly; as soon as one of them streams,
    every one is read once through a reservoir (Algorithm R, batch by batch): memory of ``rows``
    rows and one batch."""
    rng = np.random.default_rng(seed)
    splits = split if isinstance(split, list) else [split]
    if all(isinstance(s, Split) for s in splits):
        whole = splits[0] if len(splits) == 1 else concatenate(splits)
        return whole.take(np.sort(rng.choice(len(whole), size=min(rows, len(whole)), replace=False)))
    kept: list[tuple[int, Split]] = []  # (row number, a copy of the row: a view would keep its whole batch)
    seen = 0
    for _, batch in (piece for s in splits for piece in batches(s)):
        n = len(batch)
        fill = max(0, min(rows - len(kept), n))
        kept += [(seen + i, batch.take([i])) for i in range(fill)]
        if fill < n:  # row number r replaces a kept row with probability rows / (r + 1)
            slots = rng.integers(0, np.arange(seen + fill, seen + n) + 1)
            for i in np.flatnonzero(slots < rows) + fill:
                kept[slots[i - fill]] = (seen + i, batch.take([i]))
        seen += n
    if not kept:
        names = " and ".join(f"the {s.name} split of {s.source}" if isinstance(s, StreamedSplit)
                             else "rows in memory" for s in splits)
        raise DatasetError(f"nothing to sample: {names} {'is' if len(splits) == 1 else 'are'} empty")
    kept.sort(key=lambda item: item[0])
    return concatenate([r for _, r in kept])


def batches(split: Split | StreamedSplit, rows: int = shards.SCAN_BATCH):
    """``split`` as (where, validated batch) pieces: a split in memory in slices of ``rows``."""
    if isinstance(split, StreamedSplit):
        yield from split.batches()
        return
    for start in range(0, len(split), rows):
        yield f"rows {start}..", split.take(slice(start, start + rows))


def profile(spec: ModelSpec, data: ModelData | StreamedData, seed: int = 0) -> dict:
    """Every split's profile (:func:`tfmlops.shards.profile_split`) read once, batch by batch: the
    dataset's statistics logged with the trained run, the baseline drift is measured against.
    A streamed split that turns out empty is refused."""
    rng = np.random.default_rng(seed)
    out = {"source": data.source, "fingerprint": data.fingerprint(), "splits": {}}
    for name in SPLITS:
        split = getattr(data, name)
        if isinstance(split, Split) and not len(split):
            continue
        out["splits"][name] = shards.profile_split(spec, (b for _, b in batches(split)), rng)
        if not out["splits"][name]["rows"]:
            raise DatasetError(f"{data.source}: the {name} split is empty")
    return out
