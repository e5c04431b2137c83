"""Checks of a loaded version before it takes traffic: smoke parity over REST and gRPC against
the registered model's predictions, accuracy (classifiers) or RMSE (regressors) on a labeled
holdout, a p99 latency budget."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .client import ServingClient, ServingError
from .endpoint import Endpoint
from .errors import RolloutError

if TYPE_CHECKING:  # rollout imports this module
    from .rollout import Candidate


class CheckFailed(RolloutError):
    """A post-load check (smoke parity, accuracy, latency) failed."""


@dataclass
class CanaryChecks:
    smoke: bool = True
    holdout_x: np.ndarray | None = None
    holdout_y: np.ndarray | None = None
    min_accuracy: float | None = None  # classifiers: accuracy on the holdout
    max_rmse: float | None = None  # regressors (smoke output ``outputs``): RMSE on the holdout, in the label's unit
    latency_budget_ms: float | None = None  # p99 of single-row REST predicts on the canary label
    latency_requests: int = 30


def smoke_inputs(smoke: dict):
    """The smoke batch's inputs: a dict of named arrays (``inputs`` + ``input_dtypes``, any model)
    or, in a ``smoke.json`` from before model specs, the one float input's rows (``instances``)."""
    if "inputs" in smoke:
        dtypes = smoke.get("input_dtypes") or {}
        return {k: np.asarray(v, dtype=object if dtypes.get(k) == "string" else dtypes.get(k, "float32"))
                for k, v in smoke["inputs"].items()}
    return np.asarray(smoke["instances"], dtype=np.float32)


def first_row(inputs):
    """A batch of one row of ``inputs`` (named arrays or rows)."""
    if isinstance(inputs, dict):
        return {k: v[:1] for k, v in inputs.items()}
    return inputs[:1]


def smoke_parity(client: ServingClient, smoke: dict, model: str, *, version: int | None = None,
                 label: str | None = None, where: str = "") -> dict:
    """Predict the smoke batch over REST and gRPC; both must equal ``smoke["expected"]`` within
    its tolerance (absolute for values within ±1, relative beyond). Returns the max differences."""
    x = smoke_inputs(smoke)
    expected = np.asarray(smoke["expected"], dtype=np.float32)
    tol = float(smoke.get("tolerance", 1e-5))
    sig = smoke.get("signature_name") or "serving_default"
    out = {}
    for api in ("rest", "grpc"):
        try:
            if api == "rest":
                got = client.predict_rest(model, x if isinstance(x, dict) else x.tolist(), version=version,
                                          label=label, signature_name=sig)
            else:
                got = client.predict_grpc(model, x, version=version, label=label, signature_name=sig)
        except ServingError as exc:
            raise CheckFailed(f"{where}: smoke predict over {api.upper()} failed: {exc}") from exc
        if isinstance(got, dict):
            name = smoke.get("output") if smoke.get("output") in got else sorted(got)[0]
            got = got[name]
        got = np.asarray(got, dtype=np.float32)
        if got.shape != expected.shape:
            raise CheckFailed(f"{where}: {api.upper()} predictions have shape {got.shape}, expected {expected.shape}")
        # relative above 1 in magnitude (a regressed value of 200 carries float32's ~1e-5 through JSON),
        # absolute below (probabilities)
        diff = float(np.max(np.abs(got - expected) / np.maximum(1.0, np.abs(expected)))) if expected.size else 0.0
        if not diff <= tol:
            raise CheckFailed(f"{where}: {api.upper()} predictions differ from the registered model's by {diff:.3g} "
                              f"(tolerance {tol:g})")
        out[f"smoke_{api}_max_abs_diff"] = diff
    return out


def _served(client: ServingClient, model: str, x, *, label, version, signature_name, batch: int) -> np.ndarray:
    """The served outputs for every row of ``x`` (rows of the one input, or named input arrays)."""
    n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
    parts = []
    for i in range(0, n, batch):
        rows = {k: v[i:i + batch] for k, v in x.items()} if isinstance(x, dict) else x[i:i + batch].tolist()
        got = client.predict_rest(model, rows, label=label, version=version, signature_name=signature_name)
        if isinstance(got, dict):
            got = got[sorted(got)[0]]
        parts.append(np.asarray(got, dtype=np.float64))
    return np.concatenate(parts) if parts else np.zeros((0,))


