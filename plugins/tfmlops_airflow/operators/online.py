"""Operators of ``tf_data_simulator`` and ``tf_online_update``: thin wrappers over
:mod:`tfmlops.steps.simulate` and :mod:`tfmlops.steps.online`.

Partitions live under a root (local folder or ``s3://``; ``aws_conn_id``) as
``<root>/<dataset>/incoming/<partition-id>/data.npz`` (or ``data.parquet`` in a model module's layout).
Nothing heavy is imported at module level.
"""

from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tfmlops_airflow.assets import NEW_PARTITIONS, partition_key, split_partition_key
from tfmlops_airflow.operators.base import (PartitionsOperator, checked_partitions_root, id_list, lineage,
                                             number_or_none, optional)


class SimulatePartitionOperator(PartitionsOperator):
    """Write one partition drawn from the MNIST test pool (optionally drifted) and announce it on
    the ``NEW_PARTITIONS`` asset: partition key ``<dataset>|<partition-id>``, extra: dataset,
    partition_id, uri, root, drift.

    :param size: rows in the partition (train + test split). (templated)
    :param drift: ``none``, ``rotation``, ``noise``, ``imbalance`` or ``label_noise``. (templated)
    :param amount: drift strength in [0, 1]. (templated)
    :param seed: seed of the draw and the drift; unset or -1 = a new random seed. (templated)
    """

    template_fields: Sequence[str] = (*PartitionsOperator.template_fields, "size", "drift", "amount", "seed")

    def __init__(self, *, size: int | str = 500, drift: str = "none", amount: float | str = 0.0,
                 seed: int | str | None = None, **kwargs):
        kwargs.setdefault("outlets", [NEW_PARTITIONS])
        super().__init__(**kwargs)
        self.size = size
        self.drift = drift
        self.amount = amount
        self.seed = seed

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.simulate import simulate

        seed = None if optional(self.seed) in (None, -1, "-1") else int(self.seed)
        root = checked_partitions_root(self.root)
        result = simulate(root, str(self.dataset), int(self.size), str(self.drift), float(self.amount), seed,
                          s3_client=self.s3_client)
        if NEW_PARTITIONS in self.outlets:
            event = context["outlet_events"][NEW_PARTITIONS]
            event.extra = {k: result[k] for k in ("dataset", "partition_id", "uri", "drift", "amount")} | {
                "root": str(self.root)}
            event.add_partitions(partition_key(result["dataset"], result["partition_id"]))
        self.log.info("wrote partition %s", result)
        return result


class FeedbackJoinOperator(PartitionsOperator):
    """Join the model server's request logs (``log_prefix``: the ``filename_prefix`` of the served
    model's ``logging_config``) with the labels under ``<root>/<dataset>/feedback/labels/*.jsonl``;
    with at least ``min_rows`` labeled rows, write them as a new partition and announce it on the
    ``NEW_PARTITIONS`` asset (which schedules ``tf_online_update``); else skip.

    :param log_prefix: request log files' prefix (local). (templated)
    :param min_rows: fewest labeled rows worth a partition. (templated)
    :param model_name: the registered model whose champion's model spec reads the logged requests
        (inputs, task, classes) and lays out the partition; unset = the default module. (templated)
    """

    template_fields: Sequence[str] = (*PartitionsOperator.template_fields, "log_prefix", "min_rows", "model_name")

    def __init__(self, *, log_prefix: str, min_rows: int | str = 50, model_name: str | None = None, **kwargs):
        kwargs.setdefault("outlets", [NEW_PARTITIONS])
        super().__init__(**kwargs)
        self.log_prefix = log_prefix
        self.min_rows = min_rows
        self.model_name = model_name

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.online import OnlineUpdateError, join_feedback

        root = checked_partitions_root(self.root)
        model_name = optional(self.model_name)
        try:
            result = join_feedback(str(self.log_prefix), root, str(self.dataset), int(self.min_rows),
                                   self.tracking_uri if model_name else None, model_name)
        except OnlineUpdateError as exc:  # no champion whose spec could read the logs
            raise AirflowFailException(str(exc)) from exc
        self.log.info("feedback join: %s", result)
        if result["partition_id"] is None:
            raise AirflowSkipException(f"{result['rows']} labeled rows, fewer than {self.min_rows}: no partition")
        if NEW_PARTITIONS in self.outlets:
            event = context["outlet_events"][NEW_PARTITIONS]
            event.extra = {"dataset": str(self.dataset), "partition_id": result["partition_id"], "uri": result["uri"],
                           "root": str(self.root), "source": "feedback"}
            event.add_partitions(partition_key(str(self.dataset), result["partition_id"]))
        return result


