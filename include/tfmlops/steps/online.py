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

from tfmlops import data, evaluation
from tfmlops.partitions import ingest, list_partitions, read_ledger, write_ledger
from tfmlops.steps.retrain import SMOKE_ROWS, WARMUP_ROWS, export_model, model_metrics, register

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
    min_improvement: float = 0.0  # accuracy gain on the new data the candidate must exceed
    tolerance: float = 0.01  # accuracy the candidate may lose on the holdout
    holdout_uri: str = "mnist"
    holdout_rows: int = 2000
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def fixed_holdout(uri: str, rows: int, n_features: int = 784, num_classes: int = 10,
                  s3_client=None) -> tuple[np.ndarray, np.ndarray]:
    """The update gate's fixed holdout: ``mnist`` = the first MNIST test rows
    (:data:`tfmlops.data.MNIST_HOLDOUT_ROWS`, never in a simulated partition), else the test split
    of a dataset file. At most ``rows`` rows, as float32 features."""
    if uri == "mnist":
        mnist = data.load_mnist()
        n = min(rows, data.MNIST_HOLDOUT_ROWS)
        return (mnist.x_test[:n].reshape(n, -1).astype(np.float32) / 255.0,
                mnist.y_test[:n].astype(np.int64))
    dataset, _ = data.load_validated(uri, n_features, num_classes, s3_client=s3_client)
    return dataset.x_test[:rows], dataset.y_test[:rows]


def improvement_gate(new_acc: float, champion_new_acc: float, holdout_acc: float, champion_holdout_acc: float,
                     min_improvement: float, tolerance: float) -> evaluation.GateDecision:
    """Improvement on the new data AND no regression beyond ``tolerance`` on the holdout."""
    gain = new_acc - champion_new_acc
    if gain <= min_improvement:
        return evaluation.GateDecision(False, f"accuracy on the new data {new_acc:.4f} vs the champion's "
                                              f"{champion_new_acc:.4f}: gain {gain:+.4f} is not above "
                                              f"{min_improvement:.4f}")
    if holdout_acc < champion_holdout_acc - tolerance:
        return evaluation.GateDecision(False, f"holdout accuracy {holdout_acc:.4f} regresses from the champion's "
                                              f"{champion_holdout_acc:.4f} by more than {tolerance:.4f}")
    return evaluation.GateDecision(True, f"new data {champion_new_acc:.4f} → {new_acc:.4f} (gain {gain:+.4f}); holdout "
                                         f"{champion_holdout_acc:.4f} → {holdout_acc:.4f} (tolerance {tolerance:.4f})")


def _concat(datasets: list[data.Dataset], split: str) -> tuple[np.ndarray, np.ndarray]:
    return (np.concatenate([getattr(d, f"x_{split}") for d in datasets]),
            np.concatenate([getattr(d, f"y_{split}") for d in datasets]))


def _with_replay(x_new: np.ndarray, y_new: np.ndarray, earlier, config: OnlineConfig) -> tuple:
    """The fine-tuning rows: the new rows plus a sample of earlier rows making up ``replay_fraction``
    of the whole, shuffled. ``earlier()`` gives the earlier datasets (loaded only when needed).
    Returns (x, y, replay row count, replay sources)."""
    rng = np.random.default_rng(config.seed)
    n_replay = int(round(len(y_new) * config.replay_fraction / max(1e-9, 1 - config.replay_fraction)))
    x_fit, y_fit, replay_rows, sources = x_new, y_new, 0, []
    if n_replay > 0:
        datasets, sources = earlier()
        x_old, y_old = _concat(datasets, "train")
        pick = rng.choice(len(y_old), size=min(n_replay, len(y_old)), replace=False)
        x_fit, y_fit = np.concatenate([x_new, x_old[pick]]), np.concatenate([y_new, y_old[pick]])
        replay_rows = len(pick)
    order = rng.permutation(len(y_fit))
    return x_fit[order], y_fit[order], replay_rows, sources


