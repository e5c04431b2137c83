"""Online (incremental) updates from new labeled data partitions.

Layout under a partitions root (local folder or ``s3://bucket/prefix``), per dataset::

    <root>/<dataset>/incoming/<partition-id>/data.npz      (or data.parquet) new labeled data
    <root>/<dataset>/quarantine/<partition-id>/...         a bad partition, moved, + reason.json
    <root>/<dataset>/ledger.json                            consumed partitions → run, version

Steps (each a plain function; the Airflow operators are thin wrappers):

- :func:`ingest` validates every new partition with the training-data checks
  (:func:`tfmlops.data.load_validated`); a bad one is moved to ``quarantine/`` with its reason,
  without blocking the good ones; partitions already in the ledger are skipped.
- :func:`update` fine-tunes the current ``champion`` on the new partitions plus a replay sample of
  earlier data (the champion's training dataset and the partitions consumed before), with a low
  learning rate; evaluates champion and candidate on the new data (the partitions' test splits)
  and on the fixed holdout; the gate needs an improvement on the new data and no regression
  beyond ``tolerance`` on the holdout. A passing candidate is exported, registered with lineage
  (parent version, partitions) and aliased ``challenger``. The partitions are then written to the
  ledger (whatever the gate said), so re-running on them is a no-op.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tfmlops import data, evaluation
from tfmlops.simulate import HOLDOUT_ROWS
from tfmlops.storage import list_s3_keys, read_bytes, s3, split_s3_uri, write_bytes

log = logging.getLogger(__name__)

PARTITION_FILES = ("data.npz", "data.parquet")
LEDGER = "ledger.json"
REASON = "reason.json"


class OnlineUpdateError(RuntimeError):
    """The update cannot run (no champion, no usable partition); the message says why."""


# ------------------------------------------------------------------------------ storage layout
def _join(*parts: str) -> str:
    return "/".join([str(parts[0]).rstrip("/"), *[p.strip("/") for p in parts[1:]]])


def dataset_root(root: str, dataset: str) -> str:
    return _join(root, dataset)


def _list_keys(uri_prefix: str, s3_client) -> list[str]:
    bucket, prefix = split_s3_uri(uri_prefix)
    return list(list_s3_keys(s3(s3_client), bucket, prefix.rstrip("/") + "/"))


def list_partitions(root: str, dataset: str, area: str = "incoming", s3_client=None) -> dict[str, str]:
    """``{partition_id: data file URI}`` of the partitions in ``incoming`` (or ``quarantine``), sorted by id."""
    base = _join(root, dataset, area)
    found: dict[str, str] = {}
    if base.startswith("s3://"):
        bucket, prefix = split_s3_uri(base)
        for key in _list_keys(base, s3_client):
            rest = key[len(prefix.rstrip("/")) + 1:].split("/")
            if len(rest) == 2 and rest[1] in PARTITION_FILES:
                found.setdefault(rest[0], f"s3://{bucket}/{key}")
    elif Path(base).is_dir():
        for folder in Path(base).iterdir():
            for name in PARTITION_FILES:
                if (folder / name).is_file():
                    found[folder.name] = str(folder / name)
                    break
    return dict(sorted(found.items()))


def read_ledger(root: str, dataset: str, s3_client=None) -> dict:
    try:
        return json.loads(read_bytes(_join(root, dataset, LEDGER), s3_client=s3_client))
    except FileNotFoundError:
        return {"partitions": {}}


def write_ledger(root: str, dataset: str, ledger: dict, s3_client=None) -> None:
    write_bytes(_join(root, dataset, LEDGER), json.dumps(ledger, indent=1, sort_keys=True).encode(),
                s3_client=s3_client)


def quarantine(root: str, dataset: str, partition_id: str, reason: str, s3_client=None) -> str:
    """Move ``incoming/<id>/`` to ``quarantine/<id>/`` and write ``reason.json`` there."""
    src, dst = _join(root, dataset, "incoming", partition_id), _join(root, dataset, "quarantine", partition_id)
    if src.startswith("s3://"):
        client = s3(s3_client)
        bucket, src_prefix = split_s3_uri(src)
        _, dst_prefix = split_s3_uri(dst)
        for key in _list_keys(src, client):
            new_key = dst_prefix + key[len(src_prefix):]
            client.copy_object(Bucket=bucket, Key=new_key, CopySource={"Bucket": bucket, "Key": key})
            client.delete_object(Bucket=bucket, Key=key)
    else:
        target = Path(dst)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, target)
    record = {"partition_id": partition_id, "dataset": dataset, "reason": reason,
              "quarantined_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_bytes(_join(dst, REASON), json.dumps(record, indent=1).encode(), s3_client=s3_client)
    log.warning("quarantined partition %s of %s: %s", partition_id, dataset, reason)
    return dst


# ------------------------------------------------------------------------------------- ingest
def ingest(root: str, dataset: str, partition_ids: list[str] | None = None, n_features: int = 784,
           num_classes: int = 10, s3_client=None) -> dict:
    """Validate new partitions (all unconsumed ones when ``partition_ids`` is empty).

    Returns ``valid`` (id, uri, rows, fingerprint), ``quarantined`` (id, reason), ``consumed``
    (ids already in the ledger: skipped) and ``missing`` (requested ids that are not there)."""
    ledger = read_ledger(root, dataset, s3_client)["partitions"]
    available = list_partitions(root, dataset, s3_client=s3_client)
    wanted = list(partition_ids) if partition_ids else list(available)
    result: dict[str, list] = {"valid": [], "quarantined": [], "consumed": [], "missing": []}
    for pid in wanted:
        if pid in ledger:
            result["consumed"].append(pid)
        elif pid not in available:
            result["missing"].append(pid)
        else:
            try:
                _, report = data.load_validated(available[pid], n_features, num_classes, s3_client=s3_client)
            except data.DatasetError as exc:
                quarantine(root, dataset, pid, str(exc), s3_client)
                result["quarantined"].append({"partition_id": pid, "reason": str(exc)})
                continue
            result["valid"].append({"partition_id": pid, "uri": available[pid], "train_rows": report["train_rows"],
                                    "test_rows": report["test_rows"], "fingerprint": report["fingerprint"]})
    log.info("ingest %s: %d valid, %d quarantined, %d already consumed, %d missing", dataset, len(result["valid"]),
             len(result["quarantined"]), len(result["consumed"]), len(result["missing"]))
    return result


# ------------------------------------------------------------------------------------- update
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


def load_holdout(uri: str, rows: int, n_features: int = 784, num_classes: int = 10,
                 s3_client=None) -> tuple[np.ndarray, np.ndarray]:
    """The fixed holdout: ``mnist`` = the first MNIST test rows (never in a simulated partition),
    else the test split of a dataset file. At most ``rows`` rows, as float32 features."""
    if uri == "mnist":
        mnist = data.load_mnist()
        n = min(rows, HOLDOUT_ROWS)
        return (mnist.x_test[:n].reshape(n, -1).astype(np.float32) / 255.0,
                mnist.y_test[:n].astype(np.int64))
    dataset, _ = data.load_validated(uri, n_features, num_classes, s3_client=s3_client)
    return dataset.x_test[:rows], dataset.y_test[:rows]


def _accuracy(model, x: np.ndarray, y: np.ndarray, num_classes: int) -> dict:
    from tfmlops import models

    return evaluation.classification_metrics(y, models.predict_classes(model, x), num_classes)


def gate(new_acc: float, champion_new_acc: float, holdout_acc: float, champion_holdout_acc: float,
         min_improvement: float, tolerance: float) -> evaluation.GateDecision:
    """Improvement on the new data AND no regression beyond ``tolerance`` on the holdout."""
    gain = new_acc - champion_new_acc
    if gain <= min_improvement:
        return evaluation.GateDecision(False, f"accuracy on the new data {new_acc:.4f} vs the champion's "
                                              f"{champion_new_acc:.4f}: gain {gain:+.4f} is not above {min_improvement:.4f}")
    if holdout_acc < champion_holdout_acc - tolerance:
        return evaluation.GateDecision(False, f"holdout accuracy {holdout_acc:.4f} regresses from the champion's "
                                              f"{champion_holdout_acc:.4f} by more than {tolerance:.4f}")
    return evaluation.GateDecision(True, f"new data {champion_new_acc:.4f} → {new_acc:.4f} (gain {gain:+.4f}); holdout "
                                         f"{champion_holdout_acc:.4f} → {holdout_acc:.4f} (tolerance {tolerance:.4f})")


def _concat(datasets: list[data.Dataset], split: str) -> tuple[np.ndarray, np.ndarray]:
    return (np.concatenate([getattr(d, f"x_{split}") for d in datasets]),
            np.concatenate([getattr(d, f"y_{split}") for d in datasets]))


def update(tracking_uri: str, model_name: str, root: str, dataset: str, partition_ids: list[str],
           config: OnlineConfig | None = None, tags: dict[str, str] | None = None, n_features: int = 784,
           num_classes: int = 10, s3_client=None) -> dict:
    """Fine-tune the champion on ``partition_ids`` (validated by :func:`ingest`); see the module doc.

    Returns ``status``: ``noop`` (every partition already consumed), ``rejected`` or
    ``registered`` (with ``version``), the metrics, the gate reason and the MLflow run id."""
    from tfmlops import models, registry
    from tfmlops.export import export_saved_model
    from tfmlops.pipeline import SERVING_ARTIFACT, SMOKE_ROWS, register

    config = config or OnlineConfig()
    ledger = read_ledger(root, dataset, s3_client)
    fresh = [pid for pid in dict.fromkeys(partition_ids) if pid not in ledger["partitions"]]
    if not fresh:
        log.info("partitions %s of %s are already consumed: nothing to do", partition_ids, dataset)
        return {"status": "noop", "partitions": list(partition_ids), "version": None}
    available = list_partitions(root, dataset, s3_client=s3_client)
    missing = [pid for pid in fresh if pid not in available]
    if missing:
        raise OnlineUpdateError(f"{dataset}: partitions {missing} are not in {_join(root, dataset, 'incoming')}")
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
    rng = np.random.default_rng(config.seed)
    n_replay = int(round(len(y_new) * config.replay_fraction / max(1e-9, 1 - config.replay_fraction)))
    replay_rows, replay_sources = 0, []
    x_fit, y_fit = x_new, y_new
    if n_replay > 0:
        earlier = [load(base_uri)]
        replay_sources.append(base_uri)
        for pid in ledger["partitions"]:
            if pid in available:
                earlier.append(load(available[pid]))
                replay_sources.append(pid)
        x_old, y_old = _concat(earlier, "train")
        pick = rng.choice(len(y_old), size=min(n_replay, len(y_old)), replace=False)
        x_fit, y_fit = np.concatenate([x_new, x_old[pick]]), np.concatenate([y_new, y_old[pick]])
        replay_rows = len(pick)
    order = rng.permutation(len(y_fit))
    x_fit, y_fit = x_fit[order], y_fit[order]
    x_hold, y_hold = load_holdout(config.holdout_uri, config.holdout_rows, n_features, num_classes, s3_client)

    model = registry.load_keras_model(tracking_uri, f"models:/{model_name}/{parent}")
    before = {"new": _accuracy(model, x_new_test, y_new_test, num_classes),
              "holdout": _accuracy(model, x_hold, y_hold, num_classes)}
    history = models.train(model, x_fit, y_fit, models.TrainConfig(
        epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
        validation_split=0.0, seed=config.seed))
    after = {"new": _accuracy(model, x_new_test, y_new_test, num_classes),
             "holdout": _accuracy(model, x_hold, y_hold, num_classes)}
    decision = gate(after["new"]["accuracy"], before["new"]["accuracy"], after["holdout"]["accuracy"],
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
        with tempfile.TemporaryDirectory() as tmp:
            exported = export_saved_model(model, Path(tmp) / SERVING_ARTIFACT, x_new_test[:SMOKE_ROWS])
            registry.log_files(tracking_uri, run_id, exported["path"], SERVING_ARTIFACT)
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
