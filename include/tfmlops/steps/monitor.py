"""Steps of ``tf_model_monitor``: serving health, then quality and drift on new labeled data.

The measurements are :mod:`tfmlops.monitoring`'s; this module records them in MLflow — one run per
model (experiment ``<model>-monitoring``) with the time (seconds) as the step, trend charts drawn
as PNG on that run, and the drift reference stored with each registered version
(``monitoring/reference.json`` on its run; computed from a sample of the version's training dataset,
its ``dataset_uri`` tag, predicted through the served version, the first time). The decision (which
thresholds are breached) is returned, not acted on: the operators fail the task (health) or
trigger a retrain (quality / drift).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from tfmlops import data, registry
from tfmlops.monitoring import (Thresholds, available_versions, build_reference, drift, health_breaches, health_metrics,
                                live_health, quality, quality_metrics, served_probabilities)
from tfmlops.partitions import list_partitions

__all__ = ["Thresholds", "check_health", "check_quality_drift"]

log = logging.getLogger(__name__)

REFERENCE_ARTIFACT = "monitoring/reference.json"
MONITOR_TAG = "tfmlops.monitor"


def monitoring_run(tracking_uri: str, model_name: str) -> str:
    """The one monitoring run of ``model_name`` (created on first use)."""
    mlf = registry.client(tracking_uri)
    experiment = f"{model_name}-monitoring"
    found = mlf.get_experiment_by_name(experiment)
    if found is not None:
        runs = mlf.search_runs([found.experiment_id], f"tags.`{MONITOR_TAG}` = '{model_name}'", max_results=1)
        if runs:
            return runs[0].info.run_id
    return registry.start_run(tracking_uri, experiment, f"monitor-{model_name}", {MONITOR_TAG: model_name})


def log_step(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int | None = None) -> int:
    step = int(time.time()) if step is None else step
    registry.log_metrics(tracking_uri, run_id, metrics, step=step)
    return step


def plot_trends(tracking_uri: str, run_id: str, path: Path) -> Path:
    """One panel per metric family: health p99 and error rate, quality, drift PSI, over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from datetime import datetime, timezone

    mlf = registry.client(tracking_uri)
    keys = sorted(mlf.get_run(run_id).data.metrics)
    panels = [("latency p99 (ms)", lambda k: k.startswith("health.") and k.endswith(".p99_ms")),
              ("error rate", lambda k: k.startswith("health.") and k.endswith(".error_rate")),
              ("throughput (req/s)", lambda k: k.startswith("health.") and k.endswith(".throughput_rps")),
              ("quality", lambda k: k in ("quality.accuracy", "quality.f1_macro", "quality.precision_macro",
                                          "quality.recall_macro")),
              ("drift PSI", lambda k: k in ("drift.input_psi_max", "drift.prediction_psi"))]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3 * len(panels)), sharex=True)
    for ax, (title, wanted) in zip(axes, panels):
        for key in filter(wanted, keys):
            history = sorted(mlf.get_metric_history(run_id, key), key=lambda m: m.step)
            ax.plot([datetime.fromtimestamp(m.step, tz=timezone.utc) for m in history],
                    [m.value for m in history], marker="o", label=key.split(".", 1)[1])
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[-1].set_xlabel("time (UTC)")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def log_trend_charts(tracking_uri: str, run_id: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_trends(tracking_uri, run_id, Path(tmp) / "monitoring_trends.png")
        registry.client(tracking_uri).log_artifact(run_id, str(png), artifact_path="charts")
    return f"runs:/{run_id}/charts/monitoring_trends.png"


# ------------------------------------------------------------------------------- reference
def ensure_reference(tracking_uri: str, model_name: str, version: int, client, rows: int = 2000,
                     n_features: int = 784, num_classes: int = 10, s3_client=None) -> dict:
    """The version's drift reference; computed and stored on its run when it has none."""
    mlf = registry.client(tracking_uri)
    found = registry.get_version(tracking_uri, model_name, version)
    artifacts = {a.path for a in mlf.list_artifacts(found.run_id, "monitoring")}
    if REFERENCE_ARTIFACT in artifacts:
        with tempfile.TemporaryDirectory() as tmp:
            local = registry.download(tracking_uri, f"runs:/{found.run_id}/{REFERENCE_ARTIFACT}", tmp)
            return json.loads(Path(local).read_text())
    uri = mlf.get_run(found.run_id).data.tags.get("dataset_uri", "mnist")
    dataset, _ = data.load_validated(uri, n_features, num_classes, s3_client=s3_client)
    pick = np.random.default_rng(0).choice(len(dataset.y_train), size=min(rows, len(dataset.y_train)), replace=False)
    x = dataset.x_train[np.sort(pick)]
    predicted = np.argmax(served_probabilities(client, model_name, x, version=int(found.version)), axis=1)
    reference = {**build_reference(x, predicted, num_classes, source=uri), "version": int(found.version)}
    mlf.log_dict(found.run_id, reference, REFERENCE_ARTIFACT)
    log.info("stored the drift reference of %s version %s (%d rows of %s)", model_name, found.version, len(x), uri)
    return reference


# ------------------------------------------------------------------------------ entry points
def check_health(tracking_uri: str, model_name: str, endpoints: list, thresholds: Thresholds, requests: int = 50,
                 n_features: int = 784, prometheus=None, window_s: int = 300, scrape_window_s: float = 15.0) -> dict:
    """Health of every endpoint (:class:`tfmlops.deploy.endpoint.Endpoint`) from the model's live
    traffic — from ``prometheus`` (a :class:`~tfmlops.deploy.live_metrics.PrometheusClient`) over
    ``window_s`` seconds, else from two scrapes of each replica's metrics ``scrape_window_s``
    apart — and probed (every version, ``requests`` predicts per API) where it served nothing in
    the window (:func:`tfmlops.monitoring.live_health`). The numbers are logged as one time step,
    the sources as the run's tag ``last_health_sources``; the charts are redrawn."""
    def probe_row() -> np.ndarray:
        return data.load_mnist().x_test[0].reshape(-1)[:n_features].astype(np.float32) / 255.0

    result, sources = live_health(endpoints, model_name, probe_row, requests, prometheus, window_s, scrape_window_s)
    for name, s in sources.items():
        log.info("health of %s on %s from %s%s", model_name, name, s["source"], f" ({s['reason']})" * bool(s["reason"]))
    run_id = monitoring_run(tracking_uri, model_name)
    step = log_step(tracking_uri, run_id, health_metrics(result))
    registry.set_tags(tracking_uri, run_id, {"last_health_sources": json.dumps(sources)[:4000]})
    breaches = health_breaches(result, thresholds)
    charts = log_trend_charts(tracking_uri, run_id)
    return {"model_name": model_name, "run_id": run_id, "step": step, "breaches": breaches, "charts": charts,
            "sources": sources,
            "health": {ep: {str(v): apis for v, apis in versions.items()} for ep, versions in result.items()}}


def newest_partitions(root: str, dataset: str, count: int, s3_client=None) -> dict[str, str]:
    found = list_partitions(root, dataset, s3_client=s3_client)
    return dict(list(found.items())[-count:]) if count > 0 else {}


def check_quality_drift(tracking_uri: str, model_name: str, endpoint, root: str, dataset: str,
                        thresholds: Thresholds, newest: int = 1, reference_rows: int = 2000, n_features: int = 784,
                        num_classes: int = 10, s3_client=None) -> dict:
    """Quality and drift of the ``champion`` served by ``endpoint`` on the newest partitions (all
    their rows)."""
    client = endpoint.client
    partitions = newest_partitions(root, dataset, newest, s3_client)
    if not partitions:
        return {"model_name": model_name, "retrain": False, "breaches": [], "partitions": [],
                "reason": f"no partition in {root}/{dataset}/incoming: nothing to evaluate"}
    champion = registry.get_version(tracking_uri, model_name, registry.CHAMPION)
    version = int(champion.version)
    if version not in available_versions(client, model_name):
        raise LookupError(f"{model_name} champion version {version} is not AVAILABLE on the server")
    sets = [data.load_validated(uri, n_features, num_classes, s3_client=s3_client)[0] for uri in partitions.values()]
    x = np.concatenate([np.concatenate([d.x_train, d.x_test]) for d in sets])
    y = np.concatenate([np.concatenate([d.y_train, d.y_test]) for d in sets])
    predicted = np.argmax(served_probabilities(client, model_name, x, version=version), axis=1)
    q = quality(y, predicted, num_classes)
    reference = ensure_reference(tracking_uri, model_name, version, client, reference_rows, n_features, num_classes,
                                 s3_client)
    d = drift(reference, x, predicted, num_classes)
    breaches = []
    if q["accuracy"] < thresholds.min_accuracy:
        breaches.append(f"accuracy {q['accuracy']:.4f} < {thresholds.min_accuracy:.4f} on {len(y)} rows")
    if d["input_psi_max"] > thresholds.max_input_psi:
        breaches.append(f"input drift: PSI of {d['input_psi_worst']} {d['input_psi_max']:.3f} > "
                        f"{thresholds.max_input_psi:.3f}")
    if d["prediction_psi"] > thresholds.max_prediction_psi:
        breaches.append(f"prediction drift: PSI {d['prediction_psi']:.3f} > {thresholds.max_prediction_psi:.3f}")
    run_id = monitoring_run(tracking_uri, model_name)
    step = log_step(tracking_uri, run_id, {**quality_metrics(q, d), "quality.rows": len(y),
                                           "quality.served_version": version})
    registry.log_confusion_matrix(tracking_uri, run_id, q["confusion_matrix"])
    registry.set_tags(tracking_uri, run_id, {"last_partitions": ",".join(partitions), "last_breaches":
                                             "; ".join(breaches)[:4000] or "none"})
    charts = log_trend_charts(tracking_uri, run_id)
    reason = (f"{model_name} version {version} on partitions {list(partitions)}: " + "; ".join(breaches)) \
        if breaches else ""
    log.info("quality %s, drift %s, breaches %s", {k: q[k] for k in ("accuracy", "f1_macro")},
             {k: d[k] for k in ("input_psi_max", "prediction_psi")}, breaches)
    return {"model_name": model_name, "version": version, "run_id": run_id, "step": step,
            "partitions": list(partitions), "retrain": bool(breaches), "breaches": breaches, "reason": reason,
            "quality": {k: q[k] for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "rows")},
            "per_class_f1": q["per_class"]["f1"], "confusion_matrix": q["confusion_matrix"], "drift": d,
            "charts": charts}


