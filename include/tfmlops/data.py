"""Datasets: the committed MNIST files (hash-checked) and users' .npz / parquet files.

A dataset URI is one of
- ``mnist`` — the MNIST idx files committed under ``data/mnist`` (override the folder with
  ``TFMLOPS_MNIST_DIR``); each file's SHA-256 is checked on every load;
- a local path or ``s3://bucket/key`` to a ``.npz`` with arrays ``x_train``, ``y_train``,
  ``x_test``, ``y_test``;
- a local path or ``s3://`` URI to a ``.parquet`` file with an integer ``label`` column, a
  ``split`` column (``train``/``test``) and one numeric column per feature.

Every dataset goes through :func:`validate` before training; bad input raises
:class:`DatasetError` naming the source and the problem. No TensorFlow import here.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfmlops.storage import read_bytes

MNIST_FILES = {
    "train-images.idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels.idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images.idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels.idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# The first MNIST test rows are a fixed holdout (the online update gate's): the demo partitions
# (tfmlops.simulate) are drawn from the rows after them only.
MNIST_HOLDOUT_ROWS = 5000


class DatasetError(ValueError):
    """A dataset file is missing, corrupt or fails validation; the message names which and why."""


@dataclass
class Dataset:
    """Features are float32 rows (N, n_features); labels are int64 class ids."""

    source: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def fingerprint(self) -> str:
        """SHA-256 over the arrays (after loading and sampling): the dataset's identity in lineage tags."""
        digest = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def sample(self, fraction: float, seed: int = 0) -> "Dataset":
        """Keep a random ``fraction`` of each split (at least one row of each)."""
        if not 0 < fraction <= 1:
            raise DatasetError(f"{self.source}: sample fraction must be in (0, 1], got {fraction}")
        if fraction == 1:
            return self
        rng = np.random.default_rng(seed)

        def pick(n: int) -> np.ndarray:
            return np.sort(rng.choice(n, size=max(1, int(round(n * fraction))), replace=False))

        train, test = pick(len(self.y_train)), pick(len(self.y_test))
        return Dataset(self.source, self.x_train[train], self.y_train[train],
                       self.x_test[test], self.y_test[test])


def mnist_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / "data" / "mnist"
    return Path(os.environ.get("TFMLOPS_MNIST_DIR", default))


def _read_idx(path: Path, expected_sha256: str) -> np.ndarray:
    if not path.exists():
        raise DatasetError(f"{path}: MNIST file is missing")
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: not a valid gzip file ({exc})") from exc
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected_sha256:
        raise DatasetError(
            f"{path}: SHA-256 mismatch of the uncompressed file: expected {expected_sha256}, got {actual}")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DatasetError(f"{path}: not an idx file of unsigned bytes (header {raw[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist(directory: Path | None = None) -> Dataset:
    directory = Path(directory or mnist_dir())
    arrays = {name: _read_idx(directory / f"{name}.gz", sha) for name, sha in MNIST_FILES.items()}
    return Dataset(
        source="mnist",
        x_train=arrays["train-images.idx3-ubyte"],
        y_train=arrays["train-labels.idx1-ubyte"],
        x_test=arrays["t10k-images.idx3-ubyte"],
        y_test=arrays["t10k-labels.idx1-ubyte"],
    )


def _load_npz(uri: str, payload: bytes) -> Dataset:
    try:
        archive = np.load(io.BytesIO(payload), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError, OSError, BadZipFile... for a bad file
        raise DatasetError(f"{uri}: not a readable .npz file ({exc})") from exc
    missing = [key for key in NPZ_KEYS if key not in archive.files]
    if missing:
        raise DatasetError(f"{uri}: missing arrays {missing}; a .npz dataset needs {list(NPZ_KEYS)}")
    try:
        arrays = {key: archive[key] for key in NPZ_KEYS}
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise DatasetError(f"{uri}: unsupported array content ({exc})") from exc
    return Dataset(uri, **arrays)


def _load_parquet(uri: str, payload: bytes) -> Dataset:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(payload))
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise DatasetError(f"{uri}: not a readable parquet file ({exc})") from exc
    return _load_parquet_table(uri, table)


def _load_parquet_table(uri: str, table) -> Dataset:
    """The flat format: one numeric column per feature, ``label`` and ``split``."""
    missing = [c for c in ("label", "split") if c not in table.column_names]
    if missing:
        raise DatasetError(f"{uri}: missing columns {missing}; a parquet dataset needs 'label', 'split' "
                           "and one column per feature")
    frame = table.to_pandas()
    splits = set(frame["split"].unique())
    if not splits <= {"train", "test"}:
        raise DatasetError(f"{uri}: column 'split' may only hold 'train' or 'test', found {sorted(map(str, splits))}")
    features = frame.drop(columns=["label", "split"])
    non_numeric = [c for c in features.columns if not np.issubdtype(features[c].dtype, np.number)]
    if non_numeric:
        raise DatasetError(f"{uri}: feature columns must be numeric, not {non_numeric}")
    train, test = (frame["split"] == "train").to_numpy(), (frame["split"] == "test").to_numpy()
    x, y = features.to_numpy(), frame["label"].to_numpy()
    return Dataset(uri, x[train], y[train], x[test], y[test])


def load_dataset(uri: str, s3_client=None) -> Dataset:
    """Load a dataset by URI (see the module doc). ``s3_client`` is a boto3 S3 client for ``s3://``."""
    if uri == "mnist":
        return load_mnist()
    suffix = Path(uri.split("?")[0]).suffix.lower()
    if suffix not in (".npz", ".parquet"):
        raise DatasetError(f"{uri}: unsupported dataset format {suffix or '(none)'!r}; use 'mnist', .npz or .parquet")
    try:
        payload = read_bytes(uri, s3_client=s3_client)
    except FileNotFoundError as exc:
        raise DatasetError(f"{uri}: dataset file not found") from exc
    return _load_npz(uri, payload) if suffix == ".npz" else _load_parquet(uri, payload)


def _row_hashes(x: np.ndarray) -> list[bytes]:
    rows = np.ascontiguousarray(x.reshape(len(x), -1))
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]


