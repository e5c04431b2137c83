"""Model/version manager: TF Serving's ServerCore + FileSystemStoragePathSource +
AspiredVersionsManager(AvailabilityPreservingPolicy) + ServableStateMonitor, in one class.

* Each configured model's ``base_path`` is polled every ``file_system_poll_wait_seconds``
  (0 = once at config time, <0 = never, as in TF Serving). Child directories whose name
  is an integer are versions; the version policy (``latest{num_versions}`` (default 1),
  ``all``, ``specific{versions}``) picks the aspired ones.
* Deviation kept on purpose (robustness): a version directory is only considered once it
  is a complete SavedModel -- ``saved_model.pb``/``.pbtxt`` present, and if a ``variables``
  directory exists, ``variables.index`` plus every ``variables.data-K-of-N`` shard. Until
  then it is "not yet seen" (TF Serving would try to load it and fail). If a load still
  fails and the directory changed while loading (files still being written), the failed
  version is retried on the next poll; a version that failed on an unchanged directory is
  retried only when its contents (names/sizes/mtimes) change.
* Availability preserving: new aspired versions are loaded (and warmed up) first, highest
  first; a version that is no longer aspired is unloaded only once an aspired version is
  AVAILABLE (or when no version is aspired at all, e.g. the model left the config). A
  version that fails to load ends in state END with its error, and versions already
  serving keep serving. Unloading waits for in-flight requests on that version.
* States and errors of every version ever seen are kept for the status API (END versions
  included), like ServableStateMonitor.
* Version labels follow ServerCore::UpdateModelVersionLabelMap: labels are recomputed
  from each new config *before* it is applied and may only point at AVAILABLE versions;
  with ``allow_version_labels_for_unavailable_models`` a label that is new (or keeps its
  version) may point at a version that is not available yet.
* ``s3://bucket/prefix`` base paths (tf-serving-local only; TF 2.21 has no S3 filesystem) are
  served through a local cache (``TF_SERVING_LOCAL_S3_CACHE``, default a temp dir): each poll lists
  the prefix with boto3 (endpoint and credentials from the usual ``AWS_*`` variables, e.g.
  ``AWS_ENDPOINT_URL_S3``), downloads the aspired versions that carry the publisher's completion
  marker (``tfmlops.serving.publish.COMPLETE_MARKER``) into the cache atomically, and drops cached
  versions that left S3. A version without its marker (an upload in progress or killed) is
  ignored.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass

from .config import ModelServerConfig, model_platform, validate_model_config_list
from .errors import Code, StatusError, failed_precondition, from_tf_exception, invalid_argument, not_found

log = logging.getLogger("tfmlops.serving")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"

_SHARD_RE = re.compile(r"^variables\.data-(\d+)-of-(\d+)$")


@dataclass
class VersionRecord:
    version: int
    state: str
    path: str = ""
    error: StatusError | None = None
    servable: object = None
    fingerprint: tuple | None = None
    retry: bool = False


def savedmodel_fingerprint(path: str):
    """(name, size, mtime) listing of a *complete* SavedModel dir, or None if incomplete."""
    try:
        names = os.listdir(path)
    except OSError:
        return None
    if "saved_model.pb" not in names and "saved_model.pbtxt" not in names:
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


def _validate(cfg: ModelServerConfig) -> None:
    """ServerCore's checks, with ``s3://`` base paths allowed (served through the S3 cache)."""
    if any(mc.base_path.startswith("s3://") for mc in cfg.model_config_list.config):
        cfg = copy.deepcopy(cfg)
        for mc in cfg.model_config_list.config:
            if mc.base_path.startswith("s3://"):
                mc.base_path = "/s3/" + mc.base_path[len("s3://"):]
    validate_model_config_list(cfg)


