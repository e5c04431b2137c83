"""Steps of ``tf_online_update``: validate new partitions, then fine-tune the champion on them.

- :func:`ingest` (:func:`tfmlops.partitions.ingest`) validates every new partition with the
  training-data checks; a bad one is quarantined with its reason without blocking the others.
- :func:`update` fine-tunes the current ``champion`` on the new partitions plus a replay sample of
  earlier data (the champion's training dataset and the partitions consumed before), with a low
  learning rate; evaluates champion and candidate on the new data (the partitions' test splits)
  and on the fixed holdout; :func:`improvement_gate` needs an improvement on the new data and no
  regression beyond ``tolerance`` on the holdout. A passing candidate is exported and registered
  with the retraining steps (:func:`~tfmlops.steps.retrain.export_model`,
  :func:`~tfmlops.steps.retrain.register`), with lineage (parent version, partitions), aliased
  ``challenger``. The partitions are then written to the ledger (whatever the gate said), so
  re-running on them is a no-op.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from tfmlops import data, evaluation, model_data, modelspec, partitions
from tfmlops.model_data import ModelData, Split
from tfmlops.partitions import list_partitions, read_ledger, write_ledger
from tfmlops.steps.retrain import SMOKE_ROWS, WARMUP_ROWS, export_model, register, version_spec

__all__ = ["OnlineConfig", "OnlineUpdateError", "fixed_holdout", "improvement_gate", "ingest", "update"]

log = logging.getLogger(__name__)

class OnlineUpdateError(RuntimeError):
    """The update cannot run (no champion, no usable partition); the message says why."""


@dataclass
class OnlineConfig:
    replay_fraction: float = 0.5  # share of the fine-tuning rows drawn from earlier data
    learning_rate: float = 1e-4
    epochs: int = 2
    batch_size: int = 64
    min_improvement: float = 0.0  # gain on the new data the candidate must exceed, in the gate metric's unit
    tolerance: float | None = None  # how much worse than the champion it may be on the holdout; None: the GATE's
    gate_metric: str | None = None  # the metric compared (one of the task's); None: the model module's GATE
    holdout_uri: str | None = None  # None: the champion's dataset's test split ("mnist": its holdout rows)
    holdout_rows: int = 2000
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _champion(tracking_uri: str, model_name: str):
    from tfmlops import registry

    try:
        return registry.get_version(tracking_uri, model_name, registry.CHAMPION)
    except LookupError as exc:
        raise OnlineUpdateError(f"no champion to update: {exc}") from exc


def ingest(root: str, dataset: str, partition_ids: list[str] | None = None, tracking_uri: str | None = None,
           model_name: str | None = None, s3_client=None) -> dict:
    """:func:`tfmlops.partitions.ingest` with the champion's model module as the validator (its loader,
    its INPUTS and LABEL); without a model name, the default module's."""
    validate = None
    if model_name:
        spec, module = version_spec(_champion(tracking_uri, model_name))
        validate = partitions.module_validate(spec, module, s3_client)
    return partitions.ingest(root, dataset, partition_ids, s3_client=s3_client, validate=validate)


def fixed_holdout(spec, module, uri: str, rows: int, s3_client=None) -> Split:
    """The update gate's fixed holdout: ``mnist`` = the first MNIST test rows
    (:data:`tfmlops.data.MNIST_HOLDOUT_ROWS`, never in a simulated partition), else the test split
    of a dataset the model module reads. At most ``rows`` rows."""
    if uri == "mnist":
        mnist = data.load_mnist()
        n = min(rows, data.MNIST_HOLDOUT_ROWS)
        (name, (_, shape)), = spec.inputs.items()
        return Split({name: (mnist.x_test[:n].reshape(n, *shape).astype(np.float32) / 255.0)},
                     mnist.y_test[:n].astype(np.int64))
    return model_data.load(spec, module, uri, s3_client=s3_client, max_overlap_fraction=1.0)[0].test.head(rows)


