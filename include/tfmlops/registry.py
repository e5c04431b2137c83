"""MLflow tracking and model registry: runs, metrics, plots, the logged model, versions, aliases.

Every function takes the tracking URI explicitly (the Airflow hook reads it from the
``mlflow_default`` connection), so nothing depends on process-global MLflow state.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
CHALLENGER = "challenger"


def client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def start_run(tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> str:
    mlf = client(tracking_uri)
    found = mlf.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else mlf.create_experiment(experiment)
    return mlf.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id


def log_params(tracking_uri: str, run_id: str, params: dict) -> None:
    mlf = client(tracking_uri)
    for key, value in params.items():
        mlf.log_param(run_id, key, json.dumps(value) if isinstance(value, (list, dict)) else value)


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    mlf = client(tracking_uri)
    for key, value in metrics.items():
        mlf.log_metric(run_id, key, float(value), step=step)


def log_history(tracking_uri: str, run_id: str, history: dict[str, list[float]], metrics: bool = True) -> None:
    """Per-epoch metrics (step = epoch; ``metrics=False`` when they were logged as training went)
    and a training-curve PNG."""
    mlf = client(tracking_uri)
    for key, values in history.items() if metrics else ():
        for epoch, value in enumerate(values):
            mlf.log_metric(run_id, key, value, step=epoch + 1)
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "training_curves.png"
        plot_history(history, png)
        mlf.log_artifact(run_id, str(png), artifact_path="plots")


def log_dict(tracking_uri: str, run_id: str, data: dict, artifact_file: str) -> None:
    """``data`` as a JSON artifact of the run (e.g. ``data/profile.json``)."""
    client(tracking_uri).log_dict(run_id, data, artifact_file)


def log_files(tracking_uri: str, run_id: str, local_dir: str | Path, artifact_path: str) -> str:
    client(tracking_uri).log_artifacts(run_id, str(local_dir), artifact_path=artifact_path)
    return f"runs:/{run_id}/{artifact_path}"


def log_confusion_matrix(tracking_uri: str, run_id: str, matrix: list[list[int]]) -> None:
    mlf = client(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        png, raw = Path(tmp) / "confusion_matrix.png", Path(tmp) / "confusion_matrix.json"
        plot_confusion_matrix(matrix, png)
        raw.write_text(json.dumps(matrix))
        mlf.log_artifact(run_id, str(png), artifact_path="plots")
        mlf.log_artifact(run_id, str(raw), artifact_path="evaluation")


def log_evaluation_plots(tracking_uri: str, run_id: str, task: str, metrics: dict, y_true, outputs,
                         class_names: list[str]) -> None:
    """The task's evaluation plots: the confusion matrix (multiclass), the ROC curve (binary), the
    residual plot (regression), as PNG under ``plots/`` and their data under ``evaluation/``."""
    if task == "multiclass":
        log_confusion_matrix(tracking_uri, run_id, metrics["confusion_matrix"])
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mlf = client(tracking_uri)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if task == "binary":
        roc = metrics["roc"]
        ax.plot(roc["fpr"], roc["tpr"], label=f"AUC {metrics['auc']:.3f}")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
        ax.set_xlabel(f"false positive rate ({class_names[0]} called {class_names[1]})")
        ax.set_ylabel(f"true positive rate ({class_names[1]})")
        ax.set_title("ROC curve (test set)")
        ax.legend(loc="lower right")
        name, data = "roc_curve", roc
    else:
        y, pred = np.asarray(y_true, dtype=float), np.asarray(outputs, dtype=float)
        ax.scatter(pred, pred - y, s=8, alpha=0.6)
        ax.axhline(0, color="grey", linestyle="--")
        ax.set_xlabel("predicted")
        ax.set_ylabel("predicted - true")
        ax.set_title(f"residuals (test set), RMSE {metrics['rmse']:.3g}")
        name, data = "residuals", {"predicted": pred.tolist(), "true": y.tolist()}
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        png, raw = Path(tmp) / f"{name}.png", Path(tmp) / f"{name}.json"
        fig.savefig(png, dpi=100)
        raw.write_text(json.dumps(data))
        mlf.log_artifact(run_id, str(png), artifact_path="plots")
        mlf.log_artifact(run_id, str(raw), artifact_path="evaluation")
    plt.close(fig)


@contextlib.contextmanager
def _no_pickled_custom_objects():
    """MLflow pickles Keras' whole global custom-object registry into every model it logs
    (``global_custom_objects.cloudpickle``) whenever that registry is not empty — and
    tensorflow-model-optimization fills it on import. Loading such a model means unpickling, which
    :mod:`tfmlops.model_files` refuses. The project's models are built from Keras' own layers only,
    so the registry is emptied while the model is saved (tasks save one model at a time)."""
    import mlflow.tensorflow

    custom_objects = mlflow.tensorflow.get_global_custom_objects()
    saved = dict(custom_objects or {})
    if custom_objects:
        custom_objects.clear()
    try:
        yield
    finally:
        if custom_objects is not None:
            custom_objects.update(saved)


def log_keras_model(tracking_uri: str, run_id: str, model, input_example) -> str:
    """Log a tf_keras model with the ``mlflow.tensorflow`` flavour and a signature (no pickled custom
    objects: :func:`_no_pickled_custom_objects`); returns its URI.

    Explicit ``pip_requirements`` skip MLflow's requirement inference, which imports TensorFlow in
    a subprocess (~20 s instead of ~0.3 s). No ``input_example`` (a README deviation): MLflow checks
    one by loading the model back through ``mlflow.tensorflow``'s pyfunc loader in this process —
    the loader :func:`load_keras_model` avoids —, 1–2 s per model."""
    import importlib.metadata as md

    import mlflow.tensorflow
    from mlflow.models import infer_signature

    signature = infer_signature(input_example, model(input_example, training=False).numpy())
    requirements = [f"{pkg}=={md.version(pkg)}" for pkg in ("tensorflow", "tf-keras")]
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id), _no_pickled_custom_objects():
        info = mlflow.tensorflow.log_model(model, name="model", signature=signature,
                                           pip_requirements=requirements)
    return info.model_uri


def load_keras_model(tracking_uri: str, model_uri: str):
    """The Keras model at ``model_uri`` (``models:/``, ``runs:/``), loaded without running code from the
    registry: not through ``mlflow.tensorflow.load_model``, which unpickles custom objects and puts a
    model's code directory on ``sys.path``, but by :func:`tfmlops.model_files.load_mlflow_keras_model`
    (refuses those, checks the architecture, loads in Keras safe mode)."""
    from tfmlops.model_files import load_mlflow_keras_model

    with tempfile.TemporaryDirectory(prefix="tfmlops-model-") as tmp:
        return load_mlflow_keras_model(download(tracking_uri, model_uri, tmp))


def download(tracking_uri: str, artifact_uri: str, dst: str | Path) -> Path:
    # MLflow resolves a ``models:/<id>`` URI through the process-wide tracking URI (its models
    # artifact repository ignores ``tracking_uri``): a Celery task process that has not logged
    # anything before has none, and would look in a local ./mlruns store.
    mlflow.set_tracking_uri(tracking_uri)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst),
                                                     tracking_uri=tracking_uri))


def set_tags(tracking_uri: str, run_id: str, tags: dict[str, str]) -> None:
    mlf = client(tracking_uri)
    for key, value in tags.items():
        mlf.set_tag(run_id, key, str(value))


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(tracking_uri).set_terminated(run_id, status)


def register(tracking_uri: str, name: str, model_uri: str, run_id: str, tags: dict[str, str],
             description: str = "") -> int:
    """Register ``model_uri`` as a new version of ``name`` (created if missing); returns the version."""
    mlf = client(tracking_uri)
    try:
        mlf.get_registered_model(name)
    except MlflowException:
        mlf.create_registered_model(name, description="TensorFlow model trained by the Airflow pipelines")
    # MLflow 3 logged models ("models:/m-<id>") must name their model id when registered.
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    version = mlf.create_model_version(name, model_uri, run_id=run_id, tags={k: str(v) for k, v in tags.items()},
                                       description=description, model_id=model_id)
    return int(version.version)


def set_alias(tracking_uri: str, name: str, alias: str, version: int) -> None:
    client(tracking_uri).set_registered_model_alias(name, alias, str(version))


def alias_version(tracking_uri: str, name: str, alias: str):
    """The ModelVersion behind ``name@alias``, or None when the model or the alias does not exist."""
    try:
        return client(tracking_uri).get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def plot_history(history: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    second = next((m for m in ("accuracy", "auc", "rmse") if m in history), "accuracy")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", second)):
        for key in (metric, f"val_{metric}"):
            if key in history:
                ax.plot(range(1, len(history[key]) + 1), history[key], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion_matrix(matrix: list[list[int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = len(matrix)
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(size))
    ax.set_yticks(range(size))
    for i in range(size):
        for j in range(size):
            ax.text(j, i, matrix[i][j], ha="center", va="center", fontsize=7)
    ax.set_title("confusion matrix (test set)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------ serving rollouts
PREVIOUS = "previous"


def get_version(tracking_uri: str, name: str, version_or_alias: str | int):
    """The ModelVersion for a number (``3``, ``"3"``) or an alias (``champion``); LookupError if none."""
    ref = str(version_or_alias).strip()
    if ref.isdigit():
        try:
            return client(tracking_uri).get_model_version(name, ref)
        except MlflowException as exc:
            raise LookupError(f"registered model {name!r} has no version {ref}") from exc
    found = alias_version(tracking_uri, name, ref)
    if found is None:
        try:
            client(tracking_uri).get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise LookupError(f"model {name!r} is not registered in MLflow") from exc
            raise  # the registry did not answer: not a missing model (the task may retry)
        raise LookupError(f"registered model {name!r} has no alias {ref!r}")
    return found


def set_version_tags(tracking_uri: str, name: str, version: int, tags: dict) -> None:
    mlf = client(tracking_uri)
    for key, value in tags.items():
        mlf.set_model_version_tag(name, str(version), key, str(value))


def set_version_description(tracking_uri: str, name: str, version: int, description: str) -> None:
    client(tracking_uri).update_model_version(name, str(version), description=description)


SERVING_HISTORY_TAG = "serving.history"
SERVING_HISTORY_MAX_CHARS = 4000  # under MLflow's limit on a model version tag value


def append_serving_history(tracking_uri: str, name: str, version: int, event: dict) -> list[dict]:
    """Append ``event`` (with a UTC ``at``) to the version's ``serving.history`` tag, a JSON list;
    the oldest events are dropped when it would not fit a tag value. Returns the list."""
    mv = client(tracking_uri).get_model_version(name, str(version))
    history = _bounded_append(_json_list(mv.tags.get(SERVING_HISTORY_TAG)), event)
    set_version_tags(tracking_uri, name, version, {SERVING_HISTORY_TAG: history})
    return json.loads(history)


def delete_alias(tracking_uri: str, name: str, alias: str) -> None:
    try:
        client(tracking_uri).delete_registered_model_alias(name, alias)
    except MlflowException:
        pass


# On the registered model (not a version): what its targets serve, as the rollouts recorded it —
# the reconciler compares the champion alias with it (one registry call per model) — and the audit
# trail of every change of the served version.
MODEL_SERVED_TAG = "serving.version"
MODEL_AUDIT_TAG = "serving.audit"


def model_tags(tracking_uri: str, name: str) -> dict[str, str]:
    return dict(client(tracking_uri).get_registered_model(name).tags or {})


def _json_list(text: str | None) -> list:
    try:
        value = json.loads(text or "[]")
    except json.JSONDecodeError:
        return []
    return value if isinstance(value, list) else []


def _bounded_append(history: list, event: dict) -> str:
    """``history`` + ``event`` (with a UTC ``at``) as JSON, oldest events dropped to fit a tag value."""
    from datetime import datetime, timezone

    history = [*history, {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **event}]
    while len(history) > 1 and len(json.dumps(history)) > SERVING_HISTORY_MAX_CHARS:
        history.pop(0)
    return json.dumps(history)


def served_version(tracking_uri: str, name: str, tags: dict | None = None) -> int | None:
    """The version the model's targets serve, as the last rollout recorded it (None: never served);
    ``tags``: the model's tags when the caller has them."""
    value = (model_tags(tracking_uri, name) if tags is None else tags).get(MODEL_SERVED_TAG)
    return int(value) if value not in (None, "") else None