class S3VersionCache:
    """Mirror of the complete versions under S3 base paths, one local directory per base path."""

    def __init__(self, root: str | None = None, s3_client=None):
        self.root = root or os.environ.get("TF_SERVING_LOCAL_S3_CACHE") or tempfile.mkdtemp(prefix="tfsl-s3-cache-")
        self._client = s3_client
        self._warned: set = set()

    def client(self):
        if self._client is None:
            import boto3

            self._client = boto3.client("s3")
        return self._client

    def local_base(self, base_uri: str) -> str:
        digest = hashlib.sha256(base_uri.encode()).hexdigest()[:16]
        return os.path.join(self.root, digest)

    def sync(self, base_uri: str, mc) -> str | None:
        """Bring the cache of ``base_uri`` up to date; returns its local directory (None if S3 failed
        before anything was cached)."""
        from .publish import complete_s3_versions, download_s3_version

        local = self.local_base(base_uri)
        try:
            complete = complete_s3_versions(base_uri, self.client())
        except Exception as exc:  # noqa: BLE001 - keep serving what is cached
            if base_uri not in self._warned:
                log.warning("Could not list S3 base path %s: %s", base_uri, exc)
                self._warned.add(base_uri)
            return local if os.path.isdir(local) else None
        self._warned.discard(base_uri)
        os.makedirs(local, exist_ok=True)
        wanted = aspired_versions(mc, complete)
        for v in sorted(wanted, reverse=True):
            if not os.path.isdir(os.path.join(local, str(v))):
                try:
                    download_s3_version(base_uri, v, complete[v]["files"], local, self.client())
                    log.info("Cached %s/%d from S3", base_uri, v)
                except Exception as exc:  # noqa: BLE001 - retried on the next poll
                    log.warning("Could not download %s/%d: %s", base_uri, v, exc)
        for entry in os.listdir(local):
            path = os.path.join(local, entry)
            if entry.isdigit() and int(entry) not in complete:
                trash = os.path.join(local, f".gone-{entry}-{uuid.uuid4().hex}")
                os.rename(path, trash)
                shutil.rmtree(trash, ignore_errors=True)
            elif entry.startswith(".tmp-"):
                shutil.rmtree(path, ignore_errors=True)
        return local


def _load_error(exc: BaseException) -> StatusError:
    if isinstance(exc, StatusError) or hasattr(exc, "error_code"):
        return from_tf_exception(exc)
    if isinstance(exc, FileNotFoundError):
        return StatusError(Code.NOT_FOUND, str(exc))
    name = type(exc).__name__
    if name == "DecodeError":
        return StatusError(Code.DATA_LOSS, f"Can't parse SavedModel: {exc}")
    return StatusError(Code.UNKNOWN, f"{name}: {exc}")


