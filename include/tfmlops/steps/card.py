"""The model card step (``tf_offline_retrain`` after the rollout, ``tf_optimize_export`` after the
report): gather what MLflow recorded about a registered version, build its card with
:mod:`tfmlops.model_card`, and attach it to the version.

What it reads: the version (tags — its model spec ``model.*``, lineage, test metrics,
``serving.*``, ``serving.history``, ``online.parent_version`` —, aliases, description), its run
(the spec's ``model.*`` tags when the version has none, ``dataset_uri`` / ``dataset_fingerprint``
/ ``gate`` / ``gate_reason`` / ``gate.champion_version``, ``data.*`` params, every ``test_*`` or
``holdout_*`` metric) and run artifacts when present: ``evaluation/confusion_matrix.json``
(classifiers), ``evaluation/residuals.json`` (regressors: the per-slice errors), the PNGs under
``plots/`` (embedded in the HTML), ``formats/report/report.json`` (the last optimize run's formats
— verified, not applicable, failed — and variants) and ``mobile/<variant>/smoke.json`` (the
mobile bundles). A version without a spec (registered before specs) is read as the MNIST MLP.
The intended use and limitations are the model's: its module's optional ``MODEL_CARD`` dict
(``purpose``, ``users``, ``out_of_scope``, ``limitations``), imported here; without one (or when
the module does not import) the card says the module declares none.

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

from tfmlops import model_card, modelspec, registry

__all__ = ["CARD_ARTIFACT", "write_model_card"]

log = logging.getLogger(__name__)

CARD_ARTIFACT = "model_card"
CARD_LINE_PREFIX = "Model card:"
SPLITS = (("test", "test_"), ("holdout", "holdout_"))
PLOTS_FOLDER = "plots"
EVALUATION_FOLDER = "evaluation"
# titles of the plots the runs log (registry.log_history / log_evaluation_plots), evaluation first
PLOT_TITLES = {"confusion_matrix": "Confusion matrix (test split)", "roc_curve": "ROC curve (test split)",
               "residuals": "Residuals (test split)", "training_curves": "Training curves"}
MAX_EMBEDDED_BYTES = 2 * 1024 * 1024
MODEL_CARD_NAME = "MODEL_CARD"


def _json_artifact(tracking_uri: str, run_id: str, path: str, tmp: Path):
    """A JSON artifact of the run, or None when the run has none at ``path``."""
    folder, _, name = path.rpartition("/")
    if name not in {Path(e.path).name for e in registry.client(tracking_uri).list_artifacts(run_id, folder)}:
        return None
    local = registry.download(tracking_uri, f"runs:/{run_id}/{path}", tmp)
    return json.loads(Path(local).read_text())


def _metrics(run_metrics: dict, version_tags: dict) -> dict:
    """Every metric the run logged for the test split (offline retrain), else for the holdout
    (online update), else the version's ``test_*`` tags; without the prefix, the split named."""
    def with_prefix(values: dict, prefix: str) -> dict:
        found = {}
        for key, value in values.items():
            if key.startswith(prefix):
                try:
                    found[key[len(prefix):]] = float(value)
                except (TypeError, ValueError):
                    continue
        return found

    for source in (run_metrics, version_tags):
        for split, prefix in SPLITS:
            found = with_prefix(source, prefix)
            if found:
                return {**found, "split": split}
    return {}


def _spec(run_tags: dict, version_tags: dict) -> tuple[modelspec.ModelSpec | None, str]:
    """The version's model spec (its tags, else its run's) and where it was read."""
    spec = modelspec.ModelSpec.from_tags(version_tags)
    if spec is not None:
        return spec, "the version's model.* tags"
    spec = modelspec.ModelSpec.from_tags(run_tags)
    if spec is not None:
        return spec, "its run's model.* tags (the version carries none)"
    try:
        spec = modelspec.read_spec(modelspec.DEFAULT_MODULE)
    except modelspec.ModelModuleError as exc:
        return None, f"none recorded, and the default module does not load here: {exc}"
    # the source hash is today's, not the one it was trained with: not shown
    spec = modelspec.ModelSpec(**{**spec.__dict__, "source_sha256": ""})
    return spec, (f"none recorded (registered before model specs): assumed to be {modelspec.DEFAULT_MODULE}, "
                  "the model of every version before specs")


def _model_facts(spec: modelspec.ModelSpec | None, spec_source: str, run_tags: dict) -> dict:
    if spec is None:
        return {"spec_source": spec_source}
    d = spec.to_dict()
    changed = run_tags.get("model.module_changed")
    if not changed and spec.source_sha256:
        changed = modelspec.module_source_changed(spec)
    return {"module": spec.module, "task": spec.task, "inputs": d["inputs"], "label": spec.label,
            "class_names": list(spec.class_names), "source_sha256": spec.source_sha256 or None,
            "spec_source": spec_source, "module_changed": changed}


def declared_card(module_name: str | None) -> tuple[dict | None, list[str] | None, str]:
    """The model module's ``MODEL_CARD``: (intended use, limitations, where they come from). None
    for what it does not declare (the card shows a generic text by task)."""
    if not module_name:
        return None, None, "generic: no model module recorded"
    try:
        module = modelspec.import_module(module_name)
    except modelspec.ModelModuleError as exc:
        return None, None, f"generic: the model module does not import here ({exc})"
    declared = getattr(module, MODEL_CARD_NAME, None)
    if declared is None:
        return None, None, f"generic: {module_name} declares no {MODEL_CARD_NAME}"
    known = (*model_card.INTENDED_USE_KEYS, "limitations")
    if not isinstance(declared, dict) or set(declared) - set(known):
        return None, None, (f"generic: {module_name}.{MODEL_CARD_NAME} is ignored: it must be a dict with keys "
                            f"{list(known)}")
    intended = {k: declared[k] for k in model_card.INTENDED_USE_KEYS if isinstance(declared.get(k), str)
                and declared[k].strip()}
    limitations = declared.get("limitations")
    if isinstance(limitations, str):
        limitations = [limitations]
    if not isinstance(limitations, (list, tuple)) or not all(isinstance(x, str) for x in limitations):
        limitations = None
    absent = [k for k in known if k not in intended and not (k == "limitations" and limitations)]
    where = f"{module_name}.{MODEL_CARD_NAME}" + (f" (generic text for what it does not declare: "
                                                  f"{', '.join(absent)})" if absent else "")
    return intended or None, list(limitations) if limitations else None, where