def audit_trail(tracking_uri: str, name: str) -> list[dict]:
    """Every recorded change of the model's served version, oldest first."""
    return _json_list(model_tags(tracking_uri, name).get(MODEL_AUDIT_TAG))


CHAMPION_WEBHOOK_EVENTS = ("model_version_alias.created", "model_version_alias.deleted")


def ensure_webhook(tracking_uri: str, name: str, url: str, secret: str,
                   events: tuple = CHAMPION_WEBHOOK_EVENTS) -> str:
    """MLflow's webhook ``name`` delivering ``events`` to ``url``, signed with ``secret``: created,
    or updated to these values (a secret cannot be read back, so it is always set). Returns its id."""
    mlf = client(tracking_uri)
    token, found = None, None
    while found is None:
        page = mlf.list_webhooks(max_results=100, page_token=token)
        found = next((w for w in page if w.name == name), None)
        token = page.token
        if not token:
            break
    if found is None:
        return mlf.create_webhook(name=name, url=url, events=list(events), secret=secret).webhook_id
    mlf.update_webhook(found.webhook_id, url=url, events=list(events), secret=secret, status="ACTIVE")
    return found.webhook_id


def record_served_change(tracking_uri: str, name: str, event: dict, tags: dict | None = None) -> None:
    """Append ``event`` (event, from, to, strategy, run, reason) to the model's audit trail; when it
    changes what is served (``promoted``), the model's ``serving.version`` follows first. ``tags``:
    the model's tags when the caller has them."""
    mlf = client(tracking_uri)
    tags = model_tags(tracking_uri, name) if tags is None else tags
    if event["event"] == "promoted":
        mlf.set_registered_model_tag(name, MODEL_SERVED_TAG, str(event["to"]))
    mlf.set_registered_model_tag(name, MODEL_AUDIT_TAG,
                                 _bounded_append(_json_list(tags.get(MODEL_AUDIT_TAG)), event))