def check_live_drift(tracking_uri: str, model_name: str, endpoint, log_prefix: str, thresholds: Thresholds,
                     window_s: float = 3600.0, min_rows: int = 100, reference_rows: int = 2000,
                     n_features: int = 784, num_classes: int = 10) -> dict:
    """PSI drift of what users sent to the ``champion`` (the server's request logs of the last
    ``window_s``, :mod:`tfmlops.feedback`, without the project's own requests) against the
    version's training reference; fewer than ``min_rows`` logged rows: no verdict."""
    from tfmlops import feedback

    champion = registry.get_version(tracking_uri, model_name, registry.CHAMPION)
    version = int(champion.version)
    since = time.time() - window_s
    files = []
    for f in feedback.list_request_logs(log_prefix, include_partial=True):
        try:
            if os.path.getmtime(f) >= since:
                files.append(f)
        except FileNotFoundError:  # a .partial file closed meanwhile: its complete name
            files.append(f.removesuffix(".partial"))
    from tfmlops.deploy.client import REQUEST_ID_PREFIX

    # what clients sent: the project's own requests (probes, checks, this monitor's) are left out
    logged = [r for rid, r in feedback.read_request_logs(files).items()
              if r["model_version"] == version and r["predicted"] is not None
              and not rid.startswith(REQUEST_ID_PREFIX)]
    rows = sum(len(r["x"]) for r in logged)
    base = {"model_name": model_name, "version": version, "log_files": len(files), "rows": rows, "breaches": [],
            "retrain": False}
    if rows < min_rows:
        return {**base, "reason": f"{rows} logged rows of version {version} in the last {window_s:.0f} s, "
                                  f"fewer than {min_rows}: no live drift verdict"}
    x = np.concatenate([r["x"] for r in logged])[:, :n_features]
    predicted = np.concatenate([r["predicted"] for r in logged])
    reference = ensure_reference(tracking_uri, model_name, version, endpoint.client, reference_rows, n_features,
                                 num_classes)
    d = drift(reference, x, predicted, num_classes)
    breaches = []
    if d["input_psi_max"] > thresholds.max_input_psi:
        breaches.append(f"live input drift: PSI of {d['input_psi_worst']} {d['input_psi_max']:.3f} > "
                        f"{thresholds.max_input_psi:.3f} on {rows} logged rows")
    if d["prediction_psi"] > thresholds.max_prediction_psi:
        breaches.append(f"live prediction drift: PSI {d['prediction_psi']:.3f} > {thresholds.max_prediction_psi:.3f} "
                        f"on {rows} logged rows")
    run_id = monitoring_run(tracking_uri, model_name)
    step = log_step(tracking_uri, run_id, {"live.rows": rows, "live.input_psi_max": d["input_psi_max"],
                                           "live.prediction_psi": d["prediction_psi"]})
    log.info("live drift of version %s on %d logged rows: %s", version, rows,
             {k: d[k] for k in ("input_psi_max", "prediction_psi")})
    reason = f"{model_name} version {version}, live traffic: " + "; ".join(breaches) if breaches else ""
    return {**base, "run_id": run_id, "step": step, "drift": d, "breaches": breaches, "retrain": bool(breaches),
            "reason": reason}

