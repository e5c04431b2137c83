"""Steps of ``tf_optimize_export``, one function per step (what the operators call); the first
step, resolving the version, is :func:`tfmlops.steps.retrain.resolve`.

Everything lands on the MLflow run of the registered version being optimized:

- ``optimization/<variant>/`` — ``result.json`` (status passed / rejected / failed, accuracy, drop,
  reason, details) for every requested variant, and the candidate model when it passed
  (``model.tflite`` for the quantizations, ``model.keras`` for pruned / distilled, both for
  ``pruned_int8`` and ``qat_int8``: the flatbuffer and the Keras model it is checked against —
  the pruned model, the fine-tuned float weights);
- ``format_checks/<variant>-<format>.json`` — the numbers of every format check, passed or not;
- ``formats/<variant>-<format>/`` — only the artifacts that passed their check (one folder each,
  with ``verification.json`` and, for TF.js, ``chromium.png``);
- ``formats/report/`` — report.json, report.md, tradeoff.png; plus metrics ``format.<name>.*``;
- ``mobile/<variant>/`` — the mobile bundle of ``int8`` / ``float16`` (:mod:`tfmlops.mobile.bundle`)
  and ``smoke.json``, the bundle run from its own files against the registered model.

A ``stamp`` (the Airflow run id) is written into each record, so the report of a run only shows
that run's records when a version is optimized again.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from tfmlops import model_data, registry
from tfmlops.formats import (FormatCheckError, NotApplicable, RuntimeUnavailable, artifact_name,
                             tolerance_for)

__all__ = ["FormatCheckError", "MobileBundleError", "NotApplicable", "RuntimeUnavailable", "export_format",
           "mobile_bundles", "model_problem", "optimize_and_export_all", "optimize_variant", "report"]

log = logging.getLogger(__name__)

OPTIMIZATION_ARTIFACT = "optimization"
CHECKS_ARTIFACT = "format_checks"
FORMATS_ARTIFACT = "formats"
REPORT_ARTIFACT = "formats/report"
MOBILE_ARTIFACT = "mobile"
SMOKE_ROWS = 512


class MobileBundleError(RuntimeError):
    """A mobile bundle run from its own files does not reproduce the registered model."""


def sample_rows() -> int:
    """Rows per split a streamed dataset is sampled to for ``tf_optimize_export``
    (``TFMLOPS_OPTIMIZE_SAMPLE_ROWS``, default 50 000)."""
    return int(os.environ.get("TFMLOPS_OPTIMIZE_SAMPLE_ROWS", "50000"))


def model_problem(model: dict, data) -> tuple:
    """What the steps of a version work on: its model spec (the one it was registered with; a
    version registered before specs is the default module's MNIST MLP), the module, and the
    module's data — ``data.uri`` when the form names one, else the dataset the version was trained
    on (``dataset_uri`` on its run). A dataset that streams (larger than memory) becomes a seeded
    sample of :func:`sample_rows` rows per split (:func:`tfmlops.model_data.sampled`): the
    fine-tuning, int8 calibration, scores and format checks work on that sample."""
    from tfmlops import modelspec

    spec = modelspec.ModelSpec.from_dict(model["model_spec"]) if model.get("model_spec") else \
        modelspec.read_spec(modelspec.DEFAULT_MODULE)
    uri = str(data.uri or "") or model.get("dataset_uri") or "mnist"
    module = modelspec.import_module(spec.module)
    loaded, _ = model_data.load(spec, module, uri, data.sample_fraction, data.seed, s3_client=data.s3_client,
                                max_overlap_fraction=data.max_overlap_fraction)
    return spec, module, model_data.sampled(loaded, sample_rows(), data.seed)


def _keras_predict(keras_model):
    from tfmlops.trainer import inputs_for

    return lambda features: keras_model.predict(inputs_for(keras_model, features), batch_size=1024, verbose=0)


def optimize_variant(tracking_uri: str, model: dict, variant: str, spec, config, stamp: str = "") -> dict:
    """Build and gate one variant of ``model`` (a :func:`~tfmlops.steps.retrain.resolve` result) on
    the model's data (``spec``: a :class:`~tfmlops.steps.retrain.DataSpec`); log its result (and the
    candidate when it passed) under ``optimization/<variant>/``. ``config`` is an
    :class:`~tfmlops.optimize.OptimizeConfig`, or a dict of its fields where ``None`` means the model
    module's ``OPTIMIZE`` value, else the platform's default. Never raises for a variant problem: the
    result's ``status`` says passed / rejected / skipped (does not apply) / failed."""
    from tfmlops import optimize

    model_spec, module, loaded = model_problem(model, spec)
    if isinstance(config, dict):
        config = optimize.OptimizeConfig.for_model(module, config)
    keras_model = registry.load_keras_model(tracking_uri, model["model_uri"])
    candidate, result = optimize.optimize_one(variant, keras_model, loaded, config, spec=model_spec, module=module)
    result = {**result, "stamp": stamp, "config": config.to_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / variant
        folder.mkdir()
        if result["status"] == "passed":
            if candidate.tflite is not None:
                (folder / "model.tflite").write_bytes(candidate.tflite)
            if candidate.model is not None:
                candidate.model.save(str(folder / "model.keras"))
        (folder / "result.json").write_text(json.dumps(result, indent=2, default=str))
        result["artifact_uri"] = registry.log_files(tracking_uri, model["run_id"], folder,
                                                    f"{OPTIMIZATION_ARTIFACT}/{variant}")
    if result.get("score") is not None:
        registry.log_metrics(tracking_uri, model["run_id"], {
            f"optimize.{variant}.{result['metric']}": result["score"],
            f"optimize.{variant}.{result['metric']}_{'drop' if result['metric'] != 'rmse' else 'increase'}":
                result["drop"]})
    return result


def _source(tracking_uri: str, model: dict, variant: str, tmp: Path):
    """(keras model to export or None, tflite bytes or None, callable that gives the source's raw
    outputs on a features dict)."""
    from tfmlops.model_files import load_keras_file

    float_model = registry.load_keras_model(tracking_uri, model["model_uri"])
    if variant == "float":
        return float_model, None, _keras_predict(float_model)
    local = registry.download(tracking_uri, f"runs:/{model['run_id']}/{OPTIMIZATION_ARTIFACT}/{variant}", tmp)
    tflite = (local / "model.tflite").read_bytes() if (local / "model.tflite").exists() else None
    if tflite is not None and not (local / "model.keras").exists():
        return None, tflite, _keras_predict(float_model)  # post-training quantization: the float model is the source
    if not (local / "model.keras").exists():
        raise FileNotFoundError(f"{variant} has no candidate model on run {model['run_id']} (status: "
                                f"{json.loads((local / 'result.json').read_text()).get('status')})")
    # pruned_int8 / qat_int8: the flatbuffer is checked against the Keras model it was quantized from
    variant_model = load_keras_file(local / "model.keras")
    return variant_model, tflite, _keras_predict(variant_model)


def _tolerance(variant: str, fmt: str, spec, test, max_abs_diff: float, min_agreement: float):
    return tolerance_for(variant, fmt, max_abs_diff, min_agreement, task=spec.task,
                         label_std=float(np.std(test.labels)) if spec.task == "regression" else None)


def export_format(tracking_uri: str, model: dict, variant: str, fmt: str, spec, max_abs_diff: float = 1e-5,
                  min_agreement: float = 0.99, stamp: str = "") -> dict:
    """Export ``variant`` as ``fmt``, check it in its runtime(s) on the model's test split; when it
    passes, log the folder under ``formats/<variant>-<format>/``. The check's record is logged
    either way. A format the model's ops or layers do not allow returns its record with ``status``
    ``not_applicable`` and the ``reason``; a failed check raises
    :class:`~tfmlops.formats.verify.FormatCheckError` after its record was logged."""
    from tfmlops.formats.verify import export_and_verify, not_applicable_row

    name = artifact_name(variant, fmt)
    model_spec, _, loaded = model_problem(model, spec)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        keras_model, tflite_content, source = _source(tracking_uri, model, variant, tmp / "source")
        try:
            row = export_and_verify(variant, fmt, tmp / name, model_spec, loaded.test, source, model=keras_model,
                                    tflite_content=tflite_content,
                                    tolerance=_tolerance(variant, fmt, model_spec, loaded.test, max_abs_diff,
                                                         min_agreement))
        except NotApplicable as exc:
            row = {**not_applicable_row(variant, fmt, str(exc)), "stamp": stamp}
            log.warning("%s does not apply to this model: %s", name, exc)
            _log_check(tracking_uri, model["run_id"], name, row, tmp)
            return row
        except FormatCheckError as exc:
            _log_check(tracking_uri, model["run_id"], name, {**exc.rows[0], "stamp": stamp}, tmp)
            raise
        row["stamp"] = stamp
        _log_check(tracking_uri, model["run_id"], name, row, tmp)
        row["artifact_uri"] = registry.log_files(tracking_uri, model["run_id"], tmp / name,
                                                 f"{FORMATS_ARTIFACT}/{name}")
    metrics = {f"format.{name}.bytes": row["bytes"], f"format.{name}.gzipped_bytes": row["gzipped_bytes"]}
    for check in row["checks"]:
        for key in ("max_abs_diff", "latency_ms"):
            if check.get(key) is not None:
                metrics[f"format.{name}.{check['runtime']}.{key}"] = check[key]
        if check.get("score") is not None:
            metrics[f"format.{name}.{check['runtime']}.{check['metric']}"] = check["score"]
    registry.log_metrics(tracking_uri, model["run_id"], metrics)
    return row


def _log_check(tracking_uri: str, run_id: str, name: str, row: dict, tmp: Path) -> None:
    folder = tmp / "checks"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(row, indent=2, default=str))
    registry.client(tracking_uri).log_artifact(run_id, str(folder / f"{name}.json"), artifact_path=CHECKS_ARTIFACT)


