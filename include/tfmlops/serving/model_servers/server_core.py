"""The model server's core, mirroring TF Serving's
``tensorflow_serving/model_servers/server_core.cc``: it owns and connects the
:class:`~tfmlops.serving.sources.storage_path.FileSystemStoragePathSource`, the
:class:`~tfmlops.serving.core.aspired_versions_manager.AspiredVersionsManager` and the
:class:`~tfmlops.serving.core.servable_state_monitor.ServableStateMonitor`, applies
``ModelServerConfig`` changes and keeps the version-label map.

* Config transitions as ServerCore::ReloadConfig: only from no config or one
  ModelConfigList to another, an empty config is no action, custom configs are refused, a
  model's platform may not change; ``validate_model_config_list`` applies the other checks.
* Like ServerCore::Create (and ReloadConfig), a config that adds models waits until their
  newest versions are AVAILABLE and fails with the errors of those that ended in END. The wait
  happens *after* the config is applied, outside every lock: the file system keeps being polled
  (new versions of every model keep loading) and a later config, e.g. one that fixes or removes
  a model that cannot load, is applied meanwhile (a model that leaves the config is no longer
  waited for). At start-up the wait is unbounded, as TF Serving's (``servable_state_waiter_timeout``
  is infinite and ``server.cc`` opens its ports after ``ServerCore::Create``); a later reload waits
  at most ``reload_wait_timeout_s`` (deviation: TF Serving waits for ever, holding ``config_mu_``),
  then fails with DEADLINE_EXCEEDED naming the models, which keep loading when their versions appear.
* Version labels follow ServerCore::UpdateModelVersionLabelMap: labels are recomputed
  from each new config *before* it is applied and may only point at AVAILABLE versions;
  with ``allow_version_labels_for_unavailable_models`` a label that is new (or keeps its
  version) may point at a version that is not available yet. Requests resolve labels here
  (ServerCore::GetServableHandle) before the manager looks the version up.
* Deviation: ``s3://bucket/prefix`` base paths are allowed (tf-serving-local only; TF 2.21 has
  no S3 filesystem); they are served through the cache of
  :mod:`tfmlops.serving.sources.s3_cache`.
* Request logging: each model's ``logging_config`` goes to the
  :class:`~tfmlops.serving.core.server_request_logger.ServerRequestLogger` after the models are
  updated (``MaybeUpdateServerRequestLogger``); the loggers are created, and so checked, before
  anything of the new config is applied.
* Deviation: the file system poll loop (``file_system_poll_wait_seconds``) runs here rather than
  in the source, under its own lock (``_poll_lock``: loads and unloads happen one model at a time),
  never under the config lock, which only guards the short swap of config and labels.
"""

from __future__ import annotations

import copy
import logging
import threading
import time

from ..config import ModelServerConfig, check_model_platforms, model_platform, validate_model_config_list
from ..core.aspired_versions_manager import AspiredVersionsManager
from ..core.servable_state_monitor import AVAILABLE, END, ServableStateMonitor
from ..core.server_request_logger import ServerRequestLogger
from ..errors import Code, StatusError, failed_precondition, invalid_argument
from ..sources.storage_path import FileSystemStoragePathSource

log = logging.getLogger("tfmlops.serving")


def _without_s3(cfg: ModelServerConfig) -> ModelServerConfig:
    """``cfg`` for ServerCore's checks, with ``s3://`` base paths (served through the S3 cache)
    standing as local ones."""
    if any(mc.base_path.startswith("s3://") for mc in cfg.model_config_list.config):
        cfg = copy.deepcopy(cfg)
        for mc in cfg.model_config_list.config:
            if mc.base_path.startswith("s3://"):
                mc.base_path = "/s3/" + mc.base_path[len("s3://"):]
    return cfg