def update(tracking_uri: str, model_name: str, root: str, dataset: str, partition_ids: list[str],
           config: OnlineConfig | None = None, tags: dict[str, str] | None = None, n_features: int = 784,
           num_classes: int = 10, s3_client=None) -> dict:
    """Fine-tune the champion on ``partition_ids`` (validated by :func:`ingest`); see the module doc.

    Returns ``status``: ``noop`` (every partition already consumed), ``rejected`` or
    ``registered`` (with ``version``), the metrics, the gate reason and the MLflow run id."""
    from tfmlops import models, registry

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
    try:
        champion = registry.get_version(tracking_uri, model_name, registry.CHAMPION)
    except LookupError as exc:
        raise OnlineUpdateError(f"no champion to update: {exc}") from exc
    parent = int(champion.version)
    base_uri = registry.client(tracking_uri).get_run(champion.run_id).data.tags.get("dataset_uri", "mnist")

    load = lambda uri: data.load_validated(uri, n_features, num_classes, s3_client=s3_client)[0]  # noqa: E731
    new = [load(available[pid]) for pid in fresh]
    x_new, y_new = _concat(new, "train")
    x_new_test, y_new_test = _concat(new, "test")
    # replay: earlier data = the champion's training dataset + partitions consumed before
    consumed = [pid for pid in ledger["partitions"] if pid in available]
    x_fit, y_fit, replay_rows, replay_sources = _with_replay(
        x_new, y_new, lambda: ([load(base_uri), *(load(available[pid]) for pid in consumed)], [base_uri, *consumed]),
        config)
    x_hold, y_hold = fixed_holdout(config.holdout_uri, config.holdout_rows, n_features, num_classes, s3_client)

    model = registry.load_keras_model(tracking_uri, f"models:/{model_name}/{parent}")
    before = {"new": model_metrics(model, x_new_test, y_new_test, num_classes),
              "holdout": model_metrics(model, x_hold, y_hold, num_classes)}
    history = models.train(model, x_fit, y_fit, models.TrainConfig(
        epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
        validation_split=0.0, seed=config.seed))
    after = {"new": model_metrics(model, x_new_test, y_new_test, num_classes),
             "holdout": model_metrics(model, x_hold, y_hold, num_classes)}
    decision = improvement_gate(after["new"]["accuracy"], before["new"]["accuracy"], after["holdout"]["accuracy"],
                                before["holdout"]["accuracy"], config.min_improvement, config.tolerance)
    log.info("online update gate: %s", decision.reason)

    metrics = {f"{which}_{k}": v for which in ("new", "holdout") for k, v in after[which].items()
               if k != "confusion_matrix"}
    metrics.update({f"champion_{which}_accuracy": before[which]["accuracy"] for which in ("new", "holdout")})
    lineage = {**(tags or {}), "online.parent_version": str(parent), "online.partitions": ",".join(fresh),
               "online.dataset": dataset, "online.partitions_root": str(root), "dataset_uri": base_uri,
               "dataset_fingerprint": data.Dataset(dataset, x_fit, y_fit, x_new_test, y_new_test).fingerprint()}
    run_id = registry.start_run(tracking_uri, model_name, f"online-{fresh[-1]}",
                                {**lineage, "gate": "passed" if decision.passed else "rejected",
                                 "gate_reason": decision.reason})
    registry.log_params(tracking_uri, run_id, {**{f"online.{k}": v for k, v in config.to_dict().items()},
                                               "data.new_rows": len(y_new), "data.replay_rows": replay_rows,
                                               "data.replay_sources": replay_sources})
    registry.log_history(tracking_uri, run_id, history)
    registry.log_metrics(tracking_uri, run_id, metrics)
    result = {"status": "rejected", "version": None, "parent_version": parent, "partitions": fresh,
              "run_id": run_id, "gate": decision.to_dict(), "metrics": metrics, "replay_rows": replay_rows}
    if decision.passed:
        model_uri = registry.log_keras_model(tracking_uri, run_id, model, x_new_test[:SMOKE_ROWS])
        export_model(tracking_uri, run_id, model, x_new_test[:SMOKE_ROWS], x_new[:WARMUP_ROWS])
        registered = register(tracking_uri, model_name, run_id, model_uri,
                              {"accuracy": after["holdout"]["accuracy"], "new_accuracy": after["new"]["accuracy"]},
                              lineage)
        result.update(status="registered", version=registered["version"])
    registry.end_run(tracking_uri, run_id)

    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for pid in fresh:
        ledger["partitions"][pid] = {"run_id": run_id, "outcome": result["status"], "version": result["version"],
                                     "parent_version": parent, "consumed_at": stamp}
    write_ledger(root, dataset, ledger, s3_client)
    return result


def join_feedback(log_prefix: str, root: str, dataset: str, min_rows: int = 50) -> dict:
    """Labeled live requests → a new partition (:func:`tfmlops.feedback.join_feedback`)."""
    from tfmlops import feedback

    return feedback.join_feedback(log_prefix, root, dataset, min_rows=min_rows)