class ModelManager:
    def __init__(self, *, file_system_poll_wait_seconds: int = 1,
                 allow_version_labels_for_unavailable_models: bool = False,
                 batch_scheduler=None, servable_factory=None):
        if servable_factory is None:
            from .servable import Servable as servable_factory  # noqa: N813
        self._factory = servable_factory
        self._batcher = batch_scheduler
        self.fs_poll_seconds = file_system_poll_wait_seconds
        self.allow_labels_for_unavailable = allow_version_labels_for_unavailable_models
        self._cfg_lock = threading.RLock()  # serialises config changes and fs polls
        self._lock = threading.Lock()  # protects _records
        self._config: ModelServerConfig | None = None
        self._model_configs: dict = {}
        self._records: dict[str, dict[int, VersionRecord]] = {}
        # Read-mostly snapshots, replaced wholesale (lock-free reads on the hot path).
        self._serving: dict[str, dict[int, object]] = {}
        self._latest: dict[str, object] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._stop = threading.Event()
        self._poll_thread: threading.Thread | None = None

    # ================================================================== request side
    def acquire(self, name: str, version: int | None = None, label: str | None = None):
        """Return an acquired Servable (caller must ``release()`` it) or raise like ServerCore."""
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        if label is not None and label != "":
            version = self.version_for_label(name, label)
        if version is not None:
            servable = self._serving.get(name, {}).get(version)
            desc = f"Specific({name}, {version})"
        else:
            servable = self._latest.get(name)
            desc = f"Latest({name})"
        if servable is not None and not servable.acquire():
            # Lost a race with an unload: the snapshot was swapped before the servable closed, so
            # a fresh look finds the version that replaced it (TF Serving's handles are ref-counted
            # and never fail here).
            retry = self._serving.get(name, {}).get(version) if version is not None else self._latest.get(name)
            servable = retry if retry is not None and retry is not servable and retry.acquire() else None
        if servable is None:
            raise not_found(f"Servable not found for request: {desc}")
        return servable

    def acquire_spec(self, model_spec):
        which = model_spec.WhichOneof("version_choice")
        if which == "version":
            return self.acquire(model_spec.name, version=model_spec.version.value)
        if which == "version_label":
            return self.acquire(model_spec.name, label=model_spec.version_label)
        return self.acquire(model_spec.name)

    def version_for_label(self, name: str, label: str) -> int:
        v = self._labels.get(name, {}).get(label)
        if v is None:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        return v

    def model_status(self, name: str, version: int | None = None) -> list:
        """[(version, state, StatusError|None)], newest first (ServableStateMonitor order)."""
        with self._lock:
            recs = dict(self._records.get(name, {}))
        if version is not None:
            rec = recs.get(version)
            if rec is None:
                raise not_found(f"Could not find version {version} of model {name}")
            return [(rec.version, rec.state, rec.error)]
        if not recs:
            raise not_found(f"Could not find any versions of model {name}")
        return [(r.version, r.state, r.error) for r in sorted(recs.values(), key=lambda r: -r.version)]

    def config(self) -> ModelServerConfig:
        with self._cfg_lock:
            return copy.deepcopy(self._config) if self._config is not None else ModelServerConfig()

    def labels(self) -> dict:
        return {k: dict(v) for k, v in self._labels.items()}

    # ================================================================== config
    def reload_config(self, new_config: ModelServerConfig, *, wait_for_new_models: bool = True) -> None:
        with self._cfg_lock:
            old = self._config
            old_case = old.WhichOneof("config") if old is not None else None
            new_case = new_config.WhichOneof("config")
            is_first = old_case is None
            if not (is_first or (old_case == "model_config_list" and new_case == "model_config_list")):
                raise failed_precondition(
                    "Cannot transition to requested config. It is only legal to transition from one "
                    "ModelConfigList to another.")
            if new_case is None:
                log.info("Taking no action for empty config.")
                return
            if new_case != "model_config_list":
                raise invalid_argument("ModelServer does not yet support custom model config.")
            _validate(new_config)
            if old_case == "model_config_list":
                old_platforms = {mc.name: model_platform(mc) for mc in old.model_config_list.config}
                for mc in new_config.model_config_list.config:
                    was = old_platforms.get(mc.name)
                    if was is not None and was != model_platform(mc):
                        raise invalid_argument(
                            f"Illegal to change a model's platform. For model {mc.name} platform was "
                            f"{was} and new platform requested is {model_platform(mc)}")
            new_labels = self._compute_labels(new_config)
            self._config = copy.deepcopy(new_config)
            self._labels = new_labels
            old_names = set(self._model_configs)
            self._model_configs = {mc.name: copy.deepcopy(mc) for mc in new_config.model_config_list.config}
            new_names = [n for n in self._model_configs if n not in old_names]
            log.info("Adding/updating models.")
            for name in sorted(old_names - set(self._model_configs)):
                log.info("Removing model %s (no longer in the config)", name)
                self._apply_aspired(name, set())
            for name, mc in self._model_configs.items():
                log.info(" (Re-)adding model: %s", name)
                self._sync_model(name, mc)
            if wait_for_new_models and new_names:
                self._wait_until_available(new_names)
            log.info("Finished reloading config")

    def _compute_labels(self, cfg: ModelServerConfig) -> dict:
        new_map: dict[str, dict[str, int]] = {}
        with self._lock:
            records = {n: dict(r) for n, r in self._records.items()}
        for mc in cfg.model_config_list.config:
            recs = records.get(mc.name, {})
            for label, version in mc.version_labels.items():
                allow_any = False
                if self.allow_labels_for_unavailable:
                    existing = self._labels.get(mc.name, {}).get(label)
                    allow_any = not (existing is not None and existing != version)
                rec = recs.get(version)
                if not allow_any and (rec is None or rec.state != AVAILABLE):
                    raise failed_precondition(
                        f"Request to assign label to version {version} of model {mc.name}, which is not "
                        "currently available for inference")
                new_map.setdefault(mc.name, {})[label] = version
        return new_map

    def _wait_until_available(self, names) -> None:
        pending = list(names)
        while True:
            failures, still = [], []
            for name in pending:
                with self._lock:
                    recs = dict(self._records.get(name, {}))
                if not recs:
                    still.append(name)
                    continue
                mc = self._model_configs.get(name)
                latest = max(recs)
                rec = recs[latest]
                if rec.state == AVAILABLE:
                    continue
                if rec.state == END and rec.error is not None:
                    failures.append(f"{{{{name: {name} version: {latest}}} due to error: {rec.error}}}, ")
                elif mc is not None:
                    still.append(name)
            if failures:
                raise StatusError(Code.UNKNOWN,
                                  f"{len(failures)} model(s) did not become available: {{{''.join(failures)}}}")
            if not still:
                return
            for name in still:
                if not hasattr(self, "_warned_empty"):
                    self._warned_empty = set()
                if name not in self._warned_empty:
                    self._warned_empty.add(name)
                    mc = self._model_configs.get(name)
                    log.warning("No versions of servable %s found under base path %s. Waiting.",
                                name, mc.base_path if mc else "?")
            if self._stop.wait(max(self.fs_poll_seconds, 0.2) if self.fs_poll_seconds > 0 else 0.5):
                raise StatusError(Code.CANCELLED, "Server is shutting down")
            pending = still
            for name in pending:
                mc = self._model_configs.get(name)
                if mc is not None:
                    self._sync_model(name, mc)

    # ================================================================== polling
    def start_polling(self) -> None:
        if self.fs_poll_seconds <= 0 or self._poll_thread is not None:
            return
        self._poll_thread = threading.Thread(target=self._poll_loop, name="fs_poll", daemon=True)
        self._poll_thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.fs_poll_seconds):
            try:
                self.poll_once()
            except Exception:  # pragma: no cover - keep polling
                log.exception("File system poll failed")

    def poll_once(self) -> None:
        with self._cfg_lock:
            for name, mc in list(self._model_configs.items()):
                if self._stop.is_set():
                    return
                self._sync_model(name, mc)

    def _sync_model(self, name: str, mc) -> None:
        base = mc.base_path
        if base.startswith("s3://"):
            if not hasattr(self, "_s3_cache"):
                self._s3_cache = S3VersionCache()
            base = self._s3_cache.sync(base, mc)
            if base is None:
                return
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
        aspired = aspired_versions(mc, complete)
        self._apply_aspired(name, aspired, complete)

    def _apply_aspired(self, name: str, aspired: set, complete: dict | None = None) -> None:
        complete = complete or {}
        with self._lock:
            recs = self._records.setdefault(name, {})
            current = dict(recs)
        for v in sorted(aspired, reverse=True):
            rec = current.get(v)
            path, fp = complete[v]
            if rec is not None and rec.state in (AVAILABLE, LOADING, START):
                continue
            if rec is not None and rec.state == END and rec.error is not None and not rec.retry \
                    and rec.fingerprint == fp:
                continue  # failed before on identical contents
            if self._stop.is_set():
                return
            self._load(name, v, path, fp)
        # availability-preserving unloads
        while True:
            with self._lock:
                recs = dict(self._records.get(name, {}))
            has_aspired = any(v in aspired for v in recs) and bool(aspired)
            has_aspired_serving = any(r.state == AVAILABLE and v in aspired for v, r in recs.items())
            unaspired_serving = sorted(v for v, r in recs.items() if r.state == AVAILABLE and v not in aspired)
            if unaspired_serving and (has_aspired_serving or len(unaspired_serving) > 1 or not has_aspired):
                self._unload(name, recs[unaspired_serving[0]])
            else:
                break

    def _publish(self, name: str) -> None:
        """Rebuild the lock-free serving snapshot of one model (call with _lock held)."""
        recs = self._records.get(name, {})
        avail = {v: r.servable for v, r in recs.items() if r.state == AVAILABLE and r.servable is not None}
        serving = dict(self._serving)
        latest = dict(self._latest)
        if avail:
            serving[name] = avail
            latest[name] = avail[max(avail)]
        else:
            serving.pop(name, None)
            latest.pop(name, None)
        self._serving, self._latest = serving, latest

    def _load(self, name: str, version: int, path: str, fp) -> None:
        rec = VersionRecord(version, START, path=path, fingerprint=fp)
        with self._lock:
            self._records.setdefault(name, {})[version] = rec
        log.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
        rec.state = LOADING
        t0 = time.monotonic()
        servable = None
        try:
            servable = self._factory(name, version, path, batcher=self._batcher)
            n = servable.warmup()
        except BaseException as exc:  # noqa: BLE001 - report any load failure as END
            err = _load_error(exc)
            if servable is not None:
                try:
                    servable.close(wait_s=0)
                except Exception:  # pragma: no cover
                    pass
            changed = savedmodel_fingerprint(path) != fp
            with self._lock:
                rec.state, rec.error, rec.retry = END, err, changed
            log.error("Loading servable: {name: %s version: %d} failed: %s%s", name, version, err,
                      " (directory changed while loading; will retry)" if changed else "")
            if not isinstance(exc, Exception):
                raise
            return
        with self._lock:
            rec.servable = servable
            rec.state = AVAILABLE
            self._publish(name)
        log.info("Successfully loaded servable version {name: %s version: %d} in %.2fs (%d warmup records)",
                 name, version, time.monotonic() - t0, n)

    def _unload(self, name: str, rec: VersionRecord) -> None:
        log.info("Unloading servable version {name: %s version: %d}", name, rec.version)
        with self._lock:
            rec.state = UNLOADING
            self._publish(name)
        servable = rec.servable
        try:
            if servable is not None:
                servable.close()
        finally:
            with self._lock:
                rec.servable = None
                rec.state = END
        log.info("Done unloading servable version {name: %s version: %d}", name, rec.version)

    # ================================================================== shutdown
    def stop(self, unload: bool = True) -> None:
        self._stop.set()
        if self._poll_thread is not None:
            self._poll_thread.join(timeout=30)
        if unload:
            with self._cfg_lock:
                for name in list(self._records):
                    self._apply_aspired(name, set())
