"""Measurements of a served model: serving health, quality on labeled data, drift (no MLflow,
no Airflow; TensorFlow only through the gRPC client). :mod:`tfmlops.steps.monitor` records them.

- **Health** — per endpoint, from the traffic the model really served (:func:`live_health`):
  request rate, error rate (non-OK share) and latency p50/p95/p99 over a window, read from a
  Prometheus server that scrapes the replicas, else from two scrapes of each replica's own metrics
  (:mod:`tfmlops.deploy.live_metrics`); only a replica that served the model nothing in the window
  (or whose metrics cannot be read) is probed: per loaded version, a bounded probe of single-row
  predicts over REST and over gRPC: latency p50/p95/p99, throughput (sequential requests per
  second), error rate. Each endpoint's result says which source it came from.
- **Served outputs** — labeled rows sent through the served version by name
  (:func:`served_outputs`), for :mod:`tfmlops.drift`'s quality by task and drift per named input;
  the PSI (:func:`psi_from_fractions`) and the per-class figures (:func:`per_class`) live here.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from tfmlops.deploy.live_metrics import MetricsError, Traffic, scrape_traffic


PSI_EPS = 1e-4


@dataclass
class Thresholds:
    gate_metric: str | None = None  # quality: None = the model module's GATE metric
    gate_threshold: float | None = None  # quality: None = the module's GATE threshold
    max_input_psi: float = 0.25
    max_prediction_psi: float = 0.25
    max_p99_ms: float = 500.0
    max_error_rate: float = 0.01

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------ drift
def psi_from_fractions(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.clip(np.asarray(expected, float), PSI_EPS, None)
    a = np.clip(np.asarray(actual, float), PSI_EPS, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def _bin_fractions(values: np.ndarray, edges: list[float]) -> np.ndarray:
    inner = np.asarray(edges, float)[1:-1]
    counts = np.bincount(np.searchsorted(inner, values, side="right"), minlength=len(edges) - 1)
    return counts / max(1, len(values))


# ---------------------------------------------------------------------------------- quality
def per_class(confusion_matrix) -> dict[str, list[float]]:
    """Per-class precision, recall and F1 from a confusion matrix (rows: true class)."""
    matrix = np.asarray(confusion_matrix, float)
    tp, predicted, actual = np.diag(matrix), matrix.sum(axis=0), matrix.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist()}


def served_outputs(client, model: str, spec, features: dict, version: int | None = None, batch: int = 256):
    """The served version's outputs by task (:func:`tfmlops.formats.task_outputs`) on named
    ``features``, through gRPC Predict (``serving_default``) in batches."""
    from tfmlops.formats import task_outputs

    n = len(next(iter(features.values())))
    out = []
    for i in range(0, n, batch):
        got = client.predict_grpc(model, {k: v[i:i + batch] for k, v in features.items()}, version=version)
        out.append(task_outputs(spec.task, got[spec.output_name]))
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def served_probabilities(client, model: str, x: np.ndarray, version: int | None = None, label: str | None = None,
                         batch: int = 256) -> np.ndarray:
    out = []
    for i in range(0, len(x), batch):
        got = client.predict_rest(model, np.asarray(x[i:i + batch], np.float32).tolist(), version=version, label=label)
        out.append(np.asarray(got[sorted(got)[0]] if isinstance(got, dict) else got))
    return np.concatenate(out)


# ----------------------------------------------------------------------------------- health
def _percentiles(times_ms: list[float]) -> dict:
    if not times_ms:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    p50, p95, p99 = np.percentile(times_ms, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


def probe(client, model: str, row, requests: int, version: int | None = None) -> dict:
    """``requests`` sequential single-row predicts over REST and over gRPC on ``version``, after one
    untimed warm-up request per API. ``row``: the one input's row, or a dict of named inputs with
    one row each (a batch of 1)."""
    result = {}
    if isinstance(row, dict):
        calls = {"rest": lambda: client.predict_rest(model, row, version=version),
                 "grpc": lambda: client.predict_grpc(model, row, version=version)}
    else:
        calls = {"rest": lambda: client.predict_rest(model, [row.tolist()], version=version),
                 "grpc": lambda: client.predict_grpc(model, row[None, :], version=version)}
    for api, call in calls.items():
        try:  # untimed: connection set-up and the client's first-use imports are not serving latency
            call()
        except Exception:  # noqa: BLE001 - the timed requests below fail the same way and count
            pass
        times, errors, last_error = [], 0, ""
        t_start = time.perf_counter()
        for _ in range(max(1, requests)):
            t0 = time.perf_counter()
            try:
                call()
                times.append((time.perf_counter() - t0) * 1000.0)
            except Exception as exc:  # noqa: BLE001 - any failure counts as an error, the rest continues
                errors += 1
                last_error = f"{type(exc).__name__}: {exc}"[:300]
        elapsed = time.perf_counter() - t_start
        n = max(1, requests)
        result[api] = {**_percentiles(times), "throughput_rps": (n - errors) / elapsed if elapsed > 0 else 0.0,
                       "error_rate": errors / n, "requests": n, "errors": errors, "last_error": last_error}
    return result


def available_versions(client, model: str) -> list[int]:
    status = client.status(model)
    return sorted(int(v["version"]) for v in status.get("model_version_status", []) if v.get("state") == "AVAILABLE")


def _unreachable(reason: str) -> dict:
    """One probe result per API for an endpoint/version that could not be probed at all."""
    return {api: {**_percentiles([]), "throughput_rps": 0.0, "error_rate": 1.0, "requests": 1, "errors": 1,
                  "last_error": reason[:300]} for api in ("rest", "grpc")}


def health(endpoints: dict, model: str, row: np.ndarray, requests: int = 50) -> dict:
    """``endpoints``: ``{name: ServingClient}`` → ``{name: {version: {rest: {...}, grpc: {...}}}}``.
    An endpoint that does not answer its status call counts as one version ``0`` with error rate 1."""
    out: dict = {}
    for name, client in endpoints.items():
        try:
            versions = available_versions(client, model)
        except Exception as exc:  # noqa: BLE001
            out[name] = {0: _unreachable(f"status: {exc}")}
            continue
        out[name] = {v: probe(client, model, row, requests, version=v) for v in versions} or {
            0: _unreachable("no AVAILABLE version")}
    return out


# ------------------------------------------------------------------------------ live traffic
LIVE = "live"  # the "version" key of a live record: TF Serving's request metrics have no version label


def live_record(traffic: Traffic) -> dict:
    """A replica's live traffic as a health record: a probe's keys (``last_error`` lists the
    non-OK statuses), plus its ``source`` and ``window_s``, the latencies per entrypoint and the
    examples."""
    failed = {s: n for s, n in traffic.by_status.items() if s != "OK" and n > 0}
    return {"p50_ms": traffic.p50_ms, "p95_ms": traffic.p95_ms, "p99_ms": traffic.p99_ms,
            "throughput_rps": traffic.request_rate or 0.0, "error_rate": traffic.error_rate or 0.0,
            "requests": traffic.requests, "errors": traffic.errors,
            "last_error": ", ".join(f"{s} ×{n:.0f}" for s, n in sorted(failed.items())), "source": traffic.source,
            "window_s": traffic.window_s, "by_entrypoint": traffic.by_entrypoint, "examples": traffic.examples}


def live_traffic(endpoints: list, model: str, prometheus=None, window_s: int = 300, scrape_window_s: float = 15.0,
                 timeout: float = 10.0, at: float | None = None) -> dict[str, dict]:
    """Where each endpoint's (:class:`~tfmlops.deploy.endpoint.Endpoint`) health comes from:
    ``{name: {"source": "prometheus" | "scrape" | "probe", "traffic": Traffic | None, "reason": str}}``.

    With ``prometheus`` (a :class:`~tfmlops.deploy.live_metrics.PrometheusClient`), the traffic of
    the last ``window_s`` seconds of each replica Prometheus scrapes (``instance`` = the endpoint's
    REST ``host:port``); the replicas it does not scrape, or all of them when it cannot be
    queried, are scraped directly: twice, ``scrape_window_s`` apart, at their metrics path.
    ``probe`` (with the reason) where the model got no request in the window or the metrics
    could not be read. ``at``: the time Prometheus evaluates at (now)."""
    out: dict[str, dict] = {}
    notes: dict[str, str] = {}
    pending = list(endpoints)
    if prometheus is not None:
        try:
            at = time.time() if at is None else at
            up = prometheus.targets_up(at)
            seen = prometheus.traffic(model, window_s, at)
        except MetricsError as exc:
            notes = {ep.name: f"Prometheus not used ({exc}); " for ep in pending}
        else:
            for ep in pending:
                traffic = seen.get(ep.instance)
                if ep.instance not in up:
                    notes[ep.name] = f"Prometheus scrapes no target {ep.instance}; "
                elif traffic is not None and not traffic.idle:
                    out[ep.name] = {"source": "prometheus", "traffic": traffic, "reason": ""}
                else:
                    down = ", its last scrape failed" if up[ep.instance] == 0 else ""
                    out[ep.name] = {"source": "probe", "traffic": None, "reason": (
                        f"no request for {model} on {ep.instance} in the last {window_s}s (Prometheus{down})")}
            pending = [ep for ep in pending if ep.name not in out]
    if pending:
        scraped = scrape_traffic({ep.name: ep.metrics_url for ep in pending}, model, scrape_window_s, timeout)
        for ep in pending:
            got, note = scraped[ep.name], notes.get(ep.name, "")
            if isinstance(got, MetricsError):
                out[ep.name] = {"source": "probe", "traffic": None, "reason": f"{note}metrics not readable: {got}"}
            elif got.idle:
                out[ep.name] = {"source": "probe", "traffic": None, "reason": (
                    f"{note}no request for {model} in {got.window_s:.1f}s between two scrapes of {ep.metrics_url}")}
            else:
                out[ep.name] = {"source": "scrape", "traffic": got, "reason": note.removesuffix("; ")}
    return {ep.name: out[ep.name] for ep in endpoints}


def live_health(endpoints: list, model: str, probe_row: Callable[[], np.ndarray], requests: int = 50,
                prometheus=None, window_s: int = 300, scrape_window_s: float = 15.0,
                timeout: float = 10.0, at: float | None = None) -> tuple[dict, dict]:
    """Health of every endpoint from its live traffic (:func:`live_traffic`), probed
    (:func:`health`, with the row ``probe_row()`` gives) only where there was none →
    ``(result, sources)``: ``result`` as :func:`health`'s, a live endpoint as one record
    ``{name: {"live": {"all": record}}}``; ``sources`` ``{name: {"source", "reason", "window_s"}}``."""
    sources = live_traffic(endpoints, model, prometheus, window_s, scrape_window_s, timeout, at)
    result: dict = {}
    probed = [ep for ep in endpoints if sources[ep.name]["traffic"] is None]
    if probed:
        result.update(health({ep.name: ep.client for ep in probed}, model, probe_row(), requests))
    for ep in endpoints:
        traffic = sources[ep.name]["traffic"]
        if traffic is not None:
            result[ep.name] = {LIVE: {"all": live_record(traffic)}}
    summary = {name: {"source": s["source"], "reason": s["reason"],
                      "window_s": s["traffic"].window_s if s["traffic"] is not None else None}
               for name, s in sources.items()}
    return {ep.name: result[ep.name] for ep in endpoints}, summary


def _where(name: str, version, api: str, m: dict) -> str:
    if version == LIVE:
        return f"{name} live traffic ({m['source']}, {m['window_s']:.0f}s)"
    return f"{name} version {version} {api.upper()}"


def health_breaches(result: dict, thresholds: Thresholds) -> list[str]:
    breaches = []
    for name, versions in result.items():
        for version, apis in versions.items():
            for api, m in apis.items():
                where = _where(name, version, api, m)
                if m["error_rate"] > thresholds.max_error_rate:
                    breaches.append(f"{where}: error rate {m['error_rate']:.2%} > {thresholds.max_error_rate:.2%} "
                                    f"({m['errors']:.0f}/{m['requests']:.0f} requests; "
                                    f"{'non-OK' if version == LIVE else 'last'}: {m['last_error']})")
                if np.isfinite(m["p99_ms"]) and m["p99_ms"] > thresholds.max_p99_ms:
                    breaches.append(f"{where}: p99 latency {m['p99_ms']:.1f} ms > {thresholds.max_p99_ms:.1f} ms "
                                    f"(p50 {m['p50_ms']:.1f}, p95 {m['p95_ms']:.1f}, {m['requests']:.0f} requests)")
    return breaches


# ------------------------------------------------------------------------ metric records
def health_metrics(result: dict) -> dict[str, float]:
    flat = {}
    for name, versions in result.items():
        for version, apis in versions.items():
            for api, m in apis.items():
                tag = version if version == LIVE else f"v{version}"
                for key in ("p50_ms", "p95_ms", "p99_ms", "throughput_rps", "error_rate"):
                    if np.isfinite(m[key]):
                        flat[f"health.{name}.{tag}.{api}.{key}"] = m[key]
    return flat
