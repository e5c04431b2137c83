"""Publish a SavedModel as a numbered version directory that TF Serving (or the local server) polls.

Layout: ``<models_root>/<model>/<N>/`` holding ``saved_model.pb`` and ``variables/``. A version
appears atomically: it is copied into a hidden temporary directory on the same filesystem, then
renamed to ``<N>``; a server that polls the base path never sees a partial version. A number is
never reused: publishing the same content again is a no-op, other content under an existing
number is an error.

On ``s3://bucket/prefix`` (no rename there) a version is uploaded file by file: everything else
first, ``saved_model.pb`` last (a TF Serving that polls S3 only considers a version once its
``saved_model.pb`` exists), then the completion marker ``<N>/_tfmlops_complete.json`` (file list,
sizes, content hash). ``tf-serving-local`` serves an S3 base path through a local cache and only
takes versions whose marker is there. A killed upload is simply redone by the next call.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from tfmlops.serving.sources.s3_cache import COMPLETE_MARKER, complete_s3_versions, read_marker, split_s3_prefix
from tfmlops.storage import checked_name, list_s3_keys, s3


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


def publish_version(saved_model_dir: str | Path, models_root: str | Path, model_name: str, version: int,
                    *, s3_client=None, on_file: Callable[[str], None] | None = None) -> dict:
    """Copy ``saved_model_dir`` to ``<models_root>/<model_name>/<version>`` atomically.

    ``models_root`` may be ``s3://bucket/prefix`` (see :func:`publish_version_s3`). ``on_file`` is
    called with each relative path just before it is copied (progress reporting).
    Returns ``{"path", "version", "content_hash", "published"}``; ``published`` is False when the
    same content was already there."""
    checked_name(model_name, "model name")
    if str(models_root).startswith("s3://"):
        return publish_version_s3(saved_model_dir, str(models_root), model_name, version, s3_client=s3_client,
                                  on_file=on_file)
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
    for stale in base.glob(f".tmp-{version}-*"):  # left by a publish that was killed midway
        shutil.rmtree(stale, ignore_errors=True)
    staging = base / f".tmp-{version}-{uuid.uuid4().hex}"
    try:
        if on_file is None:
            shutil.copytree(saved_model_dir, staging)
        else:
            def _copy(src, dst):
                on_file(Path(src).relative_to(saved_model_dir).as_posix())
                return shutil.copy2(src, dst)
            shutil.copytree(saved_model_dir, staging, copy_function=_copy)
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


def published_versions(models_root: str | Path, model_name: str, *, s3_client=None) -> list[int]:
    """Complete versions under the model's base path (on S3: those with the completion marker)."""
    checked_name(model_name, "model name")
    if str(models_root).startswith("s3://"):
        return sorted(complete_s3_versions(f"{str(models_root).rstrip('/')}/{model_name}", s3_client))
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


def remove_version(models_root: str | Path, model_name: str, version: int, *, s3_client=None) -> bool:
    """Delete a published version (retirement). Local: renamed aside first (atomic for a poller),
    then deleted. S3: the marker goes first, so a server never takes a half-deleted version."""
    checked_name(model_name, "model name")
    if str(models_root).startswith("s3://"):
        bucket, prefix = split_s3_prefix(f"{str(models_root).rstrip('/')}/{model_name}/{int(version)}")
        client = s3(s3_client)
        keys = list_s3_keys(client, bucket, prefix + "/")
        if not keys:
            return False
        marker = f"{prefix}/{COMPLETE_MARKER}"
        if marker in keys:
            client.delete_object(Bucket=bucket, Key=marker)
        for key in keys:
            if key != marker:
                client.delete_object(Bucket=bucket, Key=key)
        return True
    target = Path(models_root) / model_name / str(int(version))
    if not target.exists():
        return False
    trash = target.parent / f".retired-{version}-{uuid.uuid4().hex}"
    os.rename(target, trash)
    shutil.rmtree(trash, ignore_errors=True)
    return True


# ---------------------------------------------------------------------------------- S3
def publish_version_s3(saved_model_dir: str | Path, models_root: str, model_name: str, version: int, *,
                       s3_client=None, on_file: Callable[[str], None] | None = None) -> dict:
    """Upload ``saved_model_dir`` to ``<models_root>/<model_name>/<version>/`` on S3: every other
    file first, ``saved_model.pb`` last, then the completion marker. Idempotent: the same content
    already complete is a no-op; other content under a completed number is an error; an
    incomplete upload (killed midway) is redone."""
    if version < 1:
        raise PublishError(f"version must be a positive integer, got {version}")
    check_saved_model(saved_model_dir)
    saved_model_dir = Path(saved_model_dir)
    base_uri = f"{models_root.rstrip('/')}/{model_name}"
    target = f"{base_uri}/{version}"
    digest = content_hash(saved_model_dir)
    client = s3(s3_client)
    marker = read_marker(base_uri, version, client)
    if marker is not None:
        if marker.get("content_hash") != digest:
            raise PublishError(f"{target} already holds other content (hash {str(marker.get('content_hash'))[:12]}, "
                               f"new {digest[:12]}); version numbers are never reused")
        return {"path": target, "version": version, "content_hash": digest, "published": False}
    bucket, prefix = split_s3_prefix(target)
    files = sorted((p.relative_to(saved_model_dir).as_posix() for p in saved_model_dir.rglob("*") if p.is_file()),
                   key=lambda rel: (rel == "saved_model.pb", rel))  # saved_model.pb last
    sizes = {}
    try:
        for rel in files:
            if on_file is not None:
                on_file(rel)
            path = saved_model_dir / rel
            client.upload_file(str(path), bucket, f"{prefix}/{rel}")
            sizes[rel] = path.stat().st_size
        body = json.dumps({"model": model_name, "version": version, "content_hash": digest, "files": sizes},
                          sort_keys=True).encode()
        client.put_object(Bucket=bucket, Key=f"{prefix}/{COMPLETE_MARKER}", Body=body)
    except Exception as exc:  # botocore errors: the next call redoes the upload
        raise PublishError(f"could not publish {saved_model_dir} as {target}: {exc}") from exc
    return {"path": target, "version": version, "content_hash": digest, "published": True}
