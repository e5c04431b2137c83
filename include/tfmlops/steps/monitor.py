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

from tfmlops import drift, model_data, modelspec, registry
from tfmlops.steps.retrain import version_spec
from tfmlops.modelspec import ModelSpec
from tfmlops.monitoring import (Thresholds, available_versions, health_breaches, health_metrics, live_health,
                                served_outputs)
from tfmlops.partitions import list_partitions

__all__ = ["Thresholds", "check_health", "check_quality_drift"]

log = logging.getLogger(__name__)

REFERENCE_ARTIFACT = "monitoring/profile.json"  # tfmlops.drift's (reference.json: the MNIST-only one before)
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
def all_rows(spec: ModelSpec, module, uris, s3_client=None) -> model_data.Split:
    """Every row (train, validation and test) of the datasets at ``uris`` (partitions), read by the
    model module's loader and checked against its spec."""
    splits = []
    for uri in uris:
        loaded, _ = model_data.load(spec, module, uri, s3_client=s3_client, max_overlap_fraction=1.0)
        splits += [loaded.train, loaded.validation, loaded.test]
    return model_data.concatenate(splits)


def ensure_reference(tracking_uri: str, model_name: str, version: int, client, rows: int = 2000,
                     s3_client=None) -> dict:
    """The version's drift profile (:func:`tfmlops.drift.build_profile`: per named input and of the
    served outputs, on a sample of its training rows); computed and stored on its run the first
    time."""
    mlf = registry.client(tracking_uri)
    found = registry.get_version(tracking_uri, model_name, version)
    artifacts = {a.path for a in mlf.list_artifacts(found.run_id, "monitoring")}
    if REFERENCE_ARTIFACT in artifacts:
        with tempfile.TemporaryDirectory() as tmp:
            local = registry.download(tracking_uri, f"runs:/{found.run_id}/{REFERENCE_ARTIFACT}", tmp)
            return json.loads(Path(local).read_text())
    spec, module = version_spec(found)
    uri = mlf.get_run(found.run_id).data.tags.get("dataset_uri", "mnist")
    train = model_data.load(spec, module, uri, s3_client=s3_client, max_overlap_fraction=1.0)[0].train
    features = model_data.sample(train, rows, seed=0).features  # a streamed split: through a reservoir
    outputs = served_outputs(client, model_name, spec, features, version=int(found.version))
    reference = {**drift.build_profile(spec, features, outputs, module, source=uri), "version": int(found.version)}
    mlf.log_dict(found.run_id, reference, REFERENCE_ARTIFACT)
    log.info("stored the drift profile of %s version %s (%d rows of %s)", model_name, found.version,
             len(next(iter(features.values()))), uri)
    return reference


def quality_breach(spec: ModelSpec, q: dict, thresholds: Thresholds) -> str | None:
    """The quality verdict: the gate metric against the gate threshold, each the form's where set,
    else the model module's ``GATE`` (no threshold: no verdict)."""
    gate = modelspec.resolve_gate(spec, thresholds.gate_metric, thresholds.gate_threshold)
    metric, threshold, higher = gate["metric"], gate.get("threshold"), gate["higher_is_better"]
    if threshold is None:
        return None
    value = q.get(metric)
    if value is None or not np.isfinite(value):
        return f"{metric} could not be measured on {q['rows']} rows"
    if (value < threshold) if higher else (value > threshold):
        return f"{metric} {value:.4f} {'<' if higher else '>'} {threshold:.4f} on {q['rows']} rows"
    return None


def drift_metrics(d: dict) -> dict[str, float]:
    """The drift measurement as MLflow metrics: the maxima and each statistic's PSI."""
    flat = {"drift.input_psi_max": d["input_psi_max"], "drift.prediction_psi": d["prediction_psi"]}
    flat.update({f"drift.input_psi.{k}": v["psi"] for k, v in d["features"].items()})
    return flat


def task_quality_metrics(q: dict) -> dict[str, float]:
    """Quality as MLflow metrics: the task's numbers, per class for multiclass."""
    flat = {f"quality.{k}": float(v) for k, v in q.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("rows", "rows_used")}
    for kind, values in (q.get("per_class") or {}).items():
        flat.update({f"quality.{kind}.class_{c}": v for c, v in enumerate(values)})
    return flat


def moved_most(d: dict, count: int = 3) -> str:
    return ", ".join(f"{name} {psi:.3f}" for name, psi in d["top"][:count])


