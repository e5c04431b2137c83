"""Server-side request batching, modelled on TF Serving's BatchingSession +
SharedBatchScheduler (``--enable_batching`` / ``--batching_parameters_file``).

Every session run of a loaded version goes through one queue per
(version, feed tensors, fetch tensors, per-input dtype and inner shape). Batch threads
(``num_batch_threads``) take a queue when it holds ``max_batch_size`` rows or its oldest
task has waited ``batch_timeout_micros``; the tasks' inputs are concatenated along the 0th
dimension (padded up to the next ``allowed_batch_sizes`` entry if set), run once, and the
outputs are split back. Errors use TF Serving's messages. TF Serving's batching metrics are
kept (``batching_session.cc``: ``queuing_latency{thread_pool_name}`` per task when its batch
is taken, ``wrapped_run_count`` per run of the wrapped session); ``stats()`` exposes more
counters so tests can see that merging happened (served at ``GET /monitoring/tfmlops/batching``,
a path real TF Serving answers with 404, so no TF Serving format changes).
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import numpy as np

from .config import BatchingOptions
from .errors import Code, StatusError, invalid_argument
from .util import monitoring

log = logging.getLogger("tfmlops.serving")

_queuing_latency = monitoring.sampler(
    "/tensorflow/serving/batching_session/queuing_latency",
    "Distribution of wall time spent (in microseconds) in queuing", ("thread_pool_name",),
    monitoring.exponential_buckets(100, 1.2, 52))
_wrapped_run_count = monitoring.counter(
    "/tensorflow/serving/batching_session/wrapped_run_count", "Total count of run calls on the wrapped session")


class _Task:
    __slots__ = ("values", "size", "enqueued", "timeout_ms", "done", "result", "error")

    def __init__(self, values, size, timeout_ms):
        self.values = values
        self.size = size
        self.enqueued = time.monotonic()
        self.timeout_ms = timeout_ms
        self.done = threading.Event()
        self.result = None
        self.error = None


class _Queue:
    __slots__ = ("servable", "feeds", "fetches", "tasks", "rows")

    def __init__(self, servable, feeds, fetches):
        self.servable = servable
        self.feeds = feeds
        self.fetches = fetches
        self.tasks = collections.deque()
        self.rows = 0


class BatchScheduler:
    def __init__(self, options: BatchingOptions):
        self.options = options
        self._timeout_s = options.batch_timeout_micros / 1e6
        self._queues: dict = {}
        self._cv = threading.Condition()
        self._stopping = False
        self._stats_lock = threading.Lock()
        self._stats = {"batches": 0, "tasks": 0, "rows": 0, "padded_rows": 0, "max_tasks_in_batch": 0,
                       "merged_batches": 0, "tasks_per_batch": collections.Counter()}
        self._threads = [threading.Thread(target=self._worker, name=f"{options.thread_pool_name}_{i}",
                                          daemon=True) for i in range(options.num_batch_threads)]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ client side
    def run(self, servable, feeds: tuple, values: list, fetches: tuple, timeout_ms=None) -> list:
        if not values:
            return servable.session_run(feeds, values, fetches, timeout_ms)
        size = None
        for v in values:
            if v.ndim == 0:
                raise invalid_argument("Batching Run() input tensors must have at least one dimension")
            if size is None:
                size = v.shape[0]
            elif v.shape[0] != size:
                raise invalid_argument("Batching Run() input tensors must have equal 0th-dimension size")
        opts = self.options
        limit = opts.max_batch_size
        if size > limit:
            if opts.enable_large_batch_splitting:
                return servable.session_run(feeds, values, fetches, timeout_ms)
            raise invalid_argument(f"Task size {size} is larger than maximum input batch size {limit}")
        key = (id(servable), feeds, fetches, tuple((v.dtype.str, v.shape[1:]) for v in values))
        task = _Task(values, size, timeout_ms)
        with self._cv:
            q = self._queues.get(key)
            if q is None:
                q = self._queues[key] = _Queue(servable, feeds, fetches)
            enqueued_batches = -(-(q.rows + size) // limit)
            if enqueued_batches > opts.max_enqueued_batches:
                raise StatusError(Code.UNAVAILABLE,
                                  "The batch scheduling queue to which this task was submitted is full")
            q.tasks.append(task)
            q.rows += size
            self._cv.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def drop_servable(self, servable) -> None:
        with self._cv:
            for key in [k for k, q in self._queues.items() if q.servable is servable]:
                q = self._queues.pop(key)
                for t in q.tasks:
                    t.error = StatusError(Code.UNAVAILABLE, "Servable was unloaded")
                    t.done.set()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()

    def stats(self) -> dict:
        with self._stats_lock:
            s = dict(self._stats)
            s["tasks_per_batch"] = {str(k): v for k, v in sorted(self._stats["tasks_per_batch"].items())}
        s["options"] = {"max_batch_size": self.options.max_batch_size,
                        "batch_timeout_micros": self.options.batch_timeout_micros,
                        "num_batch_threads": self.options.num_batch_threads,
                        "max_enqueued_batches": self.options.max_enqueued_batches,
                        "allowed_batch_sizes": list(self.options.allowed_batch_sizes)}
        return s

    # ------------------------------------------------------------------ batch threads
    def _take_batch(self):
        """Called with the lock held: pop a ready batch, or return (None, wait_seconds)."""
        now = time.monotonic()
        wait = None
        limit = self.options.max_batch_size
        best = None
        for key, q in self._queues.items():
            if not q.tasks:
                continue
            age = now - q.tasks[0].enqueued
            if q.rows >= limit or age >= self._timeout_s:
                if best is None or q.tasks[0].enqueued < best[1].tasks[0].enqueued:
                    best = (key, q)
            else:
                remaining = self._timeout_s - age
                wait = remaining if wait is None else min(wait, remaining)
        if best is None:
            return None, wait
        key, q = best
        batch, rows = [], 0
        while q.tasks and rows + q.tasks[0].size <= limit:
            t = q.tasks.popleft()
            batch.append(t)
            rows += t.size
        q.rows -= rows
        if not q.tasks:
            del self._queues[key]
        return (q, batch, rows), None

    def _worker(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._stopping:
                        return
                    item, wait = self._take_batch()
                    if item is not None:
                        break
                    self._cv.wait(timeout=wait)
            self._process(*item)

    def _process(self, q: _Queue, batch: list, rows: int) -> None:
        target = rows
        dequeued = time.monotonic()
        queuing = _queuing_latency.get_cell(self.options.thread_pool_name)
        for t in batch:
            queuing.add((dequeued - t.enqueued) * 1e6)
        try:
            sizes = self.options.allowed_batch_sizes
            if sizes:
                target = next((s for s in sizes if s >= rows), rows)
            if len(batch) == 1 and target == rows:
                merged = batch[0].values
            else:
                merged = []
                for i in range(len(q.feeds)):
                    parts = [t.values[i] for t in batch]
                    if target > rows:  # pad with copies of the first row
                        first = parts[0][:1]
                        parts.append(np.repeat(first, target - rows, axis=0))
                    merged.append(np.concatenate(parts, axis=0))
            timeouts = [t.timeout_ms for t in batch if t.timeout_ms]
            _wrapped_run_count.get_cell().increment_by(1)  # TF Serving counts every run, whatever its status
            outputs = q.servable.session_run(q.feeds, merged, q.fetches, min(timeouts) if timeouts else None)
            if len(batch) == 1 and target == rows:
                batch[0].result = outputs
            else:
                for out in outputs:
                    if out.ndim == 0 or out.shape[0] != target:
                        raise invalid_argument(
                            "Batched output tensor has 0th dimension "
                            f"{out.shape[0] if out.ndim else 0} but input tensors had 0th dimension {target}")
                offset = 0
                for t in batch:
                    t.result = [out[offset:offset + t.size] for out in outputs]
                    offset += t.size
        except StatusError as exc:
            for t in batch:
                t.error = exc
        except Exception as exc:  # noqa: BLE001 - every task of the batch gets an answer  # pragma: no cover
            err = StatusError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")
            for t in batch:
                t.error = err
        finally:
            for t in batch:
                t.done.set()
            with self._stats_lock:
                s = self._stats
                s["batches"] += 1
                s["tasks"] += len(batch)
                s["rows"] += rows
                s["padded_rows"] += target - rows
                s["max_tasks_in_batch"] = max(s["max_tasks_in_batch"], len(batch))
                if len(batch) > 1:
                    s["merged_batches"] += 1
                s["tasks_per_batch"][len(batch)] += 1
