"""``s3://bucket/prefix`` base paths: a local cache of the complete versions (tf-serving-local only).

TF Serving reads S3 through TensorFlow's filesystem layer; TF 2.21 has no S3 filesystem, so there
is no TF Serving source file this mirrors. Instead each poll lists the prefix with boto3 (endpoint
and credentials from the usual ``AWS_*`` variables, e.g. ``AWS_ENDPOINT_URL_S3``), downloads the
aspired versions that carry the publisher's completion marker into the cache
(``TF_SERVING_LOCAL_S3_CACHE``, default a temp dir) atomically, and drops cached versions that left
S3. :class:`~tfmlops.serving.sources.storage_path.FileSystemStoragePathSource` then lists the
cache like any local base path.

The completion marker ``<N>/_tfmlops_complete.json`` (file list, sizes, content hash) is written
last by ``tfmlops.deploy.publish`` (the writer, which imports the reading side from here so both
agree on it). A version without its marker, or whose listed objects are not all there with their
sizes (an upload in progress or killed), is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger("tfmlops.serving")

COMPLETE_MARKER = "_tfmlops_complete.json"


def split_s3_prefix(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ``("bucket", "some/prefix")``."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return parsed.netloc, parsed.path.strip("/")


def s3_client_or_default(s3_client=None):
    """The given boto3 S3 client, or a default one (endpoint and credentials from the environment)."""
    if s3_client is not None:
        return s3_client
    import boto3

    return boto3.client("s3")


def list_s3_keys(client, bucket: str, prefix: str) -> dict[str, int]:
    """{key: size} of every object under ``prefix`` (all pages)."""
    keys: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            keys[obj["Key"]] = obj["Size"]
    return keys


def read_marker(base_uri: str, version: int, s3_client=None) -> dict | None:
    """The completion marker of ``<base_uri>/<version>``, or None when the version is incomplete."""
    bucket, prefix = split_s3_prefix(f"{base_uri.rstrip('/')}/{int(version)}")
    client = s3_client_or_default(s3_client)
    try:
        body = client.get_object(Bucket=bucket, Key=f"{prefix}/{COMPLETE_MARKER}")["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    return json.loads(body)


MAX_MARKER_BYTES = 1024 * 1024


def safe_relative_path(rel) -> bool:
    """A marker entry is a plain relative path inside the version: no absolute path, no ``..`` or
    ``.`` part, no backslash, no empty part (it becomes a file under the local cache)."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def complete_s3_versions(base_uri: str, s3_client=None) -> dict[int, dict]:
    """{version: {relative file: size}} of the versions under ``base_uri`` that carry the marker
    (one listing; the marker's own file list is read for each)."""
    bucket, prefix = split_s3_prefix(base_uri)
    client = s3_client_or_default(s3_client)
    keys = list_s3_keys(client, bucket, prefix + "/")
    found: dict[int, dict] = {}
    for key in keys:
        rel = key[len(prefix) + 1:]
        head, _, name = rel.partition("/")
        if name == COMPLETE_MARKER and head.isascii() and head.isdigit():
            if keys[key] > MAX_MARKER_BYTES:
                log.warning("Ignoring %s/%s: its completion marker is %d bytes", base_uri, head, keys[key])
                continue
            try:
                marker = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
                files = marker.get("files", {})
                bad = [f for f, size in files.items() if not safe_relative_path(f) or not isinstance(size, int)]
            except (ValueError, AttributeError) as exc:
                log.warning("Ignoring %s/%s: unreadable completion marker (%s)", base_uri, head, exc)
                continue
            if bad:
                log.warning("Ignoring %s/%s: its completion marker lists paths outside the version: %s",
                            base_uri, head, bad[:5])
                continue
            # every listed object must be there with its size (a re-upload in progress is not complete)
            if all(keys.get(f"{prefix}/{head}/{f}") == size for f, size in files.items()):
                found[int(head)] = {"files": files, "content_hash": marker.get("content_hash")}
    return found


def download_s3_version(base_uri: str, version: int, files: dict, dst: str | Path, s3_client=None) -> Path:
    """Download a complete S3 version into ``dst/<version>`` atomically (temp dir + rename)."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    target = dst / str(int(version))
    if target.exists():
        return target
    bucket, prefix = split_s3_prefix(f"{base_uri.rstrip('/')}/{int(version)}")
    client = s3_client_or_default(s3_client)
    staging = dst / f".tmp-{version}-{uuid.uuid4().hex}"
    try:
        for rel in files:
            local = (staging / rel).resolve()
            if not safe_relative_path(rel) or staging.resolve() not in local.parents:
                raise ValueError(f"{base_uri}/{version}: marker entry {rel!r} is outside the version")
            local.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, f"{prefix}/{rel}", str(local))
        staging.mkdir(parents=True, exist_ok=True)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


class S3VersionCache:
    """Mirror of the complete versions under S3 base paths, one local directory per base path."""

    def __init__(self, root: str | None = None, s3_client=None):
        self.root = root or os.environ.get("TF_SERVING_LOCAL_S3_CACHE") or tempfile.mkdtemp(prefix="tfsl-s3-cache-")
        self._client = s3_client
        self._warned: set = set()

    def client(self):
        if self._client is None:
            self._client = s3_client_or_default()
        return self._client

    def local_base(self, base_uri: str) -> str:
        digest = hashlib.sha256(base_uri.encode()).hexdigest()[:16]
        return os.path.join(self.root, digest)

    def sync(self, base_uri: str, select_versions) -> str | None:
        """Bring the cache of ``base_uri`` up to date; returns its local directory (None if S3 failed
        before anything was cached). ``select_versions(complete versions) -> set`` is the model's
        version policy: only the versions it picks are downloaded."""
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
        wanted = select_versions(complete)
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