def _plots(tracking_uri: str, run_id: str) -> list[dict]:
    """The run's PNG plots (``plots/``) with the data logged next to them (``evaluation/``), as ``runs:/`` URIs."""
    mlf = registry.client(tracking_uri)
    images = sorted(Path(e.path).name for e in mlf.list_artifacts(run_id, PLOTS_FOLDER)
                    if not e.is_dir and e.path.endswith(".png"))
    data = {Path(e.path).name for e in mlf.list_artifacts(run_id, EVALUATION_FOLDER) if not e.is_dir}
    order = list(PLOT_TITLES)
    images.sort(key=lambda n: (order.index(n[:-4]) if n[:-4] in order else len(order), n))
    return [{"name": name[:-4], "title": PLOT_TITLES.get(name[:-4], name[:-4].replace("_", " ")),
             "image": f"runs:/{run_id}/{PLOTS_FOLDER}/{name}",
             "data": f"runs:/{run_id}/{EVALUATION_FOLDER}/{name[:-4]}.json" if f"{name[:-4]}.json" in data else None}
            for name in images]


def plot_images(tracking_uri: str, plots: list[dict], tmp: Path) -> dict[str, bytes]:
    """The PNG bytes of each plot (the HTML embeds them), skipping any too large or unreadable."""
    images = {}
    for plot in plots:
        try:
            local = registry.download(tracking_uri, plot["image"], tmp / "plots" / plot["name"])
            content = Path(local).read_bytes()
        except Exception as exc:  # noqa: BLE001 — a plot the card cannot embed stays a link
            log.warning("model card: plot %s not embedded: %s", plot["image"], exc)
            continue
        if content[:8] == b"\x89PNG\r\n\x1a\n" and len(content) <= MAX_EMBEDDED_BYTES:
            images[plot["image"]] = content
    return images


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
    spec, spec_source = _spec(run_tags, tags)
    intended, limitations, declared = declared_card(spec.module if spec else None)
    task = spec.task if spec else None
    matrix = _json_artifact(tracking_uri, mv.run_id, "evaluation/confusion_matrix.json", tmp / "matrix") \
        if task != "regression" else None
    residuals = _json_artifact(tracking_uri, mv.run_id, "evaluation/residuals.json", tmp / "residuals") \
        if task == "regression" else None
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
        "model": _model_facts(spec, spec_source, run_tags),
        "intended_use": intended, "limitations": limitations, "declared": declared,
        "data": {"uri": run_tags.get("dataset_uri"),
                 "fingerprint": run_tags.get("dataset_fingerprint") or tags.get("dataset_fingerprint"),
                 "train_rows": int(params["data.train_rows"]) if "data.train_rows" in params else None,
                 "test_rows": int(params["data.test_rows"]) if "data.test_rows" in params else None,
                 "sample_fraction": params.get("data.sample_fraction")},
        "lineage": {"dag_id": tags.get("airflow.dag_id") or run_tags.get("airflow.dag_id"),
                    "dag_run_id": tags.get("airflow.run_id") or run_tags.get("airflow.run_id"),
                    "task_id": tags.get("airflow.task_id"), "parent_version": parent, "parent_relation": relation,
                    "partitions": tags.get("online.partitions"),
                    "search_run": tags.get("search.parent_run_id") or run_tags.get("search.parent_run_id"),
                    "search_best_trial": tags.get("search.best_trial") or run_tags.get("search.best_trial")},
        "metrics": _metrics(run_metrics, tags),
        "confusion_matrix": matrix,
        "residuals": residuals if isinstance(residuals, dict) else None,
        "plots": _plots(tracking_uri, mv.run_id),
        "gate": {"decision": run_tags.get("gate"), "reason": run_tags.get("gate_reason")},
        "formats": report.get("rows") or [],
        "variants": report.get("variants") or [],
        "mobile": [m for m in mobile if m],
        "serving": {"history": history,
                    "current": {k: v for k, v in tags.items() if k.startswith("serving.")
                                and k != registry.SERVING_HISTORY_TAG},
                    # the model's audit trail: the changes of its served version to or from this one
                    "audit": [e for e in registry.audit_trail(tracking_uri, model_name)
                              if int(mv.version) in (e.get("from"), e.get("to"))]},
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
        (folder / "model_card.html").write_text(model_card.html(card, plot_images(tracking_uri, card["plots"], tmp)))
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
    summary = {"model_name": model_name, "version": version, "card_uri": html_uri, "task": card["model"]["task"],
               "sections": list(model_card.SECTIONS), "verified_formats": len(card["formats"]["verified"]),
               "not_applicable_formats": len(card["formats"]["not_applicable"]),
               "serving_events": len(card["serving"]["history"]), "per_class": len(card["per_class"]),
               "per_slice": len(card["per_slice"]), "plots": len(card["plots"]), "declared": card["declared"]}
    log.info("model card: %s", summary)
    return summary
