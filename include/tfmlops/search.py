"""Hyperparameter search over a model module's hyperparameters with Optuna (no Airflow, no TensorFlow).

- **Search space**: a JSON object (the form's, or the module's optional ``SEARCH_SPACE``), one entry
  per hyperparameter the module knows (its ``HPARAMS`` or the platform's ``epochs``,
  ``batch_size``, ``learning_rate``…)::

      {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": true},
       "hidden_units": {"type": "int", "low": 8, "high": 64, "step": 8},
       "activation": {"type": "categorical", "choices": ["relu", "tanh"]}}

  checked by :func:`parse_space` (a bad entry is refused naming it).
- **Study**: TPE (``constant_liar`` so that parallel workers do not sample the same point, its
  start-up trials sized to ``n_trials``: :func:`startup_trials`) and a pruner on the per-epoch
  validation metric (median, Hyperband or none). Storage of its own (:func:`storage`): a
  JournalStorage file (Optuna's advice for several processes on one machine) or an RDB URL of a
  database that is not Airflow's metadata database (both keep an alembic version table).
- **Workers** (:func:`work`): any number of processes pull trials from one study until
  ``n_trials`` trials are counted or the deadline passes. A trial that fails for its own reasons
  (:class:`TrialFailed`: bad hyperparameters, a diverged loss) is recorded as failed and the search
  goes on; a trial left ``RUNNING`` by a worker that was lost (the same worker index, an earlier
  attempt) is marked failed and ``lost`` and not counted, so its retry runs a trial in its place.
  Two workers that check the count at the same instant may each start one more trial: a search
  can end with up to ``parallelism - 1`` trials over ``n_trials`` (Optuna's ``MaxTrialsCallback``
  has the same race).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Callable

log = logging.getLogger(__name__)

SPACE_TYPES = ("int", "float", "categorical")
PRUNERS = ("median", "hyperband", "none")
MAX_PARAMS = 32
MAX_CHOICES = 64
JOURNAL_PREFIX = "journal:"


class SearchError(ValueError):
    """A search that cannot run or has no result: the message says why."""


class TrialFailed(Exception):
    """A trial that failed for its own reasons (its hyperparameters, its data): recorded, not retried."""


# ------------------------------------------------------------------------------- search space
def parse_space(space, known: set[str] | None = None, where: str = "search space") -> dict[str, dict]:
    """The search space as ``{name: {"type", "low", "high", "log", "step"} | {"type", "choices"}}``,
    checked: a JSON object (or its text) of at most :data:`MAX_PARAMS` entries; names among
    ``known`` when given; int/float ranges with ``low < high`` (``low > 0`` on a log scale, ``step``
    positive and not with ``log``); categorical choices a non-empty list of distinct JSON scalars."""
    if isinstance(space, str):
        try:
            space = json.loads(space)
        except ValueError as exc:
            raise SearchError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(space, dict) or not space:
        raise SearchError(f"{where}: expected a non-empty object {{hyperparameter: range or choices}}, "
                          f"got {type(space).__name__ if not isinstance(space, dict) else 'an empty object'}")
    if len(space) > MAX_PARAMS:
        raise SearchError(f"{where}: {len(space)} hyperparameters, at most {MAX_PARAMS}")
    unknown = sorted(set(space) - known) if known is not None else []
    if unknown:
        raise SearchError(f"{where}: {unknown} are not hyperparameters of the model module (it knows "
                          f"{sorted(known)})")
    return {name: _entry(f"{where}: {name!r}", entry) for name, entry in space.items()}


def _number(where: str, entry: dict, key: str, integer: bool) -> float | int:
    value = entry.get(key)
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value):
        raise SearchError(f"{where}: {key} must be a finite {'integer' if integer else 'number'}, got {value!r}")
    return value


def _entry(where: str, entry) -> dict:
    if not isinstance(entry, dict) or entry.get("type") not in SPACE_TYPES:
        raise SearchError(f"{where}: expected an object with type one of {list(SPACE_TYPES)}, got {entry!r}")
    kind = entry["type"]
    extra = sorted(set(entry) - {"type", "low", "high", "log", "step", "choices"})
    if extra:
        raise SearchError(f"{where}: unknown keys {extra}")
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not 1 <= len(choices) <= MAX_CHOICES:
            raise SearchError(f"{where}: choices must be a list of 1 to {MAX_CHOICES} values, got {choices!r}")
        if not all(c is None or isinstance(c, (str, int, float, bool)) for c in choices):
            raise SearchError(f"{where}: choices must be strings, numbers, booleans or null, got {choices!r}")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise SearchError(f"{where}: choices repeat a value: {choices!r}")
        return {"type": kind, "choices": list(choices)}
    integer = kind == "int"
    low, high = _number(where, entry, "low", integer), _number(where, entry, "high", integer)
    use_log = entry.get("log", False)
    if not isinstance(use_log, bool):
        raise SearchError(f"{where}: log must be true or false, got {use_log!r}")
    if not low < high:
        raise SearchError(f"{where}: low ({low}) must be below high ({high})")
    if use_log and low <= 0:
        raise SearchError(f"{where}: a log scale needs low > 0, got {low}")
    out = {"type": kind, "low": low, "high": high, "log": use_log}
    if entry.get("step") is not None:
        step = _number(where, entry, "step", integer)
        if step <= 0 or use_log:
            raise SearchError(f"{where}: step must be positive and cannot be used with log")
        out["step"] = step
    return out


def suggest(trial, space: dict[str, dict]) -> dict:
    """The trial's values of every hyperparameter of ``space`` (Optuna's ``suggest_*``)."""
    values = {}
    for name, p in space.items():
        if p["type"] == "categorical":
            values[name] = trial.suggest_categorical(name, p["choices"])
        elif p["type"] == "int":
            values[name] = trial.suggest_int(name, p["low"], p["high"], step=p.get("step", 1), log=p["log"])
        else:
            values[name] = trial.suggest_float(name, p["low"], p["high"], step=p.get("step"), log=p["log"])
    return values


# ------------------------------------------------------------------------------------- study
def storage(url: str):
    """``journal:<path>`` → a JournalStorage on that file (created with its folder); an RDB URL
    (``postgresql://…``, ``sqlite:///…``) → RDBStorage. Airflow's metadata database is refused:
    Optuna and Airflow both keep their schema version in alembic's ``alembic_version`` table."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    url = str(url or "").strip()
    if url.startswith(JOURNAL_PREFIX):
        path = url[len(JOURNAL_PREFIX):]
        if not path or not os.path.isabs(path):
            raise SearchError(f"search storage {url!r}: a journal file needs an absolute path (journal:/path/file.log)")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise SearchError(f"search storage {url!r}: use journal:/absolute/path.log or a database URL")
    airflow_db = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    if airflow_db and _same_database(url, airflow_db):
        raise SearchError("search storage: that is Airflow's metadata database; Optuna needs a database of its own "
                          "(both use alembic's version table), e.g. a database 'optuna' on the same server")
    return optuna.storages.RDBStorage(url, heartbeat_interval=None)


def _same_database(a: str, b: str) -> bool:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        ua, ub = make_url(a), make_url(b)
    except ArgumentError:  # not an SQLAlchemy URL: cannot be Airflow's
        return False
    return (ua.get_backend_name(), ua.host, ua.port, ua.database) == (ub.get_backend_name(), ub.host, ub.port,
                                                                      ub.database)


def startup_trials(n_trials: int) -> int:
    """TPE's random start-up trials for a search of ``n_trials``: a third of them, 2 to 10 (Optuna's
    default of 10 would make a 16-trial search mostly random)."""
    return max(2, min(10, n_trials // 3))


def open_study(storage_url: str, study_name: str, direction: str, n_trials: int, seed: int = 0,
               pruner: str = "median", create: bool = False):
    """The shared study, with the sampler and pruner every worker uses (each process builds its
    own: samplers are not stored). ``create``: made when missing."""
    import optuna

    if pruner not in PRUNERS:
        raise SearchError(f"pruner must be one of {list(PRUNERS)}, got {pruner!r}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(n_startup_trials=startup_trials(n_trials), constant_liar=True, seed=seed)
    chosen = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=startup_trials(n_trials),
                                                            n_warmup_steps=1),
              "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
              "none": optuna.pruners.NopPruner}[pruner]()
    if create:
        return optuna.create_study(storage=storage(storage_url), sampler=sampler, pruner=chosen,
                                   study_name=study_name, direction=direction, load_if_exists=True)
    return optuna.load_study(study_name=study_name, storage=storage(storage_url), sampler=sampler, pruner=chosen)


def _counted(trial) -> bool:
    from optuna.trial import TrialState

    if trial.state == TrialState.FAIL:
        return not trial.user_attrs.get("lost")
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def counted_trials(study) -> int:
    """Trials that count against ``n_trials``: complete, pruned, failed for their own reasons, running."""
    return sum(_counted(t) for t in study.get_trials(deepcopy=False))


def release_lost(study, worker: int, attempt: int) -> list[int]:
    """Trials still ``RUNNING`` under ``worker`` from an earlier attempt (its process was lost):
    marked failed and ``lost`` (not counted). Returns their numbers."""
    from optuna.trial import TrialState

    lost = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker") == worker and t.user_attrs.get("attempt", attempt) < attempt:
            study._storage.set_trial_user_attr(t._trial_id, "lost", True)
            study.tell(t.number, state=TrialState.FAIL)
            lost.append(t.number)
    if lost:
        log.warning("worker %d, attempt %d: trials %s were left running by an earlier attempt: failed as lost, "
                    "not counted", worker, attempt, lost)
    return lost


def work(study, objective: Callable, n_trials: int, deadline: float, worker: int = 0, attempt: int = 1) -> dict:
    """Pull trials from ``study`` and run ``objective(trial) -> value`` until ``n_trials`` are
    counted or ``deadline`` (epoch seconds) has passed. ``optuna.TrialPruned`` → pruned,
    :class:`TrialFailed` → failed with its message (``error`` user attribute); anything else
    fails the trial and is raised (the worker's infrastructure: its task is retried)."""
    import optuna
    from optuna.trial import TrialState

    done = {"worker": worker, "attempt": attempt, "complete": [], "pruned": [], "failed": [],
            "lost": release_lost(study, worker, attempt)}
    while time.time() < deadline and counted_trials(study) < n_trials:
        trial = study.ask()
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("attempt", attempt)
        try:
            value = objective(trial)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("pruned_at", str(exc)[:300])
            study.tell(trial, state=TrialState.PRUNED)
            done["pruned"].append(trial.number)
            continue
        except TrialFailed as exc:
            trial.set_user_attr("error", str(exc)[:1000])
            study.tell(trial, state=TrialState.FAIL)
            done["failed"].append(trial.number)
            log.warning("trial %d failed: %s", trial.number, exc)
            continue
        except BaseException:
            trial.set_user_attr("error", "the worker stopped during this trial")
            study.tell(trial, state=TrialState.FAIL)
            raise
        if value is None or not math.isfinite(float(value)):
            trial.set_user_attr("error", f"objective value {value!r} is not a finite number")
            study.tell(trial, state=TrialState.FAIL)
            done["failed"].append(trial.number)
            continue
        study.tell(trial, float(value))
        done["complete"].append(trial.number)
    done["timed_out"] = time.time() >= deadline
    return done


def summary(study) -> dict:
    """Counts by state, the best trial (None without a complete one) and each failure's reason."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    by_state = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    return {"trials": len(trials), "counted": sum(_counted(t) for t in trials), "states": by_state,
            "lost": sum(bool(t.user_attrs.get("lost")) for t in trials),
            "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
            "errors": {t.number: t.user_attrs.get("error", "") for t in trials
                       if t.state == TrialState.FAIL and not t.user_attrs.get("lost")}}


def plots(study, folder) -> dict[str, str]:
    """Optuna's matplotlib plots of the study as PNG files in ``folder``: optimization history,
    parameter importances and parallel coordinates; a plot Optuna cannot draw yet (e.g. importances
    of fewer than two complete trials) is left out with the reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov

    from pathlib import Path

    drawn, skipped = {}, {}
    for name, draw in (("optimization_history", ov.plot_optimization_history),
                       ("param_importances", ov.plot_param_importances),
                       ("parallel_coordinate", ov.plot_parallel_coordinate)):
        try:
            ax = draw(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(9, 5)
            fig.tight_layout()
            path = Path(folder) / f"{name}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            drawn[name] = str(path)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # too little data for this plot
            skipped[name] = f"{type(exc).__name__}: {exc}"
            plt.close("all")
    if skipped:
        log.info("plots not drawn: %s", skipped)
    return drawn
