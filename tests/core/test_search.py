"""The Optuna side of tf_hparam_search (tfmlops.search) without MLflow or TensorFlow: the search
space's checks, the storage's refusals, and workers in separate processes sharing one journal study
— counted trials, failed trials that do not stop the search, a lost worker's trial not counted."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from tfmlops import search

KNOWN = {"learning_rate", "hidden_units", "activation", "epochs"}
SPACE = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
         "hidden_units": {"type": "int", "low": 4, "high": 64, "step": 4},
         "activation": {"type": "categorical", "choices": ["relu", "tanh"]}}


def test_a_valid_space_is_normalized_and_suggested():
    import optuna

    parsed = search.parse_space(SPACE, KNOWN)
    assert parsed["hidden_units"] == {"type": "int", "low": 4, "high": 64, "log": False, "step": 4}
    assert search.parse_space(__import__("json").dumps(SPACE), KNOWN) == parsed  # the form's JSON text
    study = optuna.create_study()
    values = search.suggest(study.ask(), parsed)
    assert 1e-4 <= values["learning_rate"] <= 1e-1 and values["hidden_units"] % 4 == 0
    assert values["activation"] in ("relu", "tanh")


@pytest.mark.parametrize("space, words", [
    ("{not json", "not JSON"),
    ({}, "non-empty object"),
    ([1, 2], "non-empty object"),
    ({"dropout": {"type": "float", "low": 0, "high": 1}}, "['dropout'] are not hyperparameters"),
    ({"epochs": {"type": "int", "low": 5, "high": 5}}, "low (5) must be below high (5)"),
    ({"epochs": {"type": "int", "low": 1.5, "high": 5}}, "low must be a finite integer"),
    ({"learning_rate": {"type": "float", "low": 0, "high": 1, "log": True}}, "log scale needs low > 0"),
    ({"learning_rate": {"type": "float", "low": 1e-3, "high": 1, "log": "yes"}}, "log must be true or false"),
    ({"learning_rate": {"type": "float", "low": 0.1, "high": 1, "log": True, "step": 0.1}}, "step must be positive"),
    ({"learning_rate": {"type": "float", "low": float("nan"), "high": 1}}, "finite number"),
    ({"activation": {"type": "categorical", "choices": []}}, "choices must be a list of 1 to"),
    ({"activation": {"type": "categorical", "choices": [[1], [2]]}}, "strings, numbers, booleans or null"),
    ({"activation": {"type": "categorical", "choices": ["relu", "relu"]}}, "repeat a value"),
    ({"activation": {"type": "choice", "choices": ["relu"]}}, "type one of"),
    ({"epochs": {"type": "int", "low": 1, "high": 9, "logscale": True}}, "unknown keys ['logscale']"),
])
def test_a_bad_space_is_refused_naming_the_entry(space, words):
    with pytest.raises(search.SearchError) as err:
        search.parse_space(space, KNOWN)
    assert words in str(err.value)


def test_storage_refuses_airflows_database_and_relative_journals(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql+psycopg2://airflow:pw@db:5432/airflow")
    with pytest.raises(search.SearchError, match="Airflow's metadata database"):
        search.storage("postgresql://optuna:other@db:5432/airflow")
    with pytest.raises(search.SearchError, match="absolute path"):
        search.storage("journal:relative/studies.log")
    with pytest.raises(search.SearchError, match="journal:/absolute/path.log or a database URL"):
        search.storage("studies.log")
    assert search.storage(f"journal:{tmp_path}/a/studies.log") is not None
    assert search.startup_trials(16) == 5 and search.startup_trials(3) == 2 and search.startup_trials(100) == 10


def _quadratic(trial) -> float:
    values = search.suggest(trial, search.parse_space(SPACE, KNOWN))
    if values["hidden_units"] > 56:
        raise search.TrialFailed(f"hidden_units {values['hidden_units']} too large for this test")
    time.sleep(0.05)
    return (values["learning_rate"] - 0.01) ** 2 + (values["hidden_units"] - 32) ** 2 / 1e4


def _worker(storage_url: str, name: str, worker: int, n_trials: int) -> None:
    study = search.open_study(storage_url, name, "minimize", n_trials, seed=worker)
    search.work(study, _quadratic, n_trials, time.time() + 120, worker=worker, attempt=1)


def test_two_worker_processes_share_one_journal_study(tmp_path):
    url = f"journal:{tmp_path}/studies.log"
    search.open_study(url, "shared", "minimize", 12, create=True)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(url, "shared", w, 12)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    study = search.open_study(url, "shared", "minimize", 12)
    result = search.summary(study)
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert workers == {0, 1}  # both processes pulled trials from the one study
    # every trial counts; two workers checking at the same instant may each start one more
    assert 12 <= result["counted"] <= 13 and result["counted"] == result["trials"], result
    assert result["states"]["running"] == 0 and result["best"] is not None
    assert all("too large" in e for e in result["errors"].values())  # failures recorded, the search went on
    assert result["states"]["complete"] + result["states"]["fail"] == result["trials"]


def test_a_lost_workers_trial_is_not_counted_and_its_retry_takes_its_place(tmp_path):
    url = f"journal:{tmp_path}/studies.log"
    study = search.open_study(url, "lost", "minimize", 4, create=True)
    orphan = study.ask()  # attempt 1 of worker 0 dies during this trial
    orphan.set_user_attr("worker", 0)
    orphan.set_user_attr("attempt", 1)
    other = study.ask()  # another worker's trial, still running: not touched
    other.set_user_attr("worker", 1)
    other.set_user_attr("attempt", 1)
    done = search.work(search.open_study(url, "lost", "minimize", 4), _quadratic, 4, time.time() + 60,
                       worker=0, attempt=2)
    assert done["lost"] == [orphan.number]
    result = search.summary(search.open_study(url, "lost", "minimize", 4))
    assert result["lost"] == 1 and result["counted"] == 4  # 3 new trials + the other worker's running one
    assert len(done["complete"]) + len(done["failed"]) == 3 and result["states"]["running"] == 1


def test_a_search_where_every_trial_fails_has_no_best(tmp_path):
    def broken(trial):
        raise search.TrialFailed("NaN loss at epoch 1")

    study = search.open_study(f"journal:{tmp_path}/s.log", "broken", "maximize", 3, create=True)
    done = search.work(study, broken, 3, time.time() + 60)
    result = search.summary(study)
    assert len(done["failed"]) == 3 and result["best"] is None
    assert set(result["errors"].values()) == {"NaN loss at epoch 1"}


def test_an_infrastructure_error_fails_the_trial_and_reaches_the_worker(tmp_path):
    def crash(trial):
        raise MemoryError("worker out of memory")

    study = search.open_study(f"journal:{tmp_path}/s.log", "crash", "maximize", 3, create=True)
    with pytest.raises(MemoryError):
        search.work(study, crash, 3, time.time() + 60)
    assert search.summary(study)["states"]["fail"] == 1  # recorded; the worker's task is what retries


def test_a_search_of_a_module_without_a_space_says_where_to_give_one(monkeypatch):
    """tf_offline_retrain's search (its form has no space of its own) on a module without SEARCH_SPACE."""
    from tfmlops import modelspec
    from tfmlops.steps.search import SearchError, _space

    spec = modelspec.read_spec("tfmlops_examples.diabetes")
    monkeypatch.delattr(modelspec.import_module(spec.module), "SEARCH_SPACE")
    with pytest.raises(SearchError, match="'tfmlops_examples.diabetes' has no SEARCH_SPACE .* search_space"):
        _space(spec, "")
