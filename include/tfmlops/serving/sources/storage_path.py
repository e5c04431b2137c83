"""Model versions found on disk, mirroring TF Serving's
``tensorflow_serving/sources/storage_path/file_system_storage_path_source.cc``.

* A configured model's ``base_path`` is listed; child directories whose name is an integer are
  versions. The model's version policy (``latest{num_versions}`` (default 1), ``all``,
  ``specific{versions}``) picks the aspired ones, which go to the manager's
  ``set_aspired_versions`` callback (TF Serving's ``SetAspiredVersionsCallback``).
* Deviation: the poll loop (``file_system_poll_wait_seconds``; 0 = once at config time, <0 =
  never, as in TF Serving) runs in :class:`~tfmlops.serving.model_servers.server_core.ServerCore`
  under the lock that serialises config changes, not in a thread of the source, so a config
  reload and a poll never act on the same model at once.
* Deviation kept on purpose (robustness): a version directory is only considered once it
  is a complete SavedModel -- ``saved_model.pb``/``.pbtxt`` present, and if a ``variables``
  directory exists, ``variables.index`` plus every ``variables.data-K-of-N`` shard. Until
  then it is "not yet seen" (TF Serving would try to load it and fail). Its
  :func:`savedmodel_fingerprint` (names/sizes/mtimes) lets the manager retry a failed version
  once its contents change.
  A directory holding a ``model.tflite`` counts as complete too (``--prefer_tflite_model``).
* ``file:///abs/path`` base paths are the local path they name (TensorFlow's ``file`` scheme).
* ``s3://bucket/prefix`` base paths (tf-serving-local only) are listed through the local cache
  of :mod:`tfmlops.serving.sources.s3_cache`.
"""

from __future__ import annotations

import functools
import logging
import os
import re

from ..config import FILE_URI_PREFIX
from .s3_cache import S3VersionCache

log = logging.getLogger("tfmlops.serving")

_SHARD_RE = re.compile(r"^variables\.data-(\d+)-of-(\d+)$")
TFLITE_MODEL_FILENAME = "model.tflite"


def local_path(base_path: str) -> str:
    """A ``file://`` URI's local path, as TensorFlow's local file system translates it (the host
    part is dropped: ``file:///a/b`` and ``file://host/a/b`` -> ``/a/b``); other paths unchanged."""
    if not base_path.startswith(FILE_URI_PREFIX):
        return base_path
    rest = base_path[len(FILE_URI_PREFIX):]
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else ""


def savedmodel_fingerprint(path: str):
    """(name, size, mtime) listing of a *complete* SavedModel dir, or None if incomplete."""
    try:
        names = os.listdir(path)
    except OSError:
        return None
    if not {"saved_model.pb", "saved_model.pbtxt", TFLITE_MODEL_FILENAME} & set(names):
        return None
    entries = []
    var_dir = os.path.join(path, "variables")
    if os.path.isdir(var_dir):
        try:
            var_names = os.listdir(var_dir)
        except OSError:
            return None
        if var_names and "variables.index" not in var_names:
            return None  # variables being written (an empty dir = a model without variables)
        shards = [m for m in (_SHARD_RE.match(n) for n in var_names) if m]
        if var_names and not shards:
            return None  # an index without any data shard: still being written
        if shards:
            total = int(shards[0].group(2))
            present = {int(m.group(1)) for m in shards if int(m.group(2)) == total}
            if present != set(range(total)):
                return None
        for n in var_names:
            try:
                st = os.stat(os.path.join(var_dir, n))
                entries.append(("variables/" + n, st.st_size, st.st_mtime_ns))
            except OSError:
                return None
    for n in names:
        if n == "variables":
            continue
        try:
            st = os.stat(os.path.join(path, n))
            entries.append((n, st.st_size, st.st_mtime_ns))
        except OSError:
            return None
    return tuple(sorted(entries))


def aspired_versions(model_config, available) -> set:
    """The model's version policy applied to the versions found (``latest`` 1 when unset)."""
    policy = model_config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    avail = sorted(available)
    if choice == "all":
        return set(avail)
    if choice == "specific":
        return set(avail) & set(policy.specific.versions)
    n = policy.latest.num_versions if choice == "latest" else 0
    n = n if n > 0 else 1
    return set(avail[-n:])


class FileSystemStoragePathSource:
    """Lists a model's base path and hands its aspired versions to ``set_aspired_versions(name,
    aspired, {version: (path, fingerprint)})``."""

    def __init__(self, set_aspired_versions):
        self._set_aspired_versions = set_aspired_versions
        # Only made for the first s3:// base path: without TF_SERVING_LOCAL_S3_CACHE it creates a
        # temp dir, which a server of local base paths should not leave behind.
        self._s3_cache: S3VersionCache | None = None

    def poll_servable(self, name: str, model_config) -> None:
        base = model_config.base_path
        if base.startswith("s3://"):
            if self._s3_cache is None:
                self._s3_cache = S3VersionCache()
            base = self._s3_cache.sync(base, functools.partial(aspired_versions, model_config))
            if base is None:
                return
        base = local_path(base)
        try:
            entries = os.listdir(base)
        except OSError as exc:
            log.warning("FileSystemStoragePathSource encountered a filesystem access error: Could not find "
                        "base path %s for servable %s (%s)", base, name, exc.strerror or exc)
            return
        complete: dict[int, tuple] = {}
        for entry in entries:
            if not entry.isascii() or not entry.isdigit():
                continue
            path = os.path.join(base, entry)
            if not os.path.isdir(path):
                continue
            v = int(entry)
            if v in complete:
                continue
            fp = savedmodel_fingerprint(path)
            if fp is not None:
                complete[v] = (path, fp)
        self._set_aspired_versions(name, aspired_versions(model_config, complete), complete)
