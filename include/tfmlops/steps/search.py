"""Steps of ``tf_hparam_search``: prepare the study, the workers' trials, the search's result
(:mod:`tfmlops.search` does the Optuna side; this adds the model module, the data and MLflow).

- :func:`prepare` — the space (the form's or the module's ``SEARCH_SPACE``), the objective (the
  gate metric of the module's task, on the **validation** split, never the test split), the
  study in its storage, and the search's parent MLflow run (experiment = model name).
- :func:`work` — one worker: the module's data loaded once, then trials pulled from the shared
  study until ``n_trials`` or the time budget. Each trial is a nested MLflow run under the parent
  (its hyperparameters, per-epoch curves, state complete / pruned / failed); the per-epoch
  ``val_<metric>`` goes to the pruner.
- :func:`finish` — the study's counts and best trial on the parent run with Optuna's history,
  parameter-importance and parallel-coordinate plots; the best configuration as a model spec for
  the usual train → gate → register → rollout tasks. The best configuration is **retrained** there
  (train split, validation for the curves, as ``tf_offline_retrain`` trains) rather than the
  trial's model reused: a trial's model is one of many cheap fits that no task evaluated on the
  test split, and retraining gives the registered version the same training path, logs and lineage
  as every other version (its spec's hyperparameters reproduce it). A search whose trials all
  failed fails here, with their reasons.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path

from tfmlops import modelspec, registry, search
from tfmlops.modelspec import ModelModuleError  # noqa: F401  (a broken module: operators catch it)
from tfmlops.search import SearchError  # noqa: F401  (what prepare/finish raise: operators catch it)
from tfmlops.steps.retrain import DataSpec

log = logging.getLogger(__name__)

MAX_TRIALS = 1000
MAX_PARALLELISM = 16


def _space(spec: modelspec.ModelSpec, space) -> dict:
    if space in (None, "", "None", {}):
        space = getattr(modelspec.import_module(spec.module), "SEARCH_SPACE", None)
        if not space:
            raise SearchError(f"no search space: model module {spec.module!r} has no SEARCH_SPACE (add one, or give "
                              "tf_hparam_search's form a search_space)")
        where = f"SEARCH_SPACE of model module {spec.module!r}"
    else:
        where = "the search space"
    return search.parse_space(space, set(spec.hparams), where)


def prepare(tracking_uri: str, model_name: str, run_name: str, tags: dict[str, str], spec: DataSpec, space,
            n_trials: int, parallelism: int, time_budget_s: float, storage_url: str, pruner: str = "median",
            seed: int = 0, gate_metric: str | None = None) -> dict:
    """Check the search's settings, create its study and parent run; returns what every worker and
    :func:`finish` need (plain data), ``workers`` = ``[0, …, parallelism - 1]`` for task mapping."""
    if not 1 <= int(n_trials) <= MAX_TRIALS:
        raise SearchError(f"n_trials must be between 1 and {MAX_TRIALS}, got {n_trials}")
    if not 1 <= int(parallelism) <= MAX_PARALLELISM:
        raise SearchError(f"parallelism must be between 1 and {MAX_PARALLELISM}, got {parallelism}")
    if not float(time_budget_s) > 0:
        raise SearchError(f"time_budget_s must be positive, got {time_budget_s}")
    model_spec = spec.spec()
    parsed = _space(model_spec, space)
    gate = modelspec.resolve_gate(model_spec, gate_metric)
    direction = "maximize" if gate["higher_is_better"] else "minimize"
    parent = registry.start_run(tracking_uri, model_name, run_name, {
        **tags, **model_spec.to_tags(), "dataset_uri": spec.uri, "search.objective": f"validation {gate['metric']}",
        "search.direction": direction})
    study_name = f"{model_name}-{parent}"
    search.open_study(storage_url, study_name, direction, int(n_trials), seed, pruner, create=True)
    registry.log_params(tracking_uri, parent, {
        "search.space": parsed, "search.n_trials": int(n_trials), "search.parallelism": int(parallelism),
        "search.time_budget_s": float(time_budget_s), "search.pruner": pruner, "search.sampler": "TPE (constant_liar)",
        "search.startup_trials": search.startup_trials(int(n_trials)), "search.study": study_name,
        "data.uri": spec.uri, "data.sample_fraction": spec.sample_fraction})
    log.info("search %s: %d trials of %s over %s, %s validation %s", study_name, n_trials, model_spec.module,
             sorted(parsed), direction, gate["metric"])
    return {"study_name": study_name, "storage": storage_url, "parent_run_id": parent, "experiment": model_name,
            "metric": gate["metric"],
            "direction": direction, "space": parsed, "n_trials": int(n_trials), "pruner": pruner, "seed": int(seed),
            "deadline": time.time() + float(time_budget_s), "workers": list(range(int(parallelism))),
            "model_spec": model_spec.to_dict()}


def with_values(spec: modelspec.ModelSpec, values: dict) -> modelspec.ModelSpec:
    """``spec`` with a trial's hyperparameter values."""
    return modelspec.ModelSpec(**{**spec.__dict__, "hparams": {**spec.hparams, **values}})


