"""Counters and samplers (histograms) in one process-wide registry, mirroring the parts of
TensorFlow's ``tensorflow/core/lib/monitoring`` that TF Serving's metrics use:
``Counter<N>::New(name, description, label names...)``, ``Sampler<N>::New({name, description,
label names...}, Buckets::Exponential(scale, growth, count))``, ``GetCell(label values...)``,
``IncrementBy`` and ``Add``.

As in TensorFlow: a sampler's bucket limits are the exponential ones plus ``DBL_MAX`` (shown as
``+Inf``), and a value goes into the first bucket whose limit is **greater** than it
(``std::upper_bound``), so a value equal to a limit counts in the next bucket. Metrics are
registered once per name for the life of the process (``CollectionRegistry::Default()``).
"""

from __future__ import annotations

import bisect
import sys
import threading

DBL_MAX = sys.float_info.max


def exponential_buckets(scale: float, growth_factor: float, bucket_count: int) -> list[float]:
    """``Buckets::Exponential``: ``scale * growth_factor**i`` for ``i < bucket_count``, then DBL_MAX."""
    if bucket_count < 1 or scale <= 0 or growth_factor <= 1:
        raise ValueError("exponential buckets need bucket_count >= 1, scale > 0, growth_factor > 1")
    limits, bound = [], float(scale)
    for _ in range(bucket_count):
        limits.append(bound)
        bound *= growth_factor
    return limits + [DBL_MAX]


class _Metric:
    kind = ""

    def __init__(self, name: str, description: str, labels: tuple[str, ...]):
        self.name, self.description, self.labels = name, description, tuple(labels)
        self._cells: dict[tuple[str, ...], object] = {}
        self._lock = threading.Lock()

    def _key(self, values) -> tuple[str, ...]:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name} takes {len(self.labels)} label values, got {len(values)}")
        return tuple(str(v) for v in values)


class _CounterCell:
    __slots__ = ("value", "_lock")

    def __init__(self, lock):
        self.value = 0
        self._lock = lock

    def increment_by(self, step: int) -> None:
        if step < 0:
            raise ValueError("a counter only goes up")
        with self._lock:
            self.value += int(step)


class Counter(_Metric):
    kind = "counter"

    def get_cell(self, *values) -> _CounterCell:
        key = self._key(values)
        cell = self._cells.get(key)
        if cell is None:
            with self._lock:
                cell = self._cells.setdefault(key, _CounterCell(self._lock))
        return cell

    def points(self) -> list[tuple[tuple[str, ...], int]]:
        with self._lock:
            return [(k, c.value) for k, c in self._cells.items()]


class _SamplerCell:
    __slots__ = ("limits", "buckets", "sum", "count", "_lock")

    def __init__(self, limits, lock):
        self.limits = limits
        self.buckets = [0] * len(limits)
        self.sum = 0.0
        self.count = 0
        self._lock = lock

    def add(self, value: float) -> None:
        i = min(bisect.bisect_right(self.limits, value), len(self.limits) - 1)
        with self._lock:
            self.buckets[i] += 1
            self.sum += value
            self.count += 1


class Sampler(_Metric):
    kind = "histogram"

    def __init__(self, name: str, description: str, labels: tuple[str, ...], bucket_limits: list[float]):
        super().__init__(name, description, labels)
        self.bucket_limits = list(bucket_limits)

    def get_cell(self, *values) -> _SamplerCell:
        key = self._key(values)
        cell = self._cells.get(key)
        if cell is None:
            with self._lock:
                cell = self._cells.setdefault(key, _SamplerCell(self.bucket_limits, self._lock))
        return cell

    def points(self) -> list[tuple[tuple[str, ...], list[int], float]]:
        with self._lock:
            return [(k, list(c.buckets), c.sum) for k, c in self._cells.items()]


class CollectionRegistry:
    """``CollectionRegistry::Default()``: every metric by name; one definition per name."""

    def __init__(self):
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def register(self, metric: _Metric) -> _Metric:
        with self._lock:
            existing = self._metrics.get(metric.name)
            if existing is not None:
                if (type(existing), existing.labels) != (type(metric), metric.labels):
                    raise ValueError(f"metric {metric.name} is already defined differently")
                return existing
            self._metrics[metric.name] = metric
            return metric

    def int64_value(self, name: str) -> int:
        """What ``ModelServiceImpl::GetMetrics`` reads: the value of the metric's first point
        (points in label order), 0 for an unknown metric, one without points or a histogram."""
        m = self._metrics.get(name)
        if not isinstance(m, Counter):
            return 0
        points = sorted(m.points())
        return points[0][1] if points else 0

    def metrics(self) -> list[_Metric]:
        """Sorted by name, as TensorFlow's ``std::map`` of descriptors."""
        with self._lock:
            return [self._metrics[k] for k in sorted(self._metrics)]


REGISTRY = CollectionRegistry()


def counter(name: str, description: str, *labels: str) -> Counter:
    return REGISTRY.register(Counter(name, description, labels))


def sampler(name: str, description: str, labels: tuple[str, ...], bucket_limits: list[float]) -> Sampler:
    return REGISTRY.register(Sampler(name, description, labels, bucket_limits))