def validate(dataset: Dataset, n_features: int, num_classes: int,
             max_overlap_fraction: float = 0.0) -> tuple[Dataset, dict]:
    """Check a dataset against the model's input and return it as float32 rows, with a report.

    Checks: non-empty splits, numeric dtypes, feature count vs the model's input (images are
    flattened), NaN/inf, integer labels in ``[0, num_classes)``, matching row counts, and the
    share of test rows that also appear in train (by row hash) against ``max_overlap_fraction``.
    uint8 pixels are scaled to [0, 1].
    """
    src = dataset.source
    clean = {}
    for split in ("train", "test"):
        x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
        if len(x) == 0 or len(y) == 0:
            raise DatasetError(f"{src}: the {split} split is empty")
        if len(x) != len(y):
            raise DatasetError(f"{src}: {split} split has {len(x)} feature rows but {len(y)} labels")
        if not (np.issubdtype(x.dtype, np.number) and not np.iscomplexobj(x)) or x.dtype == np.bool_:
            raise DatasetError(f"{src}: x_{split} has dtype {x.dtype}; expected a real numeric dtype")
        features = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1
        if features != n_features:
            raise DatasetError(f"{src}: x_{split} rows have shape {tuple(x.shape[1:])} ({features} values); "
                               f"the model expects {n_features} inputs")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
            raise DatasetError(f"{src}: x_{split} has NaN or inf values in {bad} rows")
        if not np.issubdtype(y.dtype, np.integer):
            if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all():
                y = y.astype(np.int64)
            else:
                raise DatasetError(f"{src}: y_{split} has dtype {y.dtype}; labels must be integer class ids")
        if y.ndim != 1:
            raise DatasetError(f"{src}: y_{split} must be one label per row, got shape {y.shape}")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= num_classes:
            raise DatasetError(f"{src}: y_{split} labels span [{low}, {high}]; expected [0, {num_classes - 1}]")
        rows = x.reshape(len(x), n_features)
        rows = rows.astype(np.float32) / 255.0 if x.dtype == np.uint8 else rows.astype(np.float32)
        clean[split] = (rows, y.astype(np.int64))

    train_hashes = set(_row_hashes(clean["train"][0]))
    test_hashes = _row_hashes(clean["test"][0])
    overlap = sum(h in train_hashes for h in test_hashes)
    overlap_fraction = overlap / len(test_hashes)
    if overlap_fraction > max_overlap_fraction:
        raise DatasetError(f"{src}: {overlap} of {len(test_hashes)} test rows ({overlap_fraction:.2%}) also appear "
                           f"in train (allowed: {max_overlap_fraction:.2%})")
    result = Dataset(src, clean["train"][0], clean["train"][1], clean["test"][0], clean["test"][1])
    report = {
        "source": src,
        "train_rows": len(result.y_train),
        "test_rows": len(result.y_test),
        "n_features": n_features,
        "train_class_counts": np.bincount(result.y_train, minlength=num_classes).tolist(),
        "test_overlap_rows": overlap,
        "fingerprint": result.fingerprint(),
    }
    return result, report


def load_validated(uri: str, n_features: int, num_classes: int, sample_fraction: float = 1.0,
                   seed: int = 0, s3_client=None, max_overlap_fraction: float = 0.0) -> tuple[Dataset, dict]:
    """Load, sample and validate in one call: what every task that needs the data does."""
    dataset = load_dataset(uri, s3_client=s3_client).sample(sample_fraction, seed=seed)
    return validate(dataset, n_features, num_classes, max_overlap_fraction)
