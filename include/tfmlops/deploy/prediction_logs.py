"""What a replica group answered, from logged predictions (``tensorflow.serving.PredictionLog``
TFRecord files: the replicas' sampled request logs, :mod:`tfmlops.feedback`; any other writer of
the same format — a router-side mirror — feeds the same functions), and the comparison of two
groups' predicted-class distributions over one window (the gray release's "wrong outputs" check).

- :func:`log_files` — the files of a ``filename_prefix`` that may hold records since a time;
- :func:`logged_predictions` — the Predict records of some files in a time window: request id,
  model version, predicted classes (argmax of the output tensor, one per row); the project's own
  requests (ids prefixed ``tfmlops-``: checks, probes) are left out, they are not users' traffic;
- :func:`compare_distributions` — total variation distance (TVD) and PSI of the two class
  histograms, and a chi-square test of homogeneity: a breach needs both a distance over its limit
  and a difference that sampling noise does not explain (``p < alpha``) — with a few dozen
  predictions the TVD of two samples of one distribution is often 0.1 or more, with many
  thousands a real but harmless 1 % shift is always "significant".

No Airflow (TensorFlow only as the ``PredictionLog`` protos import it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .client import REQUEST_ID_PREFIX


@dataclass(frozen=True)
class LoggedPrediction:
    request_id: str
    version: int
    timestamp: int  # log_metadata.timestamp_secs (whole seconds)
    classes: np.ndarray  # predicted class of each row
    # the value of each row when the output has one value per row ([B] or [B, 1]: a regression), else None
    values: np.ndarray | None = None


def log_files(prefix: str, since: float | None = None) -> list[str]:
    """Complete and still-written (``.partial``) log files of ``prefix`` last written at or after
    ``since`` (epoch seconds; a file not written since cannot hold a later record)."""
    from tfmlops.feedback import list_request_logs

    out = []
    for path in list_request_logs(prefix, include_partial=True):
        try:
            if since is None or os.path.getmtime(path) >= since - 1:
                out.append(path)
        except FileNotFoundError:  # a .partial file closed since it was listed
            out.append(path.removesuffix(".partial"))
    return out


def logged_predictions(paths: list[str], since: float | None = None, until: float | None = None,
                       output: str | None = None, exclude_prefix: str = REQUEST_ID_PREFIX,
                       model: str | None = None) -> list[LoggedPrediction]:
    """The Predict records of ``paths`` logged in ``[floor(since), until]`` (epoch seconds), without
    those whose request id starts with ``exclude_prefix`` and, with ``model``, those that name
    another model (a router mirror logs every model of a replica group under one prefix).
    ``output`` names the output tensor whose argmax is the predicted class (default: the
    response's only output; a record with several outputs and no ``output`` raises ``ValueError``)."""
    from tensorflow_serving.apis import prediction_log_pb2

    from tfmlops.feedback import complete_records
    from tfmlops.serving.tensors import make_ndarray

    lo = None if since is None else int(since)
    out = []
    for path in paths:
        try:
            records = list(complete_records(path))
        except FileNotFoundError:  # rotated away meanwhile (an uploaded s3:// spool file)
            continue
        for record in records:
            plog = prediction_log_pb2.PredictionLog.FromString(record)
            meta = plog.log_metadata
            if plog.WhichOneof("log_type") != "predict_log" or meta.request_origin.startswith(exclude_prefix or "\0"):
                continue
            if model and meta.model_spec.name and meta.model_spec.name != model:
                continue
            if (lo is not None and meta.timestamp_secs < lo) or (until is not None and meta.timestamp_secs > until):
                continue
            outputs = plog.predict_log.response.outputs
            if not outputs:
                continue
            if output is None and len(outputs) > 1:
                raise ValueError(f"{path}: logged responses have outputs {sorted(outputs)}; name the one whose "
                                 "argmax is the predicted class")
            name = output or next(iter(outputs))
            if name not in outputs:
                raise ValueError(f"{path}: logged responses have no output {name!r} (they have {sorted(outputs)})")
            y = np.asarray(make_ndarray(outputs[name], name))
            classes = y.reshape(len(y), -1).argmax(axis=1) if y.ndim else np.zeros(0, np.int64)
            one_value = y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)
            out.append(LoggedPrediction(meta.request_origin, int(meta.model_spec.version.value),
                                        int(meta.timestamp_secs), classes,
                                        y.reshape(-1).astype(np.float64) if one_value else None))
    return out


