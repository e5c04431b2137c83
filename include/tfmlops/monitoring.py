"""Measurements of a served model: serving health, quality on labeled data, drift (no MLflow,
no Airflow; TensorFlow only through the gRPC client). :mod:`tfmlops.steps.monitor` records them.

- **Health** — per endpoint, from the traffic the model really served (:func:`live_health`):
  request rate, error rate (non-OK share) and latency p50/p95/p99 over a window, read from a
  Prometheus server that scrapes the replicas, else from two scrapes of each replica's own metrics
  (:mod:`tfmlops.deploy.live_metrics`); only a replica that served the model nothing in the window
  (or whose metrics cannot be read) is probed: per loaded version, a bounded probe of single-row
  predicts over REST and over gRPC: latency p50/p95/p99, throughput (sequential requests per
  second), error rate. Each endpoint's result says which source it came from.
- **Quality** — labeled rows sent through the served model: accuracy, macro and per-class
  precision/recall/F1, confusion matrix.
- **Drift** — population stability index (PSI) of per-image input statistics (mean intensity,
  ink share, centre of mass, second moments: a rotation moves ``cov_xy``, noise moves the
  intensity) and of the predicted-class distribution, against a *reference* (quantile bins of the
  same statistics on training rows, :func:`build_reference`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from tfmlops import evaluation
from tfmlops.deploy.live_metrics import MetricsError, Traffic, scrape_traffic


PSI_EPS = 1e-4


@dataclass
class Thresholds:
    min_accuracy: float = 0.85
    max_input_psi: float = 0.25
    max_prediction_psi: float = 0.25
    max_p99_ms: float = 500.0
    max_error_rate: float = 0.01

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------ drift
def input_stats(x: np.ndarray, side: int = 28) -> dict[str, np.ndarray]:
    """Per-row statistics of (N, side*side) images in [0, 1]."""
    img = np.asarray(x, np.float32).reshape(len(x), side, side)
    mass = img.sum(axis=(1, 2)) + 1e-6
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) / (side - 1)
    cx = (img * xs).sum(axis=(1, 2)) / mass
    cy = (img * ys).sum(axis=(1, 2)) / mass
    dx, dy = xs[None] - cx[:, None, None], ys[None] - cy[:, None, None]
    return {"mean": img.mean(axis=(1, 2)), "ink": (img > 0.5).mean(axis=(1, 2)), "cx": cx, "cy": cy,
            "var_x": (img * dx * dx).sum(axis=(1, 2)) / mass, "var_y": (img * dy * dy).sum(axis=(1, 2)) / mass,
            "cov_xy": (img * dx * dy).sum(axis=(1, 2)) / mass}


def psi_from_fractions(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.clip(np.asarray(expected, float), PSI_EPS, None)
    a = np.clip(np.asarray(actual, float), PSI_EPS, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def _bin_fractions(values: np.ndarray, edges: list[float]) -> np.ndarray:
    inner = np.asarray(edges, float)[1:-1]
    counts = np.bincount(np.searchsorted(inner, values, side="right"), minlength=len(edges) - 1)
    return counts / max(1, len(values))


def build_reference(x: np.ndarray, predicted: np.ndarray, num_classes: int, bins: int = 10,
                    source: str = "") -> dict:
    """Quantile bins and bin shares of each input statistic, and the predicted-class shares."""
    stats = {}
    for name, values in input_stats(x).items():
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))
        if len(edges) < 2:
            edges = np.array([values.min() - 1e-6, values.max() + 1e-6])
        edges[0], edges[-1] = -np.inf, np.inf
        stats[name] = {"edges": [float(e) for e in edges], "fractions": _bin_fractions(values, edges).tolist()}
    return {"rows": int(len(x)), "source": source, "stats": stats,
            "prediction_fractions": (np.bincount(predicted, minlength=num_classes) / len(predicted)).tolist()}


def drift(reference: dict, x: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict:
    """PSI of every input statistic and of the predicted classes vs the reference."""
    current = input_stats(x)
    per_stat = {name: psi_from_fractions(ref["fractions"], _bin_fractions(current[name], ref["edges"]))
                for name, ref in reference["stats"].items()}
    prediction_psi = psi_from_fractions(reference["prediction_fractions"],
                                        np.bincount(predicted, minlength=num_classes) / len(predicted))
    worst = max(per_stat, key=per_stat.get)
    return {"input_psi": per_stat, "input_psi_max": per_stat[worst], "input_psi_worst": worst,
            "prediction_psi": prediction_psi}


# ---------------------------------------------------------------------------------- quality
def quality(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """classification_metrics plus per-class precision, recall and F1."""
    metrics = evaluation.classification_metrics(y_true, y_pred, num_classes)
    matrix = np.asarray(metrics["confusion_matrix"], float)
    tp, predicted, actual = np.diag(matrix), matrix.sum(axis=0), matrix.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {**metrics, "per_class": {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist()},
            "rows": int(len(y_true))}


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


def probe(client, model: str, row: np.ndarray, requests: int, version: int | None = None) -> dict:
    """``requests`` sequential single-row predicts over REST and over gRPC on ``version``, after one
    untimed warm-up request per API."""
    result = {}
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


def quality_metrics(q: dict, d: dict | None) -> dict[str, float]:
    flat = {f"quality.{k}": q[k] for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro")}
    for kind, values in q["per_class"].items():
        flat.update({f"quality.{kind}.class_{c}": v for c, v in enumerate(values)})
    if d is not None:
        flat["drift.input_psi_max"] = d["input_psi_max"]
        flat["drift.prediction_psi"] = d["prediction_psi"]
        flat.update({f"drift.input_psi.{k}": v for k, v in d["input_psi"].items()})
    return flat