# ------------------------------------------------------------------------------ entry points
def probe_features(tracking_uri: str, model_name: str) -> dict[str, np.ndarray]:
    """One row of the champion's smoke inputs (``serving/smoke.json``, written at export), as named
    input arrays of one row in the inputs' dtypes: what a health probe sends."""
    found = registry.get_version(tracking_uri, model_name, registry.CHAMPION)
    with tempfile.TemporaryDirectory() as tmp:
        smoke = json.loads(registry.download(tracking_uri, f"runs:/{found.run_id}/serving/smoke.json",
                                             tmp).read_text())
    if "inputs" not in smoke:  # exported before named inputs: the one input's rows
        return {smoke["input"]: np.asarray(smoke["instances"][:1], np.float32)}
    dtypes = smoke.get("input_dtypes", {})
    out = {}
    for name, values in smoke["inputs"].items():
        if dtypes.get(name) == "string":
            out[name] = np.vectorize(lambda v: str(v).encode("utf-8"), otypes=[object])(np.asarray(values[:1], object))
        else:
            out[name] = np.asarray(values[:1], dtype=dtypes.get(name, "float32"))
    return out


def check_health(tracking_uri: str, model_name: str, endpoints: list, thresholds: Thresholds, requests: int = 50,
                 prometheus=None, window_s: int = 300, scrape_window_s: float = 15.0) -> dict:
    """Health of every endpoint (:class:`tfmlops.deploy.endpoint.Endpoint`) from the model's live
    traffic — from ``prometheus`` (a :class:`~tfmlops.deploy.live_metrics.PrometheusClient`) over
    ``window_s`` seconds, else from two scrapes of each replica's metrics ``scrape_window_s``
    apart — and probed (every version, ``requests`` predicts per API) where it served nothing in
    the window (:func:`tfmlops.monitoring.live_health`; the probe sends the first row of the
    champion's own smoke inputs, named as its inputs). The numbers are logged as one time step, the
    sources as the run's tag ``last_health_sources``; the charts are redrawn."""
    def probe_row():
        return probe_features(tracking_uri, model_name)

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
                        thresholds: Thresholds, newest: int = 1, reference_rows: int = 2000, s3_client=None) -> dict:
    """Quality and drift of the ``champion`` served by ``endpoint`` on the newest partitions (all
    their rows, read by the version's model module): quality by task
    (:func:`tfmlops.drift.quality`), drift per named input and of the served outputs against the
    version's profile (:func:`tfmlops.drift.measure`), the features that moved most named."""
    client = endpoint.client
    partitions = newest_partitions(root, dataset, newest, s3_client)
    if not partitions:
        return {"model_name": model_name, "retrain": False, "breaches": [], "partitions": [],
                "reason": f"no partition in {root}/{dataset}/incoming: nothing to evaluate"}
    champion = registry.get_version(tracking_uri, model_name, registry.CHAMPION)
    version = int(champion.version)
    if version not in available_versions(client, model_name):
        raise LookupError(f"{model_name} champion version {version} is not AVAILABLE on the server")
    spec, module = version_spec(champion)
    rows = all_rows(spec, module, partitions.values(), s3_client)
    outputs = served_outputs(client, model_name, spec, rows.features, version=version)
    q = drift.quality(spec.task, rows.labels, outputs, spec.num_classes)
    reference = ensure_reference(tracking_uri, model_name, version, client, reference_rows, s3_client)
    d = drift.measure(reference, rows.features, outputs, module)
    breaches = [b for b in [quality_breach(spec, q, thresholds)] if b]
    if d["input_psi_max"] > thresholds.max_input_psi:
        breaches.append(f"input drift: PSI of {d['input_psi_worst']} {d['input_psi_max']:.3f} > "
                        f"{thresholds.max_input_psi:.3f} (moved most: {moved_most(d)})")
    if d["prediction_psi"] > thresholds.max_prediction_psi:
        breaches.append(f"prediction drift: PSI {d['prediction_psi']:.3f} > {thresholds.max_prediction_psi:.3f}")
    run_id = monitoring_run(tracking_uri, model_name)
    step = log_step(tracking_uri, run_id, {**task_quality_metrics(q), **drift_metrics(d), "quality.rows": len(rows),
                                           "quality.served_version": version})
    if "confusion_matrix" in q:
        registry.log_confusion_matrix(tracking_uri, run_id, q["confusion_matrix"])
    registry.client(tracking_uri).log_dict(run_id, {"quality": q, "drift": d, "partitions": list(partitions)},
                                           "reports/last_quality_drift.json")
    registry.set_tags(tracking_uri, run_id, {"last_partitions": ",".join(partitions), "last_breaches":
                                             "; ".join(breaches)[:4000] or "none",
                                             "last_drift_moved_most": moved_most(d, 5)[:4000],
                                             "last_module_changed": modelspec.module_changed_tags(spec).get(
                                                 "model.module_changed", "no")})
    charts = log_trend_charts(tracking_uri, run_id)
    reason = (f"{model_name} version {version} on partitions {list(partitions)}: " + "; ".join(breaches)) \
        if breaches else ""
    log.info("quality %s=%.4f, drift %s (moved most: %s), breaches %s", q["metric"], q["value"],
             {k: d[k] for k in ("input_psi_max", "prediction_psi")}, moved_most(d), breaches)
    headline = {k: q[k] for k in ("task", "metric", "value", "rows")}
    return {"model_name": model_name, "version": version, "run_id": run_id, "step": step,
            "partitions": list(partitions), "retrain": bool(breaches), "breaches": breaches, "reason": reason,
            "quality": {**headline, **{k: q[k] for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro",
                                                         "auc", "rmse", "mae", "r2") if k in q}},
            "per_class_f1": (q.get("per_class") or {}).get("f1"), "confusion_matrix": q.get("confusion_matrix"),
            "drift": {k: d[k] for k in ("input_psi_max", "input_psi_worst", "prediction_psi", "top")},
            "charts": charts}


