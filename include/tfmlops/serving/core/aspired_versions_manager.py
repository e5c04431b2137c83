"""Loading, unloading and serving model versions, mirroring TF Serving's
``tensorflow_serving/core/aspired_versions_manager.cc`` with the
``availability_preserving_policy.cc`` version transitions (and ``basic_manager.cc``'s lookup of
a servable handle for a request).

* Availability preserving: new aspired versions are loaded (and warmed up) first, highest
  first; a version that is no longer aspired is unloaded only once an aspired version is
  AVAILABLE (or when no version is aspired at all, e.g. the model left the config). A
  version that fails to load ends in state END with its error, and versions already
  serving keep serving. Unloading waits for in-flight requests on that version.
* Deviation kept on purpose (robustness): if a load fails and the directory changed while
  loading (files still being written), the failed version is retried on the next poll; a
  version that failed on an unchanged directory is retried only when its contents
  (names/sizes/mtimes, :func:`~tfmlops.serving.sources.storage_path.savedmodel_fingerprint`)
  change.
* Requests look versions up in a snapshot of the AVAILABLE servables that is replaced wholesale
  on every change (lock-free reads on the hot path). States and errors go to the
  :class:`~tfmlops.serving.core.servable_state_monitor.ServableStateMonitor`.
* Deviation: loads and unloads run in the thread that changed the aspired versions (a config
  reload or a poll), not in threads the manager owns.
"""

from __future__ import annotations

import logging
import re
import threading
import time

from ..errors import Code, StatusError, from_tf_exception, not_found
from ..sources.storage_path import savedmodel_fingerprint
from .servable_state_monitor import AVAILABLE, END, LOADING, START, UNLOADING, ServableStateMonitor, VersionRecord

log = logging.getLogger("tfmlops.serving")


_UNPARSABLE_FILE_RE = re.compile(r"Cannot parse file b?'(.+?)':")


def _load_error(exc: BaseException) -> StatusError:
    if isinstance(exc, StatusError) or hasattr(exc, "error_code"):
        return from_tf_exception(exc)
    if isinstance(exc, FileNotFoundError):
        return StatusError(Code.NOT_FOUND, str(exc))
    name = type(exc).__name__
    if name == "DecodeError":
        return StatusError(Code.DATA_LOSS, f"Can't parse SavedModel: {exc}")
    unparsable = _UNPARSABLE_FILE_RE.match(str(exc)) if isinstance(exc, OSError) else None
    if unparsable:  # TensorFlow's loader on a corrupt saved_model.pb; TF Serving: ReadBinaryProto's error
        return StatusError(Code.DATA_LOSS, f"Can't parse {unparsable.group(1)} as binary proto")
    return StatusError(Code.UNKNOWN, f"{name}: {exc}")


class AspiredVersionsManager:
    def __init__(self, monitor: ServableStateMonitor, *, batch_scheduler=None, servable_factory=None):
        if servable_factory is None:
            from ..servables.saved_model_bundle import Servable as servable_factory  # noqa: N813
        self._monitor = monitor
        self._factory = servable_factory
        self._batcher = batch_scheduler
        self._stop = threading.Event()  # no new loads once set
        # Read-mostly snapshots, replaced wholesale (lock-free reads on the hot path).
        self._serving: dict[str, dict[int, object]] = {}
        self._latest: dict[str, object] = {}

    # ================================================================== request side
    def acquire(self, name: str, version: int | None = None):
        """Return an acquired Servable (caller must ``release()`` it) or raise NOT_FOUND."""
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

    # ================================================================== aspired versions
    def set_aspired_versions(self, name: str, aspired: set, complete: dict | None = None) -> None:
        """Load the aspired versions (``complete``: ``{version: (path, fingerprint)}``), then unload
        the others as the availability-preserving policy allows."""
        complete = complete or {}
        current = self._monitor.versions(name)
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
            recs = self._monitor.versions(name)
            has_aspired = any(v in aspired for v in recs) and bool(aspired)
            has_aspired_serving = any(r.state == AVAILABLE and v in aspired for v, r in recs.items())
            unaspired_serving = sorted(v for v, r in recs.items() if r.state == AVAILABLE and v not in aspired)
            if unaspired_serving and (has_aspired_serving or len(unaspired_serving) > 1 or not has_aspired):
                self._unload(name, recs[unaspired_serving[0]])
            else:
                break

    def _refresh_serving_snapshot(self, name: str) -> None:
        """Rebuild the lock-free serving snapshot of one model (call with the monitor's lock held)."""
        recs = self._monitor.versions(name)
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
        self._monitor.add(name, rec)
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
                except Exception:  # noqa: BLE001 - the load error is what gets reported  # pragma: no cover
                    pass
            changed = savedmodel_fingerprint(path) != fp
            with self._monitor.lock:
                rec.state, rec.error, rec.retry = END, err, changed
            log.error("Loading servable: {name: %s version: %d} failed: %s%s", name, version, err,
                      " (directory changed while loading; will retry)" if changed else "")
            if not isinstance(exc, Exception):
                raise
            return
        with self._monitor.lock:
            rec.servable = servable
            rec.state = AVAILABLE
            self._refresh_serving_snapshot(name)
        log.info("Successfully loaded servable version {name: %s version: %d} in %.2fs (%d warmup records)",
                 name, version, time.monotonic() - t0, n)

    def _unload(self, name: str, rec: VersionRecord) -> None:
        log.info("Unloading servable version {name: %s version: %d}", name, rec.version)
        with self._monitor.lock:
            rec.state = UNLOADING
            self._refresh_serving_snapshot(name)
        servable = rec.servable
        try:
            if servable is not None:
                servable.close()
        finally:
            with self._monitor.lock:
                rec.servable = None
                rec.state = END
        log.info("Done unloading servable version {name: %s version: %d}", name, rec.version)

    # ================================================================== shutdown
    def stop_loading(self) -> None:
        """No new loads from now on (a config change or poll in progress stops before its next one)."""
        self._stop.set()

    def unload_all(self) -> None:
        for name in self._monitor.model_names():
            self.set_aspired_versions(name, set())
