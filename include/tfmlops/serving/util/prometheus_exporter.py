"""The Prometheus text page of every metric in the registry, mirroring TF Serving's
``tensorflow_serving/util/prometheus_exporter.cc`` line for line: metric names have every
character outside ``[a-zA-Z0-9_]`` replaced by ``:`` (``/tensorflow/serving/request_count`` →
``:tensorflow:serving:request_count``), label names every character outside ``[a-zA-Z0-9]`` by
``_``, a leading digit gets ``_``; label values escape ``\\`` and ``"``; a ``# TYPE`` line per
metric and no ``# HELP``; histograms as cumulative ``_bucket{...,le="..."}`` lines (the last one
``+Inf``), ``_sum`` and ``_count``; numbers as ``absl::StrCat`` prints them (``%g``, six
significant digits, for doubles).
"""

from __future__ import annotations

import re

from . import monitoring

PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath

_METRIC_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9]")


def metric_name(name: str) -> str:
    out = _METRIC_CHARS.sub(":", name)
    return "_" + out if out[:1].isdigit() else out


def label_name(name: str) -> str:
    out = _LABEL_CHARS.sub("_", name)
    return "_" + out if out[:1].isdigit() else out


def label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _num(x: float) -> str:
    """``absl::StrCat(double)``: six significant digits, no trailing zeros."""
    return "%g" % x


def _labels(names, values) -> list[str]:
    return [f'{label_name(n)}="{label_value(v)}"' for n, v in zip(names, values)]


def _histogram(m: monitoring.Sampler, lines: list[str]) -> None:
    name = metric_name(m.name)
    lines.append(f"# TYPE {name} histogram")
    last = len(m.bucket_limits) - 1
    for values, buckets, total in m.points():
        labels = _labels(m.labels, values)
        prefix = f"{name}_bucket{{{','.join(labels)}{',' if labels else ''}"
        cumulative = 0
        for i, count in enumerate(buckets):
            cumulative += count
            limit = _num(m.bucket_limits[i]) if i < last else "+Inf"
            lines.append(f'{prefix}le="{limit}"}} {cumulative}')
        lines.append(f"{name}_sum{{{','.join(labels)}}} {_num(total)}")
        lines.append(f"{name}_count{{{','.join(labels)}}} {cumulative}")


def _scalar(m: monitoring.Counter, lines: list[str]) -> None:
    name = metric_name(m.name)
    lines.append(f"# TYPE {name} {m.kind}")
    for values, value in m.points():
        lines.append(f"{name}{{{','.join(_labels(m.labels, values))}}} {int(value)}")


def generate_page(registry: monitoring.CollectionRegistry = monitoring.REGISTRY) -> str:
    """``PrometheusExporter::GeneratePage``."""
    lines: list[str] = []
    for m in registry.metrics():
        if isinstance(m, monitoring.Sampler):
            _histogram(m, lines)
        else:
            _scalar(m, lines)
    return "\n".join(lines) + "\n"
