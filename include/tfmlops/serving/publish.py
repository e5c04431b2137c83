"""Publish a SavedModel as a numbered version directory that TF Serving (or the local server) polls.

Layout: ``<models_root>/<model>/<N>/`` holding ``saved_model.pb`` and ``variables/``. A version
appears atomically: it is copied into a hidden temporary directory on the same filesystem, then
renamed to ``<N>``; a server that polls the base path never sees a partial version. A number is
never reused: publishing the same content again is a no-op, other content under an existing
number is an error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path


class PublishError(RuntimeError):
    """The version cannot be published as asked; nothing was changed."""


def content_hash(directory: str | Path) -> str:
    """SHA-256 over the relative paths and bytes of every file under ``directory``."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def check_saved_model(directory: str | Path) -> None:
    directory = Path(directory)
    if not (directory / "saved_model.pb").is_file():
        raise PublishError(f"{directory}: not a SavedModel (no saved_model.pb)")
    if not (directory / "variables").is_dir():
        raise PublishError(f"{directory}: not a complete SavedModel (no variables/ directory)")


def publish_version(saved_model_dir: str | Path, models_root: str | Path, model_name: str, version: int) -> dict:
    """Copy ``saved_model_dir`` to ``<models_root>/<model_name>/<version>`` atomically.

    Returns ``{"path", "version", "content_hash", "published"}``; ``published`` is False when the
    same content was already there."""
    if version < 1:
        raise PublishError(f"version must be a positive integer, got {version}")
    check_saved_model(saved_model_dir)
    base = Path(models_root) / model_name
    target = base / str(version)
    digest = content_hash(saved_model_dir)
    if target.exists():
        existing = content_hash(target)
        if existing != digest:
            raise PublishError(f"{target} already holds other content (hash {existing[:12]}, new {digest[:12]}); "
                               "version numbers are never reused")
        return {"path": str(target), "version": version, "content_hash": digest, "published": False}
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".tmp-{version}-{uuid.uuid4().hex}"
    try:
        shutil.copytree(saved_model_dir, staging)
        _fsync_tree(staging)
        os.rename(staging, target)  # atomic on one filesystem; fails if target appeared meanwhile
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise PublishError(f"could not publish {saved_model_dir} as {target}: {exc}") from exc
    return {"path": str(target), "version": version, "content_hash": digest, "published": True}


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def published_versions(models_root: str | Path, model_name: str) -> list[int]:
    base = Path(models_root) / model_name
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def ensure_model_config(config_file: str | Path, model_name: str, base_path: str):
    """Make sure the server's ModelServerConfig file lists ``model_name`` at ``base_path`` (the
    path as the server sees it). Other models and settings are kept. Returns ``(config, changed)``;
    the file is rewritten atomically only when something changed."""
    from tfmlops.serving.config import ModelServerConfig, load_config, write_config

    config = load_config(config_file) if Path(config_file).exists() else ModelServerConfig()
    for entry in config.model_config_list.config:
        if entry.name == model_name:
            if entry.base_path == base_path:
                return config, False
            entry.base_path = base_path
            break
    else:
        entry = config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = model_name, base_path, "tensorflow"
    write_config(config_file, config)
    return config, True
