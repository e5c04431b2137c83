"""The model card step (``tf_offline_retrain`` after the rollout, ``tf_optimize_export`` after the
report): gather what MLflow recorded about a registered version, build its card with
:mod:`tfmlops.model_card`, and attach it to the version.

What it reads: the version (tags — lineage, test metrics, ``serving.*``, ``serving.history``,
``online.parent_version`` —, aliases, description), its run (tags ``dataset_uri`` /
``dataset_fingerprint`` / ``gate`` / ``gate_reason`` / ``gate.champion_version``, ``data.*``
params, ``test_*`` or ``holdout_*`` metrics) and two run artifacts when present:
``evaluation/confusion_matrix.json``, ``formats/report/report.json`` (the last optimize run's
verified formats and variants) and ``mobile/<variant>/smoke.json`` (the mobile bundles).

What it writes: ``model_card/`` on the version's run (``model_card.md``, ``model_card.html``,
``model_card.json``), the version tag ``model_card`` (the HTML's ``runs:/`` URI) and a line in the
version's description linking to it. Re-running it rewrites the same files: the card always shows
what is recorded now.
"""

from __future__ import annotations

import json
import logging
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from tfmlops import model_card, registry

__all__ = ["CARD_ARTIFACT", "write_model_card"]

log = logging.getLogger(__name__)

CARD_ARTIFACT = "model_card"
CARD_LINE_PREFIX = "Model card:"
METRIC_KEYS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")


def _json_artifact(tracking_uri: str, run_id: str, path: str, tmp: Path):
    """A JSON artifact of the run, or None when the run has none at ``path``."""
    folder, _, name = path.rpartition("/")
    if name not in {Path(e.path).name for e in registry.client(tracking_uri).list_artifacts(run_id, folder)}:
        return None
    local = registry.download(tracking_uri, f"runs:/{run_id}/{path}", tmp)
    return json.loads(Path(local).read_text())


def _metrics(run_metrics: dict, version_tags: dict) -> dict:
    """The test-split metrics (offline retrain), else the holdout ones (online update), with the split named."""
    for split, prefix in (("test", "test_"), ("holdout", "holdout_")):
        found = {k: float(run_metrics[prefix + k]) for k in METRIC_KEYS if prefix + k in run_metrics}
        if not found:
            found = {k: float(version_tags[prefix + k]) for k in METRIC_KEYS if prefix + k in version_tags}
        if found:
            return {**found, "split": split}
    return {}


def _parent(run_tags: dict, version_tags: dict) -> tuple[str | None, str | None]:
    if version_tags.get("online.parent_version"):
        return version_tags["online.parent_version"], "the champion this online update fine-tuned"
    if run_tags.get("gate.champion_version"):
        return run_tags["gate.champion_version"], "the champion the validation gate compared it with"
    if run_tags.get("gate"):
        return None, "none: there was no champion when it was gated"
    return None, None


def _aliases(tracking_uri: str, model_name: str, version: int) -> list[str]:
    """The registered model's aliases pointing at ``version`` (a ModelVersion fetched by alias does
    not always list them)."""
    aliases = registry.client(tracking_uri).get_registered_model(model_name).aliases or {}
    return sorted(alias for alias, v in aliases.items() if int(v) == version)


