"""Read and write bytes at a local path or an ``s3://bucket/key`` URI (boto3).

TensorFlow 2.21's ``tf.io.gfile`` has no S3 scheme, so S3 goes through a boto3 client that the
caller builds (the Airflow hook builds it from the ``aws_default`` connection). The client default
and the paginated listing are the model server's (it reads S3 base paths the same way and may not
import the rest of the library).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

from tfmlops.serving.sources.s3_cache import list_s3_keys  # noqa: F401  (part of this module's API)
from tfmlops.serving.sources.s3_cache import s3_client_or_default as s3


# Names that become one path segment (model, dataset, partition id): start with a letter or digit,
# then letters, digits, "_", "." or "-" ("." and ".." cannot climb a directory, "/" cannot nest).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


def checked_name(value, what: str) -> str:
    """``value`` when it is a valid single path segment, else ValueError naming ``what`` and why."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a valid name: use letters, digits, '_', '.' and '-', starting "
                         "with a letter or digit (no path separators, not '.' or '..')")
    return value


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def read_bytes(uri: str, s3_client=None) -> bytes:
    """Raise FileNotFoundError when the object or file does not exist."""
    if uri.startswith("s3://"):
        bucket, key = split_s3_uri(uri)
        client = s3(s3_client)
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(uri) from exc
        except client.exceptions.NoSuchBucket as exc:
            raise FileNotFoundError(uri) from exc
    return Path(uri).read_bytes()


def write_bytes(uri: str, payload: bytes, s3_client=None) -> None:
    if uri.startswith("s3://"):
        bucket, key = split_s3_uri(uri)
        s3(s3_client).put_object(Bucket=bucket, Key=key, Body=payload)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(payload)
    tmp.replace(path)