class ServerCore:
    def __init__(self, *, file_system_poll_wait_seconds: int = 1,
                 allow_version_labels_for_unavailable_models: bool = False,
                 batch_scheduler=None, servable_factory=None, reload_wait_timeout_s: float = 300.0,
                 request_logger: ServerRequestLogger | None = None):
        self.fs_poll_seconds = file_system_poll_wait_seconds
        self.reload_wait_timeout_s = reload_wait_timeout_s
        self.allow_labels_for_unavailable = allow_version_labels_for_unavailable_models
        self.batcher = batch_scheduler
        self.request_logger = request_logger or ServerRequestLogger()
        self.servable_state_monitor = ServableStateMonitor()
        self._manager = AspiredVersionsManager(self.servable_state_monitor, batch_scheduler=batch_scheduler,
                                               servable_factory=servable_factory)
        self._source = FileSystemStoragePathSource(self._manager.set_aspired_versions)
        self._cfg_lock = threading.RLock()  # serialises config changes (never held while waiting or loading)
        self._poll_lock = threading.RLock()  # serialises polls of the base paths (and the loads they start)
        self._config: ModelServerConfig | None = None
        self._model_configs: dict = {}
        # Read-mostly snapshot, replaced wholesale (lock-free reads on the hot path).
        self._labels: dict[str, dict[str, int]] = {}
        self._warned_empty: set = set()  # models already reported as having no version yet
        self._stop = threading.Event()
        self._poll_thread: threading.Thread | None = None

    # ================================================================== request side
    def acquire(self, name: str, version: int | None = None, label: str | None = None):
        """Return an acquired Servable (caller must ``release()`` it) or raise like ServerCore."""
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        if label is not None and label != "":
            version = self.version_for_label(name, label)
        return self._manager.acquire(name, version)

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

    def config(self) -> ModelServerConfig:
        with self._cfg_lock:
            return copy.deepcopy(self._config) if self._config is not None else ModelServerConfig()

    def labels(self) -> dict:
        return {k: dict(v) for k, v in self._labels.items()}

    # ================================================================== config
    def reload_config(self, new_config: ModelServerConfig, *, wait_for_new_models: bool = True,
                      timeout_s: float | None = None) -> None:
        """Apply ``new_config`` (ServerCore::ReloadConfig), then wait for the models it adds: without a
        bound for the first config (start-up), at most ``timeout_s`` (default
        ``reload_wait_timeout_s``) for later ones; ``wait_for_new_models=False``: no wait."""
        first = self._config is None
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
            checked = _without_s3(new_config)
            validate_model_config_list(checked, check_platforms=False)  # upstream's order: names, paths,
            if old_case == "model_config_list":  # then ValidateNoModelsChangePlatforms, then the platforms
                old_platforms = {mc.name: model_platform(mc) for mc in old.model_config_list.config}
                for mc in new_config.model_config_list.config:
                    was = old_platforms.get(mc.name)
                    if was is not None and was != model_platform(mc):
                        raise invalid_argument(
                            f"Illegal to change a model's platform. For model {mc.name} platform was "
                            f"{was} and new platform requested is {model_platform(mc)}")
            check_model_platforms(checked)
            new_labels = self._compute_labels(new_config)
            loggers = self.request_logger.prepare(
                {mc.name: [mc.logging_config] for mc in new_config.model_config_list.config
                 if mc.HasField("logging_config")})
            self._config = copy.deepcopy(new_config)
            self._labels = new_labels
            old_names = set(self._model_configs)
            self._model_configs = {mc.name: copy.deepcopy(mc) for mc in new_config.model_config_list.config}
            model_configs = dict(self._model_configs)
        new_names = [n for n in model_configs if n not in old_names]
        log.info("Adding/updating models.")
        with self._poll_lock:
            for name in sorted(old_names - set(model_configs)):
                log.info("Removing model %s (no longer in the config)", name)
                self._manager.set_aspired_versions(name, set())
            for name, mc in model_configs.items():
                log.info(" (Re-)adding model: %s", name)
                self._source.poll_servable(name, mc)
            self.request_logger.apply(loggers)
        if wait_for_new_models and new_names:
            bound = None if first else (self.reload_wait_timeout_s if timeout_s is None else timeout_s)
            self._wait_until_available(new_names, bound, noun="servable(s)" if first else "model(s)")
        log.info("Finished reloading config")

    def _compute_labels(self, cfg: ModelServerConfig) -> dict:
        """ServerCore::UpdateModelVersionLabelMap (the new map; nothing is changed here)."""
        new_map: dict[str, dict[str, int]] = {}
        for mc in cfg.model_config_list.config:
            recs = self.servable_state_monitor.versions(mc.name)
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

    def _wait_until_available(self, names, timeout_s: float | None = None, noun: str = "model(s)") -> None:
        """Until the newest version of each model is AVAILABLE; fails with the errors of those that
        ended in END, worded as TF Serving's (``servable(s)``: the initial load of ServerCore::Create,
        load_servables_fast.cc; ``model(s)``: ServerCore::WaitUntilModelsAvailable on reloads)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pending = list(names)
        while True:
            failures, still = [], []
            for name in pending:
                recs = self.servable_state_monitor.versions(name)
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
                                  f"{len(failures)} {noun} did not become available: {{{''.join(failures)}}}")
            if not still:
                return
            if deadline is not None and time.monotonic() > deadline:
                waiting = ", ".join(f"{{name: {n}}}" for n in still)
                raise StatusError(Code.DEADLINE_EXCEEDED,
                                  f"{len(still)} {noun} did not become available within {timeout_s:g} s: "
                                  f"{{{waiting}}} (the config is applied; they load when their versions appear)")
            for name in still:
                if name not in self._warned_empty:
                    self._warned_empty.add(name)
                    mc = self._model_configs.get(name)
                    log.warning("No versions of servable %s found under base path %s. Waiting.",
                                name, mc.base_path if mc else "?")
            if self._stop.wait(max(self.fs_poll_seconds, 0.2) if self.fs_poll_seconds > 0 else 0.5):
                raise StatusError(Code.CANCELLED, "Server is shutting down")
            pending = still
            if self._poll_thread is None:  # no poll loop (yet, at start-up): poll the awaited models here
                with self._poll_lock:
                    for name in pending:
                        mc = self._model_configs.get(name)
                        if mc is not None:
                            self._source.poll_servable(name, mc)

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
        with self._poll_lock:
            for name, mc in list(self._model_configs.items()):
                if self._stop.is_set():
                    return
                self._source.poll_servable(name, mc)

    # ================================================================== shutdown
    def stop(self, unload: bool = True) -> None:
        self._stop.set()
        self.request_logger.close()
        self._manager.stop_loading()
        if self._poll_thread is not None:
            self._poll_thread.join(timeout=30)
        if unload:
            with self._poll_lock:
                self._manager.unload_all()
