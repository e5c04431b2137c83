"""Where sampled request logs go: TFRecord files of ``tensorflow.serving.PredictionLog`` records,
one file at a time, rotated by size and age.

TF Serving's open-source build registers no ``LogCollector`` (``logging_config`` fails there with
"No request-logger-creator provided"), so this has no source file to mirror; it follows the
interface of ``tensorflow_serving/core/log_collector.h`` (``CollectMessage``, ``Flush``) and the
``LogCollectorConfig`` fields: ``type`` must be ``""`` or ``"tfrecord"``, ``filename_prefix`` is a
local path prefix or ``s3://bucket/prefix``.

Files are written as ``<prefix>-<UTC time>-<pid>-<seq>.tfrecord.partial`` and renamed to
``….tfrecord`` when closed: at ``max_file_bytes``, after ``max_file_age_s``, and when the server
stops (SIGTERM) — a reader only ever sees complete files, and a record is never split. With an
``s3://`` prefix the closed file is uploaded (boto3, ``AWS_*`` variables) and then removed from
the local spool (``<spool dir>/<bucket>/<key>``); a failed upload stays in the spool and is retried at the next
rotation and at shutdown.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time

from ..errors import Code, StatusError, invalid_argument

log = logging.getLogger("tfmlops.serving")

COLLECTOR_TYPES = ("", "tfrecord")
DEFAULT_MAX_FILE_BYTES = 64 << 20
DEFAULT_MAX_FILE_AGE_S = 300.0

RECORD_OVERHEAD = 16  # a TFRecord's length (8 bytes) and two masked CRC-32C (4 + 4)


class TFRecordLogCollector:
    """``LogCollector`` writing each collected message as a TFRecord (thread-safe)."""

    def __init__(self, filename_prefix: str, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 max_file_age_s: float = DEFAULT_MAX_FILE_AGE_S, s3_client=None, spool_dir: str | None = None):
        if not filename_prefix:
            raise invalid_argument("logging_config.log_collector_config.filename_prefix must not be empty")
        self.s3 = filename_prefix.startswith("s3://")
        if self.s3:
            from ..sources.s3_cache import split_s3_prefix
            self.bucket, self.key_prefix = split_s3_prefix(filename_prefix)
            spool = spool_dir or os.path.join(tempfile.gettempdir(), "tf-serving-local-request-logs")
            self.key_dir, base = os.path.split(self.key_prefix)
            # the spool mirrors bucket/key so that two prefixes never share file names
            self.prefix = os.path.join(spool, self.bucket, self.key_dir, base or "requests")
            self._s3_client = s3_client
        else:
            self.prefix = filename_prefix
        os.makedirs(os.path.dirname(os.path.abspath(self.prefix)), exist_ok=True)
        self.max_file_bytes = max(1, int(max_file_bytes))
        self.max_file_age_s = max(0.001, float(max_file_age_s))
        self._lock = threading.Lock()
        self._fh = None
        self._path = ""
        self._opened = 0.0
        self._bytes = 0
        self._seq = 0
        self._closed = False

    # ------------------------------------------------------------------ files
    def _open(self) -> None:
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self._path = f"{self.prefix}-{stamp}-{os.getpid()}-{self._seq:05d}.tfrecord"
        import tensorflow as tf  # the server has it loaded already: its C++ TFRecord writer (CRC-32C)

        self._fh = tf.io.TFRecordWriter(self._path + ".partial")
        self._opened = time.monotonic()
        self._bytes = 0

    def _close(self) -> None:
        if self._fh is None:
            return
        fh, path = self._fh, self._path
        self._fh = None
        fh.close()  # flushes and syncs
        os.replace(path + ".partial", path)
        if self.s3:
            self._upload_spool()

    def _upload_spool(self) -> None:
        from ..sources.s3_cache import s3_client_or_default
        spool = os.path.dirname(os.path.abspath(self.prefix))
        base = os.path.basename(self.prefix)
        for name in sorted(os.listdir(spool)):
            if not (name.startswith(base) and name.endswith(".tfrecord")):
                continue
            local = os.path.join(spool, name)
            key = f"{self.key_dir}/{name}" if self.key_dir else name
            try:
                self._s3_client = s3_client_or_default(self._s3_client)
                self._s3_client.upload_file(local, self.bucket, key)
            except Exception as exc:  # noqa: BLE001 - boto3/botocore errors: kept in the spool, retried
                log.warning("request log %s not uploaded yet (%s); retried at the next rotation", local, exc)
                continue
            os.remove(local)

    # ------------------------------------------------------------------ LogCollector
    def collect_message(self, message) -> None:
        self.collect_serialized(message.SerializeToString())

    def collect_serialized(self, data: bytes) -> None:
        size = len(data) + RECORD_OVERHEAD
        with self._lock:
            if self._closed:
                raise StatusError(Code.UNAVAILABLE, "the request log collector is closed (server stopping)")
            if self._fh is not None and (self._bytes + size > self.max_file_bytes
                                         or time.monotonic() - self._opened >= self.max_file_age_s):
                self._close()
            if self._fh is None:
                self._open()
            self._fh.write(data)
            self._bytes += size

    def rotate_if_due(self) -> None:
        """Close the current file once it is older than ``max_file_age_s`` (called periodically,
        so an idle server does not keep a complete log hidden in a ``.partial`` file)."""
        with self._lock:
            if self._fh is not None and time.monotonic() - self._opened >= self.max_file_age_s:
                self._close()

    def flush(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._close()


def create_log_collector(config, **options) -> TFRecordLogCollector:
    """A collector for a ``LogCollectorConfig``; an unknown ``type`` is an error naming it."""
    if config.type not in COLLECTOR_TYPES:
        raise invalid_argument(f"Unknown log collector type: {config.type!r} (tf-serving-local writes "
                               f"{' or '.join(repr(t) for t in COLLECTOR_TYPES)}: TFRecord files)")
    return TFRecordLogCollector(config.filename_prefix, **options)
