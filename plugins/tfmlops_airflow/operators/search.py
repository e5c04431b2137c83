"""Operators of ``tf_hparam_search``: thin wrappers over :mod:`tfmlops.steps.search`.

The workers are one mapped task (``SearchWorkerOperator.partial(...).expand(worker=prepare.output)``
over the worker indices :class:`PrepareSearchOperator` returns), so ``parallelism`` is a form field: a
pool or ``max_active_tis_per_dagrun`` would fix it when the DAG is parsed. Each mapped instance
pulls trials from the shared study; Airflow spreads them over its workers (Celery in the
production stack, LocalExecutor's processes in the embedded one).
"""

from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk.exceptions import AirflowFailException

from tfmlops_airflow.operators.base import ModelDataOperator, TFMLOpsBaseOperator, lineage, optional

SEARCH_KEY = "search"  # the XCom of the prepare task that every worker and the finish task read


class PrepareSearchOperator(ModelDataOperator):
    """Check the search space (the form's JSON, else the module's ``SEARCH_SPACE``) and settings,
    create the Optuna study in ``storage`` and the search's parent MLflow run. Returns the worker
    indices ``[0, …, parallelism - 1]`` (what the worker task is mapped over: Airflow maps only over
    a task's return value) and pushes the search (study, storage, parent run…) as XCom ``search``.
    ``n_trials`` 0 (``tf_offline_retrain``'s default) asks for no search: no study, no run, no worker
    (the mapped task skips) and XCom ``search`` ``{}`` (Airflow reads a None XCom as missing), on
    which :class:`FinishSearchOperator` passes the spec on.

    :param model_name: registered model name (= the MLflow experiment of the runs). (templated)
    :param search_space: JSON object of ranges and choices; empty = the module's ``SEARCH_SPACE``. (templated)
    :param n_trials: trials of the whole search; 0: no search. (templated)
    :param parallelism: worker tasks pulling trials at once. (templated)
    :param time_budget_s: no trial starts after this many seconds from now. (templated)
    :param storage: ``journal:/abs/path.log`` or an RDB URL (never Airflow's database). (templated)
    :param pruner: ``median``, ``hyperband`` or ``none``. (templated)
    :param seed: the sampler's seed. (templated)
    :param gate_metric: the objective, on the validation split; empty = the module's gate metric. (templated)
    """

    template_fields: Sequence[str] = (*ModelDataOperator.template_fields, "model_name", "search_space", "n_trials",
                                      "parallelism", "time_budget_s", "storage", "pruner", "seed", "gate_metric")

    def __init__(self, *, model_name: str, search_space: dict | str | None, n_trials: int | str,
                 parallelism: int | str, time_budget_s: float | str, storage: str, pruner: str = "median",
                 seed: int | str = 0, gate_metric: str | None = None, **kwargs):
        kwargs.setdefault("multiple_outputs", False)
        super().__init__(**kwargs)
        self.model_name = model_name
        self.search_space = search_space
        self.n_trials = n_trials
        self.parallelism = parallelism
        self.time_budget_s = time_budget_s
        self.storage = storage
        self.pruner = pruner
        self.seed = seed
        self.gate_metric = gate_metric

    def execute(self, context) -> list[int]:
        if int(self.n_trials) == 0:
            self.log.info("no search asked (0 trials): the module's hyperparameters are trained as they are")
            context["ti"].xcom_push(key=SEARCH_KEY, value={})
            return []
        from tfmlops.steps.search import ModelModuleError, SearchError, prepare

        try:
            prepared = prepare(self.tracking_uri, str(self.model_name), f"search {context['run_id']}", lineage(context),
                           self.data_spec(), self.search_space, int(self.n_trials), int(self.parallelism),
                           float(self.time_budget_s), str(self.storage), str(self.pruner), int(self.seed),
                           optional(self.gate_metric))
        except (SearchError, ModelModuleError) as exc:  # the form's or the module's: a retry gives the same
            raise AirflowFailException(str(exc)) from exc
        context["ti"].xcom_push(key=SEARCH_KEY, value=prepared)
        return prepared["workers"]


class SearchWorkerOperator(ModelDataOperator):
    """One worker of the search (mapped over ``worker``): the module's data loaded once, then trials
    from the shared study until it has ``n_trials`` or the time budget is spent. A trial failing for
    its own reasons is recorded as failed and the worker goes on; a worker lost to the
    infrastructure is retried (its try number is the attempt) and its unfinished trial is not counted.

    :param search: what the prepare task returned. (templated)
    :param worker: this worker's index. (templated)
    """

    template_fields: Sequence[str] = (*ModelDataOperator.template_fields, "search", "worker")

    def __init__(self, *, search: dict | str, worker: int | str, **kwargs):
        super().__init__(**kwargs)
        self.search = search
        self.worker = worker

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.search import work

        return work(self.tracking_uri, dict(self.search), int(self.worker), int(context["ti"].try_number),
                    self.data_spec())


class FinishSearchOperator(TFMLOpsBaseOperator):
    """The search's result: counts, best trial and Optuna's plots on the parent run; returns the best
    configuration as ``model_spec`` (for the train task) and the parent run (lineage). Fails, naming
    the trials' errors, when no trial completed. No search (``search`` empty): returns ``model_spec``
    as it is, with no search run.

    :param search: what the prepare task pushed. (templated)
    :param model_spec: the spec the search started from, returned unchanged when there was no search. (templated)
    """

    template_fields: Sequence[str] = ("search", "model_spec")

    def __init__(self, *, search: dict | str | None, model_spec: dict | str | None = None, **kwargs):
        kwargs.setdefault("trigger_rule", "none_failed")  # runs when the workers skipped (no search)
        super().__init__(**kwargs)
        self.search = search
        self.model_spec = model_spec

    def execute(self, context) -> dict[str, Any]:
        if not optional(self.search):
            return {"model_spec": self.model_spec, "parent_run_id": None, "best_trial": None}
        from tfmlops.steps.search import SearchError, finish

        try:
            return finish(self.tracking_uri, dict(self.search))
        except SearchError as exc:
            raise AirflowFailException(str(exc)) from exc
