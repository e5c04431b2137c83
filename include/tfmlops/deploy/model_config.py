"""What an endpoint is asked to serve: edits of its ``ModelServerConfig`` (version policy and
``version_labels`` per model), applied by writing the server's config file and
``HandleReloadConfigRequest``. The edits return copies; the current config is the file's."""

from __future__ import annotations

import copy
from pathlib import Path

from .client import ServingError
from .endpoint import Endpoint


def read_config(ep: Endpoint):
    from tfmlops.serving.config import ModelServerConfig, load_config

    if ep.model_config_file and Path(ep.model_config_file).exists():
        return load_config(ep.model_config_file)
    return copy.deepcopy(ep.config) if ep.config is not None else ModelServerConfig()


def with_request_logging(ep: Endpoint, cfg):
    """``cfg`` where each model without a ``logging_config`` gets the endpoint's (when it has one)."""
    if not ep.request_log_prefix:
        return cfg
    if not 0.0 <= ep.request_log_sampling_rate <= 1.0:
        raise ValueError(f"{ep.name}: request_log_sampling_rate must be in [0, 1], got {ep.request_log_sampling_rate}")
    cfg = copy.deepcopy(cfg)
    for entry in cfg.model_config_list.config:
        if not entry.HasField("logging_config"):
            lc = entry.logging_config
            lc.log_collector_config.filename_prefix = f"{ep.request_log_prefix.rstrip('/')}/{entry.name}/requests"
            lc.sampling_config.sampling_rate = ep.request_log_sampling_rate
    return cfg


def apply_config(ep: Endpoint, cfg) -> None:
    """Write the config file first (a server polling it sees the same config), then
    HandleReloadConfigRequest; on a rejected reload the previous file is restored."""
    from tfmlops.serving.config import write_config

    cfg = with_request_logging(ep, cfg)
    previous = read_config(ep)
    if ep.model_config_file:
        write_config(ep.model_config_file, cfg)
    try:
        ep.client.reload_config(cfg)
    except ServingError:
        if ep.model_config_file:
            write_config(ep.model_config_file, previous)
        raise
    ep.config = copy.deepcopy(cfg)


def find_entry(cfg, model: str):
    for entry in cfg.model_config_list.config:
        if entry.name == model:
            return entry
    return None


def _entry(cfg, model: str, base_path: str):
    entry = find_entry(cfg, model)
    if entry is None:
        entry = cfg.model_config_list.config.add()
        entry.name, entry.model_platform = model, "tensorflow"
    entry.base_path = base_path
    return entry


def with_versions(cfg, model: str, base_path: str, versions, labels: dict | None) -> object:
    """A copy of ``cfg`` where ``model`` serves ``specific {versions}`` (or ``latest {1}`` when
    ``versions == "latest"``) with exactly ``labels``."""
    cfg = copy.deepcopy(cfg)
    entry = _entry(cfg, model, base_path)
    entry.model_version_policy.Clear()
    if versions == "latest":
        entry.model_version_policy.latest.num_versions = 1
    else:
        entry.model_version_policy.specific.versions.extend(sorted(set(int(v) for v in versions)))
    entry.version_labels.clear()
    for label, v in (labels or {}).items():
        entry.version_labels[label] = int(v)
    return cfg


def without_model(cfg, model: str):
    cfg = copy.deepcopy(cfg)
    keep = [copy.deepcopy(e) for e in cfg.model_config_list.config if e.name != model]
    del cfg.model_config_list.config[:]
    cfg.model_config_list.config.extend(keep)
    return cfg


def referenced_versions(cfg, model: str) -> set:
    """Versions ``model``'s entry names (policy ``specific`` or a label); empty without an entry."""
    entry = find_entry(cfg, model)
    if entry is None:
        return set()
    refs = set(entry.version_labels.values())
    if entry.model_version_policy.WhichOneof("policy_choice") == "specific":
        refs |= set(entry.model_version_policy.specific.versions)
    return refs