def improvement_gate(new: float, champion_new: float, holdout: float, champion_holdout: float,
                     min_improvement: float, tolerance: float, metric: str = "accuracy",
                     higher_is_better: bool = True) -> evaluation.GateDecision:
    """Improvement on the new data AND no regression beyond ``tolerance`` on the holdout, in the
    task metric's own unit (for RMSE, lower is better)."""
    sign = 1.0 if higher_is_better else -1.0
    gain = sign * (new - champion_new)
    if gain <= min_improvement:
        return evaluation.GateDecision(False, f"{metric} on the new data {new:.4f} vs the champion's "
                                              f"{champion_new:.4f}: gain {gain:+.4f} is not above "
                                              f"{min_improvement:.4f}")
    if sign * (champion_holdout - holdout) > tolerance:
        return evaluation.GateDecision(False, f"holdout {metric} {holdout:.4f} regresses from the champion's "
                                              f"{champion_holdout:.4f} by more than {tolerance:.4f}")
    return evaluation.GateDecision(True, f"{metric} on new data {champion_new:.4f} → {new:.4f} (gain {gain:+.4f}); "
                                         f"holdout {champion_holdout:.4f} → {holdout:.4f} (tolerance {tolerance:.4f})")


def _with_replay(new: Split, earlier, config: OnlineConfig) -> tuple[Split, int, list]:
    """The fine-tuning rows: the new rows plus a sample of earlier rows making up ``replay_fraction``
    of the whole, shuffled. ``earlier()`` gives the earlier splits (loaded only when needed; a
    sharded training set too large for memory streams) and their sources; the sample of their union
    is drawn by :func:`tfmlops.model_data.sample` (a reservoir when one of them streams: memory of
    the replay rows, never the whole history). Returns (rows, replay row count, replay sources)."""
    n_replay = int(round(len(new) * config.replay_fraction / max(1e-9, 1 - config.replay_fraction)))
    fit, replay_rows, sources = new, 0, []
    if n_replay > 0:
        splits, sources = earlier()
        replay = model_data.sample(splits, n_replay, config.seed)
        fit = model_data.concatenate([new, replay])
        replay_rows = len(replay)
    return fit.take(np.random.default_rng(config.seed).permutation(len(fit))), replay_rows, sources


def _metrics(spec, model, split: Split) -> dict:
    from tfmlops import trainer

    metrics = evaluation.task_metrics(spec.task, split.labels, trainer.predict(spec, model, split.features),
                                      spec.num_classes)
    return {k: v for k, v in metrics.items() if k not in evaluation.PLOT_KEYS}