def _records(tracking_uri: str, run_id: str, path: str, filename: str | None, stamp: str, tmp: Path) -> list[dict]:
    mlf = registry.client(tracking_uri)
    records = []
    for entry in mlf.list_artifacts(run_id, path):
        target = f"{entry.path}/{filename}" if filename else entry.path
        if (filename and not entry.is_dir) or (not filename and not entry.path.endswith(".json")):
            continue
        try:
            local = registry.download(tracking_uri, f"runs:/{run_id}/{target}", tmp)
        except Exception:  # noqa: BLE001 — a folder without the file (e.g. an interrupted run)
            continue
        record = json.loads(Path(local).read_text())
        if not stamp or record.get("stamp") == stamp:
            records.append(record)
    return records


def report(tracking_uri: str, model: dict, stamp: str = "") -> dict:
    """Collect this run's variant results and format checks from the MLflow run, write the
    report (JSON, Markdown, PNG) under ``formats/report/``; returns a summary."""
    from tfmlops.formats import report as report_lib

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        variants = _records(tracking_uri, model["run_id"], OPTIMIZATION_ARTIFACT, "result.json", stamp, tmp / "v")
        checks = _records(tracking_uri, model["run_id"], CHECKS_ARTIFACT, None, stamp, tmp / "c")
        checks.sort(key=lambda r: r["artifact"])
        report_lib.write(checks, tmp / "report", variants,
                         title=f"{model['model_name']} version {model['version']}: export formats",
                         extra={"model": model, "stamp": stamp})
        uri = registry.log_files(tracking_uri, model["run_id"], tmp / "report", REPORT_ARTIFACT)
    summary = {"report_uri": uri, "verified": sorted(r["artifact"] for r in checks if r["passed"]),
               "failed_checks": sorted(r["artifact"] for r in checks if r["passed"] is False),
               "not_applicable": {r["artifact"]: r["reason"] for r in checks if r.get("status") == "not_applicable"},
               "variants": {v["variant"]: v["status"] for v in variants}}
    log.info("report: %s", summary)
    return summary