def check_live_drift(tracking_uri: str, model_name: str, endpoint, log_prefix: str, thresholds: Thresholds,
                     window_s: float = 3600.0, min_rows: int = 100, reference_rows: int = 2000) -> dict:
    """Drift of what users sent to the ``champion`` (the server's request logs of the last
    ``window_s``, read by the version's spec: Predict, Classify and Regress records,
    :mod:`tfmlops.feedback`; the project's own requests left out) and of what it answered, against
    the version's training profile, per named input; fewer than ``min_rows`` logged rows: no verdict."""
    from tfmlops import feedback

    champion = registry.get_version(tracking_uri, model_name, registry.CHAMPION)
    version = int(champion.version)
    spec, module = version_spec(champion)
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
    skipped: list[str] = []
    logged = [r for rid, r in feedback.read_request_logs(files, spec, skipped).items()
              if r["model_version"] == version and r["outputs"] is not None
              and not rid.startswith(REQUEST_ID_PREFIX)]
    if skipped:
        log.warning("%d logged records do not fit %s's inputs, e.g. %s", len(skipped), model_name, skipped[:3])
    rows = sum(r["rows"] for r in logged)
    base = {"model_name": model_name, "version": version, "log_files": len(files), "rows": rows, "breaches": [],
            "retrain": False}
    if rows < min_rows:
        return {**base, "reason": f"{rows} logged rows of version {version} in the last {window_s:.0f} s, "
                                  f"fewer than {min_rows}: no live drift verdict"}
    features = {name: np.concatenate([r["features"][name] for r in logged]) for name in spec.inputs}
    outputs = np.concatenate([r["outputs"] for r in logged])
    reference = ensure_reference(tracking_uri, model_name, version, endpoint.client, reference_rows)
    d = drift.measure(reference, features, outputs, module)
    breaches = []
    if d["input_psi_max"] > thresholds.max_input_psi:
        breaches.append(f"live input drift: PSI of {d['input_psi_worst']} {d['input_psi_max']:.3f} > "
                        f"{thresholds.max_input_psi:.3f} on {rows} logged rows (moved most: {moved_most(d)})")
    if d["prediction_psi"] > thresholds.max_prediction_psi:
        breaches.append(f"live prediction drift: PSI {d['prediction_psi']:.3f} > {thresholds.max_prediction_psi:.3f} "
                        f"on {rows} logged rows")
    run_id = monitoring_run(tracking_uri, model_name)
    step = log_step(tracking_uri, run_id, {"live.rows": rows, "live.input_psi_max": d["input_psi_max"],
                                           "live.prediction_psi": d["prediction_psi"]})
    log.info("live drift of version %s on %d logged rows: %s", version, rows,
             {k: d[k] for k in ("input_psi_max", "prediction_psi")})
    reason = f"{model_name} version {version}, live traffic: " + "; ".join(breaches) if breaches else ""
    return {**base, "run_id": run_id, "step": step, "breaches": breaches, "retrain": bool(breaches), "reason": reason,
            "drift": {k: d[k] for k in ("input_psi_max", "input_psi_worst", "prediction_psi", "top")}}