class IngestPartitionsOperator(PartitionsOperator):
    """Validate the new partitions with the training-data checks: in a run for one partition of
    the ``NEW_PARTITIONS`` asset (its ``partition_key``), that partition, under the root its
    event names (``extra.root``; else ``root``); otherwise the ones named in ``partitions``, or
    every partition not yet consumed. A bad partition is quarantined with its reason and does not
    block the others. With no valid new partition the task is skipped, and with it the update:
    re-running on consumed data is a no-op. Returns the root it read (for the update).

    :param partitions: partition ids (list or comma-separated); unset = every partition not consumed. (templated)
    :param model_name: the registered model whose champion's model module reads and checks the
        partitions (its loader, INPUTS, LABEL); unset = the default module (the MNIST example). (templated)
    """

    template_fields: Sequence[str] = (*PartitionsOperator.template_fields, "partitions", "model_name")

    def __init__(self, *, partitions: list[str] | str = (), model_name: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.partitions = partitions
        self.model_name = model_name

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.online import OnlineUpdateError, ingest

        wanted = id_list(self.partitions)
        key = context.get("partition_key")
        if key:
            try:
                dataset, partition_id = split_partition_key(key)
            except ValueError as exc:
                raise AirflowFailException(str(exc)) from exc
            if dataset != str(self.dataset):
                raise AirflowSkipException(f"partition {key!r} belongs to dataset {dataset!r}; this run updates on "
                                           f"{self.dataset!r} (set the dataset param)")
            wanted = [partition_id]
            events = (context.get("triggering_asset_events") or {}).get(NEW_PARTITIONS) or []
            roots = [e.extra["root"] for e in events if (e.extra or {}).get("partition_id") == partition_id
                     and (e.extra or {}).get("dataset") == dataset and (e.extra or {}).get("root")]
            if roots:
                self.root = roots[-1]
        root = checked_partitions_root(self.root)  # the event's root too: nothing is moved outside the allowed roots
        model_name = optional(self.model_name)
        try:
            result = ingest(root, str(self.dataset), wanted or None, self.tracking_uri if model_name else None,
                            model_name, s3_client=self.s3_client)
        except OnlineUpdateError as exc:  # no champion whose module could read the partitions
            raise AirflowFailException(str(exc)) from exc
        for bad in result["quarantined"]:
            self.log.warning("quarantined %s: %s", bad["partition_id"], bad["reason"])
        result["valid_ids"] = [p["partition_id"] for p in result["valid"]]
        result["root"] = str(self.root)
        if not result["valid_ids"]:
            raise AirflowSkipException(
                f"no new valid partition in {self.root}/{self.dataset}: quarantined "
                f"{[q['partition_id'] for q in result['quarantined']]}, already consumed {result['consumed']}, "
                f"missing {result['missing']}")
        return result


class OnlineUpdateOperator(PartitionsOperator):
    """Fine-tune the ``champion`` on the partitions + a replay sample of earlier data, gate it
    (better on the new data, no regression beyond ``tolerance`` on the holdout) and register it as
    ``challenger`` with lineage. A rejected candidate (or already-consumed partitions) skips the
    task and the rollout after it, with the reason in the log and on the MLflow run.

    :param model_name: registered model whose champion is updated. (templated)
    :param partition_ids: the validated partitions (the ingest task's ``valid_ids``). (templated)
    :param replay_fraction: share of the fine-tuning rows drawn from earlier data. (templated)
    :param learning_rate: Adam learning rate of the fine-tuning. (templated)
    :param epochs: fine-tuning epochs. (templated)
    :param batch_size: fine-tuning batch size. (templated)
    :param min_improvement: gain on the new data the candidate must exceed, in the gate metric's unit
        (accuracy, AUC: an increase; RMSE: a decrease). (templated)
    :param tolerance: how much worse than the champion the candidate may be on the holdout, idem; empty:
        the model module's ``GATE`` tolerance. (templated)
    :param gate_metric: the metric compared (one the model's task has); empty: the module's ``GATE``
        metric. (templated)
    :param holdout_uri: unset = the test split of the champion's dataset (``mnist``: its first test rows,
        never in a simulated partition), else a dataset the model module reads. (templated)
    :param holdout_rows: holdout rows evaluated by the gate. (templated)
    """

    template_fields: Sequence[str] = (*PartitionsOperator.template_fields, "model_name", "partition_ids",
                                      "replay_fraction", "learning_rate", "epochs", "batch_size",
                                      "min_improvement", "tolerance", "gate_metric", "holdout_uri",
                                      "holdout_rows")

    def __init__(self, *, model_name: str, partition_ids: list[str] | str, replay_fraction: float | str = 0.5,
                 learning_rate: float | str = 1e-4, epochs: int | str = 2, batch_size: int | str = 64,
                 min_improvement: float | str = 0.0, tolerance: float | str | None = None,
                 gate_metric: str | None = None, holdout_uri: str | None = None, holdout_rows: int | str = 2000,
                 **kwargs):
        super().__init__(**kwargs)
        self.model_name = model_name
        self.partition_ids = partition_ids
        self.replay_fraction = replay_fraction
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.min_improvement = min_improvement
        self.tolerance = tolerance
        self.gate_metric = gate_metric
        self.holdout_uri = holdout_uri
        self.holdout_rows = holdout_rows

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.online import OnlineConfig, OnlineUpdateError, update

        config = OnlineConfig(replay_fraction=float(self.replay_fraction), learning_rate=float(self.learning_rate),
                              epochs=int(self.epochs), batch_size=int(self.batch_size),
                              min_improvement=float(self.min_improvement), tolerance=number_or_none(self.tolerance),
                              gate_metric=optional(self.gate_metric), holdout_uri=optional(self.holdout_uri),
                              holdout_rows=int(self.holdout_rows))
        try:
            result = update(self.tracking_uri, str(self.model_name), checked_partitions_root(self.root),
                            str(self.dataset), id_list(self.partition_ids), config, tags=lineage(context),
                            s3_client=self.s3_client)
        except OnlineUpdateError as exc:
            raise AirflowFailException(str(exc)) from exc
        if result["status"] == "noop":
            raise AirflowSkipException(f"partitions {result['partitions']} already consumed: nothing to do")
        if result["status"] != "registered":
            raise AirflowSkipException(f"online update rejected by the gate: {result['gate']['reason']}")
        return result