def update(tracking_uri: str, model_name: str, root: str, dataset: str, partition_ids: list[str],
           config: OnlineConfig | None = None, tags: dict[str, str] | None = None, s3_client=None) -> dict:
    """Fine-tune the champion on ``partition_ids`` (validated by :func:`ingest`); see the module doc.
    The partitions, the replay and the holdout are read by the champion's model module; the gate
    compares the task's metric (accuracy / AUC / RMSE).

    Returns ``status``: ``noop`` (every partition already consumed), ``rejected`` or
    ``registered`` (with ``version``), the metrics, the gate reason and the MLflow run id."""
    import tf_keras as keras

    from tfmlops import registry, trainer

    config = config or OnlineConfig()
    ledger = read_ledger(root, dataset, s3_client)
    fresh = [pid for pid in dict.fromkeys(partition_ids) if pid not in ledger["partitions"]]
    if not fresh:
        log.info("partitions %s of %s are already consumed: nothing to do", partition_ids, dataset)
        return {"status": "noop", "partitions": list(partition_ids), "version": None}
    available = list_partitions(root, dataset, s3_client=s3_client)
    missing = [pid for pid in fresh if pid not in available]
    if missing:
        raise OnlineUpdateError(f"{dataset}: partitions {missing} are not in "
                                f"{str(root).rstrip('/')}/{dataset}/incoming")
    champion = _champion(tracking_uri, model_name)
    parent = int(champion.version)
    spec, module = version_spec(champion)  # the update is the champion's model: it keeps its spec
    gate = modelspec.resolve_gate(spec, config.gate_metric, tolerance=config.tolerance)
    metric, higher, tolerance = gate["metric"], gate["higher_is_better"], gate["tolerance"]
    base_uri = registry.client(tracking_uri).get_run(champion.run_id).data.tags.get("dataset_uri", "mnist")

    def load(uri: str) -> ModelData:
        return model_data.load(spec, module, uri, s3_client=s3_client, max_overlap_fraction=1.0)[0]

    new = [load(available[pid]) for pid in fresh]
    new_train = model_data.concatenate([s for d in new for s in (d.train, d.validation)])
    new_test = model_data.concatenate([d.test for d in new])
    # replay: earlier data = the champion's training dataset + partitions consumed before
    consumed = [pid for pid in ledger["partitions"] if pid in available]
    fit, replay_rows, replay_sources = _with_replay(
        new_train, lambda: ([load(base_uri).train, *(load(available[pid]).train for pid in consumed)],
                            [base_uri, *consumed]), config)
    holdout = fixed_holdout(spec, module, config.holdout_uri or base_uri, config.holdout_rows, s3_client)

    model = registry.load_keras_model(tracking_uri, f"models:/{model_name}/{parent}")
    before = {"new": _metrics(spec, model, new_test), "holdout": _metrics(spec, model, holdout)}
    keras.utils.set_random_seed(config.seed)
    trainer.compile_by_task(model, spec.task, config.learning_rate)
    history = model.fit(trainer.inputs_for(model, fit.features), trainer.labels_for(spec.task, model, fit.labels),
                        epochs=config.epochs, batch_size=config.batch_size, verbose=0,
                        callbacks=[trainer.EpochLogger(config.epochs)]).history
    history = {k: [float(v) for v in values] for k, values in history.items()}
    after = {"new": _metrics(spec, model, new_test), "holdout": _metrics(spec, model, holdout)}
    decision = improvement_gate(after["new"][metric], before["new"][metric], after["holdout"][metric],
                                before["holdout"][metric], config.min_improvement, tolerance, metric, higher)
    log.info("online update gate: %s", decision.reason)

    metrics = {f"{which}_{k}": v for which in ("new", "holdout") for k, v in after[which].items()}
    metrics.update({f"champion_{which}_{metric}": before[which][metric] for which in ("new", "holdout")})
    lineage = {**(tags or {}), "online.parent_version": str(parent), "online.partitions": ",".join(fresh),
               "online.dataset": dataset, "online.partitions_root": str(root), "dataset_uri": base_uri,
               "dataset_fingerprint": ModelData(dataset, fit, fit.head(0), new_test).fingerprint()}
    run_id = registry.start_run(tracking_uri, model_name, f"online-{fresh[-1]}",
                                {**lineage, **spec.to_tags(), **modelspec.module_changed_tags(spec),
                                 "gate": "passed" if decision.passed else "rejected",
                                 "gate_reason": decision.reason, "gate.metric": metric,
                                 "gate.tolerance": str(tolerance)})
    registry.log_params(tracking_uri, run_id, {**{f"online.{k}": v for k, v in config.to_dict().items()},
                                               "data.new_rows": len(new_train), "data.replay_rows": replay_rows,
                                               "data.replay_sources": replay_sources})
    registry.log_history(tracking_uri, run_id, history)
    registry.log_metrics(tracking_uri, run_id, metrics)
    result = {"status": "rejected", "version": None, "parent_version": parent, "partitions": fresh,
              "run_id": run_id, "gate": {**decision.to_dict(), "metric": metric, "tolerance": tolerance},
              "metrics": metrics, "replay_rows": replay_rows}
    if decision.passed:
        smoke = new_test.head(SMOKE_ROWS).features
        model_uri = registry.log_keras_model(tracking_uri, run_id, model, smoke)
        export_model(tracking_uri, run_id, model, smoke, new_test.head(WARMUP_ROWS).features, spec)
        registered = register(tracking_uri, model_name, run_id, model_uri,
                              {**after["holdout"], f"new_{metric}": after["new"][metric]}, lineage, spec.to_dict())
        result.update(status="registered", version=registered["version"])
    registry.end_run(tracking_uri, run_id)

    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for pid in fresh:
        ledger["partitions"][pid] = {"run_id": run_id, "outcome": result["status"], "version": result["version"],
                                     "parent_version": parent, "consumed_at": stamp}
    write_ledger(root, dataset, ledger, s3_client)
    return result


def join_feedback(log_prefix: str, root: str, dataset: str, min_rows: int = 50, tracking_uri: str | None = None,
                  model_name: str | None = None) -> dict:
    """Labeled live requests → a new partition (:func:`tfmlops.feedback.join_feedback`), the logs read
    by the champion's model spec (its inputs, task and classes); without a model name, the default
    module's."""
    from tfmlops import feedback

    spec = version_spec(_champion(tracking_uri, model_name))[0] if model_name else None
    return feedback.join_feedback(log_prefix, root, dataset, spec, min_rows=min_rows)