def predicted_values(predictions: list[LoggedPrediction]) -> np.ndarray | None:
    """Every logged row's value when the predictions are a regression's (one value per row), else None."""
    if not predictions or any(p.values is None for p in predictions):
        return None
    return np.concatenate([p.values for p in predictions])


def compare_value_distributions(reference: np.ndarray, candidate: np.ndarray, max_ks: float, alpha: float,
                                min_predictions: int) -> dict:
    """A regression's predicted values, ``reference`` (stable) vs ``candidate`` (canary): the
    two-sample Kolmogorov-Smirnov distance and p-value, with both groups' quantiles; ``status`` as
    :func:`compare_distributions` (a breach needs distance > ``max_ks`` and p < ``alpha``)."""
    from scipy.stats import ks_2samp

    def quantiles(v):
        return {f"p{q}": float(np.percentile(v, q)) for q in (5, 25, 50, 75, 95)} if len(v) else {}

    n_ref, n_cand = len(reference), len(candidate)
    result = {"stable_predictions": n_ref, "canary_predictions": n_cand, "stable_quantiles": quantiles(reference),
              "canary_quantiles": quantiles(candidate), "ks": None, "p_value": None}
    if min(n_ref, n_cand) < min_predictions:
        return {**result, "status": "not measured",
                "reason": f"{n_ref} stable and {n_cand} canary predictions logged in the window "
                          f"(each needs >= {min_predictions})"}
    test = ks_2samp(reference, candidate)
    ks, p_value = float(test.statistic), float(test.pvalue)
    result.update(ks=ks, p_value=p_value)
    if ks > max_ks and p_value < alpha:
        return {**result, "status": "breach",
                "reason": f"prediction distribution: KS distance {ks:.3f} between canary and stable predicted values "
                          f"(allowed {max_ks:g}; p={p_value:.2g} < {alpha:g}; medians "
                          f"{result['canary_quantiles']['p50']:.4g} vs {result['stable_quantiles']['p50']:.4g}) on "
                          f"{n_cand} canary / {n_ref} stable predictions"}
    return {**result, "status": "ok"}


def class_counts(predictions: list[LoggedPrediction]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for p in predictions:
        for c, n in zip(*np.unique(p.classes, return_counts=True)):
            counts[int(c)] = counts.get(int(c), 0) + int(n)
    return dict(sorted(counts.items()))


def compare_distributions(reference: dict[int, int], candidate: dict[int, int], max_tvd: float, alpha: float,
                          min_predictions: int) -> dict:
    """``reference`` (stable) vs ``candidate`` (canary) class counts: ``status`` ``"ok"``,
    ``"breach"`` (``reason`` with the numbers) or ``"not measured"`` (fewer than
    ``min_predictions`` rows on a side), with ``tvd``, ``psi``, ``p_value`` and both histograms."""
    from scipy.stats import chi2_contingency

    from tfmlops.monitoring import psi_from_fractions

    classes = sorted(set(reference) | set(candidate))
    n_ref, n_cand = sum(reference.values()), sum(candidate.values())
    result = {"stable_predictions": n_ref, "canary_predictions": n_cand,
              "stable_classes": {str(k): v for k, v in reference.items()},
              "canary_classes": {str(k): v for k, v in candidate.items()},
              "tvd": None, "psi": None, "p_value": None}
    if min(n_ref, n_cand) < min_predictions:
        return {**result, "status": "not measured",
                "reason": f"{n_ref} stable and {n_cand} canary predictions logged in the window "
                          f"(each needs >= {min_predictions})"}
    ref = np.array([reference.get(c, 0) for c in classes], float)
    cand = np.array([candidate.get(c, 0) for c in classes], float)
    tvd = float(0.5 * np.abs(ref / n_ref - cand / n_cand).sum())
    p_value = 1.0 if len(classes) < 2 else float(chi2_contingency(np.stack([ref, cand]), correction=False)[1])
    result.update(tvd=tvd, psi=psi_from_fractions(ref / n_ref, cand / n_cand), p_value=p_value)
    if tvd > max_tvd and p_value < alpha:
        return {**result, "status": "breach",
                "reason": f"prediction distribution: TVD {tvd:.3f} between canary and stable predicted classes "
                          f"(allowed {max_tvd:g}; chi-square p={p_value:.2g} < {alpha:g}) on {n_cand} canary / "
                          f"{n_ref} stable predictions"}
    return {**result, "status": "ok"}