def _verified_tflite(tracking_uri: str, run_id: str, variant: str, stamp: str, tmp: Path) -> bytes | None:
    """The flatbuffer of ``<variant>-tflite`` when its format check passed (in this run, with a
    ``stamp``), else None."""
    name = artifact_name(variant, "tflite")
    try:
        check = json.loads(registry.download(tracking_uri, f"runs:/{run_id}/{CHECKS_ARTIFACT}/{name}.json",
                                             tmp / "checks").read_text())
        if not check.get("passed") or (stamp and check.get("stamp") != stamp):
            return None
        return registry.download(tracking_uri, f"runs:/{run_id}/{FORMATS_ARTIFACT}/{name}/model.tflite",
                                 tmp / name).read_bytes()
    except Exception:  # noqa: BLE001 — MLflow raises its own errors for a missing artifact: not verified
        return None


def mobile_bundles(tracking_uri: str, model: dict, spec, targets=("int8", "float16"), stamp: str = "") -> dict:
    """A mobile bundle per target whose TFLite artifact passed its format check (in this run, with
    a ``stamp``; the others are listed as ``missing``): built from the model spec (inputs, labels
    for classification) and the module's optional ``MOBILE_INPUTS`` (what the app feeds, e.g. raw
    pixels 0-255, and how the bundle normalizes it), smoke-run from its own files on the first test
    rows against the registered (float) model, logged under ``mobile/<variant>/`` with ``smoke.json``.
    Raises :class:`MobileBundleError` (after logging the numbers) when a bundle does not reproduce
    the model."""
    from tfmlops.mobile import bundle

    with tempfile.TemporaryDirectory() as tmp:
        verified = {v: _verified_tflite(tracking_uri, model["run_id"], v, stamp, Path(tmp) / "verified")
                    for v in targets}
    if not any(verified.values()):  # nothing to bundle: the model and its data are not loaded
        log.info("mobile bundles: no verified TFLite artifact of %s in this run", list(targets))
        return {"bundles": {}, "missing": list(targets)}
    model_spec, module, loaded = model_problem(model, spec)
    client_normalization = getattr(module, "MOBILE_INPUTS", None)
    rows = loaded.test.head(SMOKE_ROWS)
    client = {}  # what the app feeds: the model's features before the declared normalization
    for name, values in rows.features.items():
        norm = (client_normalization or {}).get(name)
        client[name] = values if not norm else np.round(np.asarray(values, np.float32) * norm["std"] + norm["mean"])
    model_inputs = {name: values if not (client_normalization or {}).get(name) else
                    ((values - client_normalization[name]["mean"]) / client_normalization[name]["std"]).astype(
                        np.float32) for name, values in client.items()}
    float_model = registry.load_keras_model(tracking_uri, model["model_uri"])
    expected = _keras_predict(float_model)(model_inputs)
    # a regressor's bundle: the rule of its lossy format check (a quantile of |diff| vs the labels' spread)
    lossy = _tolerance("int8", "tflite", model_spec, loaded.test, 1e-5, 0.99) if model_spec.task == "regression" \
        else None
    built, missing, failed = {}, [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for variant in targets:
            content = verified[variant]
            if content is None:
                missing.append(variant)
                continue
            folder = tmp / MOBILE_ARTIFACT / variant
            path = bundle.build(content, folder, model["model_name"], model["version"], variant, model_spec,
                                check=f"run from its own files on {len(rows)} test rows vs the registered model",
                                client_normalization=client_normalization)
            result = {**bundle.smoke(path, client, expected, model_spec,
                                     max_value_diff=lossy.max_abs_diff if lossy else None,
                                     quantile=lossy.quantile if lossy else None), "stamp": stamp}
            (folder / "smoke.json").write_text(json.dumps(result, indent=2, default=str))
            result["artifact_uri"] = registry.log_files(tracking_uri, model["run_id"], folder,
                                                        f"{MOBILE_ARTIFACT}/{variant}")
            built[variant] = result
            if not result["passed"]:
                failed.append(f"{variant}: agreement {result.get('argmax_agreement')}, max |diff| "
                              f"{result.get('max_abs_diff')}, labels match {result.get('labels_match')}")
    if failed:
        raise MobileBundleError("mobile bundle smoke run failed: " + "; ".join(failed))
    log.info("mobile bundles: %s; missing (not verified in this run): %s", sorted(built), missing)
    return {"bundles": built, "missing": missing}


def optimize_and_export_all(model, dataset, out: Path, variants, formats, config, max_abs_diff: float = 1e-5,
                            min_agreement: float = 0.99, spec=None, module=None) -> dict:
    """In one process, without MLflow (tests, benchmark): every variant, every artifact, the report.
    Failed variants and failed checks are recorded, never raised; formats that do not apply are
    recorded as such. ``dataset``: a :class:`~tfmlops.model_data.ModelData` of ``spec`` (or a one-input
    :class:`tfmlops.data.Dataset`)."""
    from tfmlops import optimize
    from tfmlops.export import legacy_spec
    from tfmlops.formats import artifacts
    from tfmlops.formats import report as report_lib
    from tfmlops.formats.verify import export_and_verify, not_applicable_row
    from tfmlops.model_data import from_dataset

    out = Path(out)
    spec = spec or legacy_spec(model)
    if hasattr(dataset, "x_train"):
        dataset = from_dataset(dataset, next(iter(spec.inputs)))
    passed, variant_results = optimize.optimize(model, dataset, variants, config, spec=spec, module=module)
    float_predict = _keras_predict(model)
    rows = []
    for variant, fmt in artifacts(variants=list(passed), formats=formats):
        candidate = passed.get(variant)
        keras_model = model if candidate is None else candidate.model
        source = float_predict if keras_model is model or candidate.model is None else _keras_predict(keras_model)
        try:
            rows.append(export_and_verify(variant, fmt, out / artifact_name(variant, fmt), spec, dataset.test,
                                          source, model=keras_model,
                                          tflite_content=None if candidate is None else candidate.tflite,
                                          tolerance=_tolerance(variant, fmt, spec, dataset.test, max_abs_diff,
                                                               min_agreement)))
        except NotApplicable as exc:
            rows.append(not_applicable_row(variant, fmt, str(exc)))
        except FormatCheckError as exc:
            rows.extend(exc.rows)
    written = report_lib.write(rows, out / "report", variant_results)
    return {"variants": variant_results, "artifacts": rows, "report": written,
            "float_score": optimize.score(float_predict(dataset.test.features), dataset.test.labels, spec.task),
            "float_accuracy": float(np.mean(np.argmax(float_predict(dataset.test.features), 1) == dataset.test.labels))
            if spec.task == "multiclass" else None}