def fit_trial(trial, spec: modelspec.ModelSpec, module, data, metric: str, on_epoch=None) -> float:
    """Train the module's model with ``spec`` (a trial's hyperparameters) and return ``metric`` on
    the validation split. Each epoch's ``val_<metric>`` goes to the pruner (``optuna.TrialPruned``
    when it says stop); an error of the trial's own (a diverged loss, a value a layer refuses) is
    :class:`~tfmlops.search.TrialFailed`."""
    import optuna

    from tfmlops import trainer

    def epoch_end(epoch: int, logs: dict) -> None:
        if on_epoch is not None:
            on_epoch(epoch, logs)
        value = logs.get(f"val_{metric}")
        if value is not None and math.isfinite(value):
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: val_{metric} {value:.4f}")

    try:
        model, _ = trainer.train_model(spec, module, data, on_epoch=epoch_end)
        return float(trainer.metrics(spec, model, data.validation)[metric])
    except (modelspec.ModelModuleError, ValueError, TypeError, ArithmeticError) as exc:
        raise search.TrialFailed(f"{type(exc).__name__}: {exc}") from exc


def _objective(tracking_uri: str, prepared: dict, spec: modelspec.ModelSpec, module, data, experiment: str):
    metric, parent = prepared["metric"], prepared["parent_run_id"]

    def objective(trial) -> float:
        import optuna

        values = search.suggest(trial, prepared["space"])
        run_id = registry.start_run(tracking_uri, experiment, f"trial {trial.number}", {
            "mlflow.parentRunId": parent, "search.study": prepared["study_name"], "search.trial": str(trial.number),
            "search.worker": str(trial.user_attrs.get("worker")), "model.module": spec.module})
        registry.log_params(tracking_uri, run_id, {f"hparams.{k}": v for k, v in values.items()})

        def end(state: str, status: str, reason: str = "") -> None:
            registry.set_tags(tracking_uri, run_id, {"search.state": state, **({"search.reason": reason[:500]}
                                                                                if reason else {})})
            registry.end_run(tracking_uri, run_id, status)

        try:
            score = fit_trial(trial, with_values(spec, values), module, data, metric,
                              on_epoch=lambda epoch, logs: registry.log_metrics(tracking_uri, run_id, logs, step=epoch))
        except optuna.TrialPruned as exc:
            end("pruned", "KILLED", str(exc))
            raise
        except search.TrialFailed as exc:  # the trial's own hyperparameters: not retried
            end("failed", "FAILED", str(exc))
            raise
        except BaseException as exc:
            end("failed", "FAILED", f"worker stopped: {type(exc).__name__}: {exc}")
            raise
        registry.log_metrics(tracking_uri, run_id, {f"validation_{metric}": score})
        end("complete", "FINISHED")
        return score

    return objective


def work(tracking_uri: str, prepared: dict, worker: int, attempt: int, spec: DataSpec) -> dict:
    """One worker of the search: trials until the study has ``n_trials`` or the deadline passes."""
    study = search.open_study(prepared["storage"], prepared["study_name"], prepared["direction"],
                              prepared["n_trials"], prepared["seed"] + 1000 * int(worker) + int(attempt),
                              prepared["pruner"])
    model_spec = modelspec.ModelSpec.from_dict(prepared["model_spec"])
    data, _, module = spec.load_model_data(model_spec)
    objective = _objective(tracking_uri, prepared, model_spec, module, data, prepared["experiment"])
    done = search.work(study, objective, prepared["n_trials"], prepared["deadline"], int(worker), int(attempt))
    log.info("worker %d (attempt %d): %s", worker, attempt, done)
    return done


def finish(tracking_uri: str, prepared: dict) -> dict:
    """The search's result on its parent run (counts, best trial, plots); the best configuration as
    ``model_spec`` for training. Raises :class:`SearchError` when no trial completed."""
    study = search.open_study(prepared["storage"], prepared["study_name"], prepared["direction"],
                              prepared["n_trials"], prepared["seed"], prepared["pruner"])
    result = search.summary(study)
    parent = prepared["parent_run_id"]
    registry.log_metrics(tracking_uri, parent, {f"search.{k}": v for k, v in result["states"].items()})
    with tempfile.TemporaryDirectory() as tmp:
        drawn = search.plots(study, tmp)
        mlf = registry.client(tracking_uri)
        for path in drawn.values():
            mlf.log_artifact(parent, path, artifact_path="search")
        mlf.log_dict(parent, result, "search/summary.json")
    if result["best"] is None:
        registry.set_tags(tracking_uri, parent, {"search.outcome": "every trial failed"})
        registry.end_run(tracking_uri, parent, "FAILED")
        reasons = "; ".join(f"trial {n}: {e}" for n, e in list(result["errors"].items())[:5]) or "none completed"
        raise SearchError(f"search {prepared['study_name']}: no trial completed out of {result['trials']} "
                          f"({result['states']}): {reasons}")
    best = result["best"]
    registry.log_params(tracking_uri, parent, {f"best.{k}": v for k, v in best["params"].items()})
    registry.log_metrics(tracking_uri, parent, {f"best_validation_{prepared['metric']}": best["value"]})
    registry.set_tags(tracking_uri, parent, {"search.outcome": f"best trial {best['number']}",
                                             "search.best_trial": str(best["number"])})
    registry.end_run(tracking_uri, parent, "FINISHED")
    best_spec = with_values(modelspec.ModelSpec.from_dict(prepared["model_spec"]), best["params"])
    log.info("search %s: best trial %d, validation %s %.4f, %s", prepared["study_name"], best["number"],
             prepared["metric"], best["value"], best["params"])
    return {"model_spec": best_spec.to_dict(), "best_params": best["params"], "best_value": best["value"],
            "best_trial": best["number"], "metric": prepared["metric"], "parent_run_id": parent,
            "states": result["states"], "plots": sorted(Path(p).name for p in drawn.values())}
