"""Hyperparameter search over the Airflow workers: an Optuna study, mapped worker tasks pulling
trials, the best configuration trained and sent through the usual gate → register → rollout."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from tfmlops_airflow import params
from tfmlops_airflow.notifications import deadline_alert
from tfmlops_airflow.chains import hparam_search, train_to_serving
from tfmlops_airflow.guard import add_run_guard
from tfmlops_airflow.operators.retrain import ValidateDatasetOperator

DOC = """
### Hyperparameter search of your model module, spread over the Airflow workers

1. **validate** — the model module and its data, as `tf_offline_retrain` checks them.
2. **prepare** — the search space (the form's `search_space` JSON, or the module's `SEARCH_SPACE`:
   `{"learning_rate": {"type": "float", "low": 1e-4, "high": 0.1, "log": true}, "hidden_units":
   {"type": "int", "low": 8, "high": 64}, "activation": {"type": "categorical", "choices": [...]}}`),
   an [Optuna](https://optuna.org) study (TPE with `constant_liar`, start-up trials sized to
   `n_trials`; the `pruner` on the per-epoch validation metric) in its own storage (`storage`: a
   JournalStorage file in the embedded stack, the `optuna` PostgreSQL database in compose — never
   Airflow's database) and the search's parent MLflow run.
3. **search_worker** ×`parallelism` — mapped tasks (Airflow runs them on whichever workers are
   free) each pulling trials from the shared study until it has `n_trials` or `time_budget_s` has
   passed. The objective is the gate metric of the module's task (or `gate_metric`) on the
   **validation** split, never the test split. Each trial is a nested MLflow run (its
   hyperparameters, per-epoch curves, state: complete / pruned / failed). A trial that fails for
   its own reasons (a diverging loss, a value a layer refuses) is recorded as failed and the search
   goes on; a worker lost to the infrastructure is retried and its unfinished trial is not counted.
4. **finish** — counts, best trial and Optuna's history, parameter-importance and
   parallel-coordinate plots on the parent run (`search/`). Every trial failed: the run fails here
   with their reasons.
5. **train → evaluate → gate → export → register → rollout → model card** — the best configuration,
   retrained as `tf_offline_retrain` trains (a trial's own model is not reused: the registered
   version gets the same training path and logs as any other, and its spec's hyperparameters
   reproduce it), gated against the champion on the test split; the version and its card name the
   search (`search.parent_run_id`).
"""

PARAMS = {
    "model_name": params.model_name("Registered model name in MLflow (the runs' experiment) and the served name."),
    **params.model(),
    "dataset_uri": params.dataset_uri("Training, validation and test data"),
    "sample_fraction": Param(0.2, type="number", exclusiveMinimum=0, maximum=1, title="Sample fraction",
                             description="Share of the splits every trial and the final training use "
                                         "(1 = all data)."),
    "search_space": Param({}, type="object", title="Search space",
                          description="JSON object {hyperparameter: {type: int|float, low, high, log?, step?} | "
                                      "{type: categorical, choices: [...]}}; empty: the module's SEARCH_SPACE."),
    "n_trials": Param(8, type="integer", minimum=1, maximum=1000, title="Trials",
                      description="Trials of the whole search (all workers together)."),
    "parallelism": Param(2, type="integer", minimum=1, maximum=16, title="Parallel workers",
                         description="Worker tasks pulling trials from the study at once."),
    "time_budget_s": Param(3600, type="integer", minimum=60, maximum=7 * 86400, title="Time budget (s)",
                           description="No trial starts after this many seconds from the start of the search."),
    "pruner": Param("median", type="string", enum=["median", "hyperband", "none"], title="Pruner",
                    description="Stops unpromising trials on their per-epoch validation metric."),
    "seed": Param(0, type="integer", minimum=0, title="Seed", description="The sampler's seed."),
    "storage": Param(params.DEFAULT_SEARCH_STORAGE, type="string", minLength=1, maxLength=1000,
                     title="Study storage",
                     description="journal:/absolute/file.log (one machine) or a database URL of Optuna's own "
                                 "(never Airflow's metadata database)."),
    **params.rollout(),
}

with DAG(
    dag_id="tf_hparam_search",
    description="Optuna search over mapped worker tasks → best configuration trained → gate → register → serve",
    doc_md=DOC,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    render_template_as_native_obj=True,
    tags=["tensorflow", "search", "optuna", "mlflow", "serving"],
    user_defined_macros={"hyperparameters": params.hyperparameters},
    default_args=params.default_args(timedelta(seconds=30)),
    deadline=deadline_alert("TFMLOPS_SEARCH_DEADLINE_MIN", default_minutes=240),  # late: deadline_missed
) as dag:
    data = {"dataset_uri": "{{ params.dataset_uri }}", "sample_fraction": "{{ params.sample_fraction }}"}

    validate = ValidateDatasetOperator(
        task_id="validate_data", task_display_name="Validate model module and data",
        model_module="{{ params.model_module }}", hyperparameters="{{ hyperparameters(params) }}", **data)
    finish = hparam_search(
        validate.output["model_spec"], data, search_space="{{ params.search_space }}", n_trials="{{ params.n_trials }}",
        parallelism="{{ params.parallelism }}", time_budget_s="{{ params.time_budget_s }}",
        storage="{{ params.storage }}", pruner="{{ params.pruner }}", seed="{{ params.seed }}")
    # the best configuration, trained and served as tf_offline_retrain does, the search in its lineage
    train_to_serving(finish, data, train_name="Train the best configuration",
                     dataset_profile=validate.output["profile"])
    add_run_guard(dag)  # last: it watches every task above