def record_rollout(tracking_uri: str, name: str, version: int, result: dict, audit: dict | None = None) -> dict:
    """MLflow as the source of truth after a rollout: tags on the version (serving version,
    endpoints, strategy, outcome, reason) and the aliases. Promoted: ``champion`` → version (the
    old champion becomes ``previous``). Rolled back: ``challenger`` is dropped from it and
    ``champion`` stays where it was (a rollback restores the serving state from before, and a
    version becomes champion only when promoted; a champion failing a re-check stays champion,
    the failure is in its ``serving.*`` tags). Tags and aliases are idempotent; each call also
    appends the outcome to the version's ``serving.history`` (and "superseded" to the old
    champion's), which the model card shows.

    ``audit`` (``reason``: why the rollout ran — ``rollout`` by default, ``reconcile`` for an alias
    moved in the registry; ``run``: the run that served it) goes with the change into the model's
    audit trail (:func:`record_served_change`): from → to, before the aliases move, so that the
    reconciler, which compares ``champion`` with the served version, never sees a DAG's own
    promotion as a difference."""
    audit = {"reason": "rollout", "run": None, **(audit or {})}
    promoted = result["outcome"] == "promoted"
    endpoints = ",".join(result["endpoints"] or result.get("rolled_back") or [])
    champion = alias_version(tracking_uri, name, CHAMPION)
    champion_v = int(champion.version) if champion is not None else None
    tags = model_tags(tracking_uri, name)
    served_before = served_version(tracking_uri, name, tags)
    if served_before is None and champion_v != version:  # recorded before the audit trail: the champion
        served_before = champion_v
    set_version_tags(tracking_uri, name, version, {
        "serving.version": version, "serving.strategy": result["strategy"], "serving.outcome": result["outcome"],
        "serving.endpoints": endpoints, "serving.reason": (result.get("reason") or "")[:4000]})
    append_serving_history(tracking_uri, name, version, {
        "event": result["outcome"], "strategy": result["strategy"], "endpoints": endpoints,
        "detail": (result.get("reason") or "")[:300], "reason": audit["reason"], "run": audit["run"]})
    record_served_change(tracking_uri, name, {
        "event": result["outcome"], "from": version if not promoted else served_before,
        "to": version if promoted else served_before, "strategy": result["strategy"],
        "run": audit["run"], "reason": audit["reason"], "detail": (result.get("reason") or "")[:300]}, tags)
    if promoted:
        if champion_v is not None and champion_v != version:
            set_alias(tracking_uri, name, PREVIOUS, champion_v)
            append_serving_history(tracking_uri, name, champion_v, {
                "event": "superseded", "strategy": result["strategy"], "endpoints": endpoints,
                "detail": f"version {version} promoted; this version is now '{PREVIOUS}'"})
        set_alias(tracking_uri, name, CHAMPION, version)
        champion_v = version
    else:  # serving is back to its state before the rollout, and champion was not moved for it
        challenger = alias_version(tracking_uri, name, CHALLENGER)
        if challenger is not None and int(challenger.version) == version:
            delete_alias(tracking_uri, name, CHALLENGER)
    previous = alias_version(tracking_uri, name, PREVIOUS)
    return {"champion": champion_v, "previous": int(previous.version) if previous is not None else None}