def holdout_accuracy(client: ServingClient, model: str, x, y, *, label: str | None = None,
                     version: int | None = None, signature_name: str | None = None, batch: int = 256) -> float:
    x = x if isinstance(x, dict) else np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(int).ravel()
    got = _served(client, model, x, label=label, version=version, signature_name=signature_name, batch=batch)
    return int(np.sum(np.argmax(got, axis=-1) == y)) / max(len(y), 1)


def holdout_rmse(client: ServingClient, model: str, x, y, *, label: str | None = None,
                 version: int | None = None, signature_name: str | None = None, batch: int = 256) -> float:
    """RMSE of a served regressor's outputs on the holdout (labels as floats)."""
    x = x if isinstance(x, dict) else np.asarray(x, dtype=np.float32)
    got = _served(client, model, x, label=label, version=version, signature_name=signature_name, batch=batch)
    return float(np.sqrt(np.mean((got.reshape(-1) - np.asarray(y, dtype=np.float64).reshape(-1)) ** 2)))


def latency_p99_ms(client: ServingClient, model: str, row, n: int, *, label: str | None = None,
                   version: int | None = None, signature_name: str | None = None) -> float:
    """p99 of ``n`` single-row REST predicts: ``row`` is one row, or a dict of one-row named arrays."""
    body = row if isinstance(row, dict) else [np.asarray(row).tolist()]
    times = []
    for _ in range(max(n, 1)):
        t0 = time.perf_counter()
        client.predict_rest(model, body, label=label, version=version, signature_name=signature_name)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.percentile(times, 99))


def _holdout_check(ep: Endpoint, cand: Candidate, checks: CanaryChecks, where: str, **target) -> dict:
    """Accuracy against ``min_accuracy`` (classifiers) or RMSE against ``max_rmse`` (regressors: a
    smoke batch whose output is ``outputs``) on the labelled holdout, through the server."""
    if cand.smoke.get("task") == "regression" or cand.smoke.get("output") == "outputs":
        name, bound, measure, worse, side = "RMSE", checks.max_rmse, holdout_rmse, float.__gt__, "> maximum"
        if bound is None:
            return {"holdout_check": "not run: a regressor is judged by max_rmse, which is not set"}
    else:
        name, bound, measure, worse, side = "accuracy", checks.min_accuracy, holdout_accuracy, float.__lt__, "< minimum"
        if bound is None:
            return {}
    try:
        value = measure(ep.client, cand.model, checks.holdout_x, checks.holdout_y, **target)
    except ServingError as exc:
        raise CheckFailed(f"{where}: holdout predictions failed: {exc}") from exc
    if worse(float(value), float(bound)):
        raise CheckFailed(f"{where}: holdout {name} {value:.4f} {side} {bound:.4f} ({len(checks.holdout_y)} rows)")
    return {f"holdout_{name.lower()}": value}


def canary_checks(ep: Endpoint, cand: Candidate, checks: CanaryChecks, label: str | None) -> dict:
    """Checks through ``label`` (a canary: the rollout's ``canary`` label) or, with ``label=None``,
    on version ``cand.version``."""
    version = None if label else cand.version
    where = f"{ep.name}: {cand.model} version {cand.version}" + (f" (label {label})" if label else "")
    sig = cand.smoke.get("signature_name")
    out: dict = {}
    if checks.smoke:
        out.update(smoke_parity(ep.client, cand.smoke, cand.model, label=label, version=version, where=where))
    if checks.holdout_x is not None:
        out.update(_holdout_check(ep, cand, checks, where, label=label, version=version, signature_name=sig))
    if checks.latency_budget_ms is not None:
        inputs = smoke_inputs(cand.smoke)
        row = first_row(inputs) if isinstance(inputs, dict) else inputs[0]
        try:
            p99 = latency_p99_ms(ep.client, cand.model, row, checks.latency_requests, label=label, version=version,
                                 signature_name=sig)
        except ServingError as exc:
            raise CheckFailed(f"{where}: latency probe failed: {exc}") from exc
        out["latency_p99_ms"] = p99
        if p99 > checks.latency_budget_ms:
            raise CheckFailed(f"{where}: p99 latency {p99:.1f} ms > budget {checks.latency_budget_ms:.1f} ms "
                              f"({checks.latency_requests} requests)")
    return out