def gather_facts(tracking_uri: str, model_name: str, version_or_alias, tmp: Path) -> dict:
    """Everything the card shows, read from MLflow (see the module docstring)."""
    mv = registry.get_version(tracking_uri, model_name, version_or_alias)
    run = registry.client(tracking_uri).get_run(mv.run_id)
    run_tags, params, run_metrics, tags = run.data.tags, run.data.params, run.data.metrics, dict(mv.tags)
    matrix = _json_artifact(tracking_uri, mv.run_id, "evaluation/confusion_matrix.json", tmp / "matrix")
    report = _json_artifact(tracking_uri, mv.run_id, "formats/report/report.json", tmp / "report") or {}
    mobile = [_json_artifact(tracking_uri, mv.run_id, f"{entry.path}/smoke.json", tmp / "mobile" / entry.path)
              for entry in registry.client(tracking_uri).list_artifacts(mv.run_id, "mobile") if entry.is_dir]
    parent, relation = _parent(run_tags, tags)
    try:
        history = json.loads(tags.get(registry.SERVING_HISTORY_TAG, "[]"))
    except json.JSONDecodeError:
        history = []
    description = "\n".join(line for line in (mv.description or "").splitlines()
                            if not line.startswith(CARD_LINE_PREFIX)).strip()
    return {
        "model_name": model_name, "version": int(mv.version), "run_id": mv.run_id,
        "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).isoformat(timespec="seconds"),
        "description": description, "aliases": _aliases(tracking_uri, model_name, int(mv.version)),
        "data": {"uri": run_tags.get("dataset_uri"),
                 "fingerprint": run_tags.get("dataset_fingerprint") or tags.get("dataset_fingerprint"),
                 "train_rows": int(params["data.train_rows"]) if "data.train_rows" in params else None,
                 "test_rows": int(params["data.test_rows"]) if "data.test_rows" in params else None,
                 "sample_fraction": params.get("data.sample_fraction")},
        "lineage": {"dag_id": tags.get("airflow.dag_id") or run_tags.get("airflow.dag_id"),
                    "dag_run_id": tags.get("airflow.run_id") or run_tags.get("airflow.run_id"),
                    "task_id": tags.get("airflow.task_id"), "parent_version": parent, "parent_relation": relation,
                    "partitions": tags.get("online.partitions")},
        "metrics": _metrics(run_metrics, tags),
        "confusion_matrix": matrix,
        "gate": {"decision": run_tags.get("gate"), "reason": run_tags.get("gate_reason")},
        "formats": report.get("rows") or [],
        "variants": report.get("variants") or [],
        "mobile": [m for m in mobile if m],
        "serving": {"history": history,
                    "current": {k: v for k, v in tags.items() if k.startswith("serving.")
                                and k != registry.SERVING_HISTORY_TAG}},
    }


def write_model_card(tracking_uri: str, model_name: str, version_or_alias, ui_url: str | None = None) -> dict:
    """Build the card of a registered version and attach it (see the module docstring). ``ui_url``
    (the MLflow UI's base URL; default: the tracking URI when it is http(s)) adds a clickable link
    to the run's artifacts in the description. Raises LookupError when the version does not exist."""
    if ui_url is None and tracking_uri.startswith(("http://", "https://")):
        ui_url = tracking_uri
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        facts = gather_facts(tracking_uri, model_name, version_or_alias, tmp)
        card = model_card.build(facts)
        folder = tmp / CARD_ARTIFACT
        folder.mkdir()
        (folder / "model_card.md").write_text(model_card.markdown(card))
        (folder / "model_card.html").write_text(model_card.html(card))
        (folder / "model_card.json").write_text(json.dumps(card, indent=2, default=str))
        uri = registry.log_files(tracking_uri, facts["run_id"], folder, CARD_ARTIFACT)
    version = facts["version"]
    html_uri = f"{uri}/model_card.html"
    link = f"{CARD_LINE_PREFIX} `{html_uri}` (also `model_card.md`)"
    if ui_url:
        experiment = registry.client(tracking_uri).get_run(facts["run_id"]).info.experiment_id
        link += f" — [open in MLflow]({ui_url.rstrip('/')}/#/experiments/{experiment}/runs/{facts['run_id']}/artifacts)"
    registry.set_version_tags(tracking_uri, model_name, version, {"model_card": html_uri})
    registry.set_version_description(tracking_uri, model_name, version,
                                     "\n\n".join(p for p in (facts["description"], link) if p))
    summary = {"model_name": model_name, "version": version, "card_uri": html_uri,
               "sections": list(model_card.SECTIONS), "verified_formats": len(card["formats"]["verified"]),
               "serving_events": len(card["serving"]["history"]), "per_class": len(card["per_class"])}
    log.info("model card: %s", summary)
    return summary
