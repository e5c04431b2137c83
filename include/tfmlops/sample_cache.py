"""Seeded samples of streamed shard datasets kept on the machine, so that the tasks of one
``tf_optimize_export`` run (and later runs on the same shards) read a dataset larger than memory
once instead of once per task (:func:`tfmlops.model_data.sampled`).

- **Key**: the dataset's fingerprint — the shards' manifest (URI, size, ETag or modification time:
  a rewritten shard is another dataset) — with the rows and the seed. Only shard datasets are
  cached: a model module's ``tf.data`` pipeline is identified by its code, not by the bytes it
  reads, so its sample is drawn again each time.
- **Format**: one ``.npz`` per sample read with ``allow_pickle=False`` (nothing runs code from a
  file): numbers as arrays, strings as one byte buffer with offsets.
- **Folder**: ``TFMLOPS_SAMPLE_CACHE`` (default ``${XDG_CACHE_HOME:-~/.cache}/tfmlops/samples``;
  ``off`` turns the cache off), at most ``TFMLOPS_SAMPLE_CACHE_FILES`` (default 8) samples, the least
  recently used removed first. Written to a temporary name and renamed: a reader never sees half
  a file, and two tasks that sample at once both write the same content.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def folder() -> Path | None:
    value = os.environ.get("TFMLOPS_SAMPLE_CACHE", "").strip()
    if value.lower() in ("off", "0", "none"):
        return None
    if value:
        return Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "tfmlops" / "samples"


def path_for(fingerprint: str, rows: int, seed: int) -> Path | None:
    root = folder()
    if root is None:
        return None
    return root / f"{hashlib.sha256(f'{fingerprint}:{rows}:{seed}'.encode()).hexdigest()[:32]}.npz"


def save(path: Path, splits: dict) -> None:
    """``splits``: name → :class:`tfmlops.model_data.Split`; string features (object arrays of
    bytes) stored as a byte buffer and offsets."""
    arrays = {}
    for name, split in splits.items():
        arrays[f"{name}.labels"] = split.labels
        for key, x in split.features.items():
            if x.dtype == object:
                values = [v.encode() if isinstance(v, str) else bytes(v) for v in x.reshape(-1)]
                arrays[f"{name}.strings.{key}.data"] = np.frombuffer(b"".join(values), dtype=np.uint8)
                arrays[f"{name}.strings.{key}.offsets"] = np.cumsum([0] + [len(v) for v in values], dtype=np.int64)
                arrays[f"{name}.strings.{key}.shape"] = np.asarray(x.shape, dtype=np.int64)
            else:
                arrays[f"{name}.features.{key}"] = x
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _prune(path.parent)


def load(path: Path) -> dict:
    """name → (features, labels) as saved; raises OSError / ValueError for a missing or bad file."""
    from tfmlops.model_data import Split

    out: dict = {}
    with np.load(path, allow_pickle=False) as z:
        names = set(z.files)
        for name in SPLITS:
            if f"{name}.labels" not in names:
                continue
            features = {}
            for entry in names:
                parts = entry.split(".")
                if parts[0] != name:
                    continue
                if parts[1] == "features":
                    features[".".join(parts[2:])] = z[entry]
                elif parts[1] == "strings" and parts[-1] == "data":
                    key = ".".join(parts[2:-1])
                    data = z[entry].tobytes()
                    offsets = z[f"{name}.strings.{key}.offsets"]
                    values = np.empty(len(offsets) - 1, dtype=object)
                    values[:] = [data[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
                    features[key] = values.reshape(tuple(z[f"{name}.strings.{key}.shape"]))
            out[name] = Split(features, z[f"{name}.labels"])
    os.utime(path)  # recently used
    return out


def _prune(root: Path) -> None:
    keep = int(os.environ.get("TFMLOPS_SAMPLE_CACHE_FILES", "8"))
    files = sorted(root.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        try:
            old.unlink()
        except OSError:
            pass  # another task removed it first
