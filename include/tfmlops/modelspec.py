"""The model module contract (TFX's ``module_file``): a team's model is a plain Python module named
by its dotted path, read **once** here, checked, and turned into a :class:`ModelSpec` — plain data
that is recorded on the registered version and handed to every later step. No step guesses shapes,
classes or the task from arrays.

A model module needs no import from this project. Required names::

    TASK = "multiclass"                      # "multiclass" | "binary" | "regression"
    INPUTS = {"image": ("float32", [28, 28, 1]), "plan": ("string", [])}
    LABEL = "label"
    CLASS_NAMES = ["cat", "dog"]             # classification only (binary: negative, positive)
    def build_model(hparams[, sample]): ...  # a tf_keras Model, compiled or not

Optional: ``HPARAMS``, ``load_data(uri, split)``, ``train(model, train_ds, val_ds, hparams,
callbacks)``, ``GATE``, ``build_student(hparams[, sample])`` and ``build_teacher(hparams[, sample])``
(the distilled variant of ``tf_optimize_export``), ``OPTIMIZE`` (its defaults for that DAG's
fine-tuning), ``MOBILE_INPUTS`` (what an app feeds the mobile bundle), ``MODEL_CARD`` (the model
card's intended use and limitations: ``purpose``, ``users``, ``out_of_scope``, ``limitations``),
``DRIFT_STATISTICS(features)`` (per-row statistics the monitor measures drift on), ``SEARCH_SPACE``.
See the README's "Bring your own model" section.

Which modules may be named (a trigger form is a way to import code on the workers) is an
allow-list of top-level packages: ``TFMLOPS_MODEL_PACKAGES`` (comma-separated), by default the
shipped examples (``tfmlops_examples``) and ``models`` (the folder ``include/models/``).

Importing this module does not import TensorFlow; :func:`check_model` (run on a built model) does.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

TASKS = ("multiclass", "binary", "regression")
DTYPES = ("float32", "int64", "string")
DEFAULT_MODULE = "tfmlops_examples.mnist_mlp"
DEFAULT_PACKAGES = ("tfmlops_examples", "models")
PACKAGES_ENV = "TFMLOPS_MODEL_PACKAGES"
# what the platform reads from hparams whatever the module declares (TFX's FnArgs train/eval args)
PLATFORM_HPARAMS = {"epochs": 5, "batch_size": 128, "learning_rate": 1e-3, "validation_split": 0.1, "seed": 0,
                    "adapt_rows": 10000}
# gate metrics, each with its direction (True: higher is better) and the tasks it is computed for
METRICS = {
    "accuracy": (True, ("multiclass", "binary")),
    "f1_macro": (True, ("multiclass",)),
    "auc": (True, ("binary",)),
    "rmse": (False, ("regression",)),
    "mae": (False, ("regression",)),
    "r2": (True, ("regression",)),
}
DEFAULT_GATE_METRIC = {"multiclass": "accuracy", "binary": "auc", "regression": "rmse"}
# a tensor name TF accepts (op names: tf.Graph's _VALID_OP_NAME_REGEX), kept to what a REST body,
# a tf.Example feature and a SignatureDef key all take without escaping
INPUT_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
TAG_PREFIX = "model."
MAX_SOURCE_BYTES = 1024 * 1024


class ModelModuleError(ValueError):
    """A model module breaks the contract: the message names the module and the problem."""


def allowed_packages() -> tuple[str, ...]:
    listed = os.environ.get(PACKAGES_ENV)
    if listed is None:
        return DEFAULT_PACKAGES
    return tuple(p.strip() for p in listed.split(",") if p.strip())


@dataclass(frozen=True)
class ModelSpec:
    """What a model module declares, as plain data (JSON-able: XCom, registry tags, model card)."""

    module: str
    source_sha256: str
    task: str
    inputs: dict[str, tuple[str, tuple[int, ...]]]
    label: str
    class_names: list[str] = field(default_factory=list)
    hparams: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def output_name(self) -> str:
        """The one output of ``serving_default``: class probabilities or the regressed value."""
        return "outputs" if self.task == "regression" else "probabilities"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["inputs"] = {k: [d, list(s)] for k, (d, s) in self.inputs.items()}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        if isinstance(d, ModelSpec):
            return d
        if isinstance(d, str):
            d = json.loads(d)
        inputs = {k: (str(v[0]), tuple(int(x) for x in v[1])) for k, v in d["inputs"].items()}
        return cls(module=d["module"], source_sha256=d.get("source_sha256", ""), task=d["task"], inputs=inputs,
                   label=d["label"], class_names=list(d.get("class_names") or []), hparams=dict(d.get("hparams") or {}),
                   gate=dict(d.get("gate") or {}))

    def to_tags(self) -> dict[str, str]:
        """Registry tags of a version (each under MLflow's 5,000-character limit for a tag value)."""
        d = self.to_dict()
        return {f"{TAG_PREFIX}module": self.module, f"{TAG_PREFIX}module_sha256": self.source_sha256,
                f"{TAG_PREFIX}task": self.task, f"{TAG_PREFIX}inputs": json.dumps(d["inputs"]),
                f"{TAG_PREFIX}label": self.label, f"{TAG_PREFIX}class_names": json.dumps(self.class_names),
                f"{TAG_PREFIX}hparams": json.dumps(self.hparams, sort_keys=True),
                f"{TAG_PREFIX}gate": json.dumps(self.gate, sort_keys=True)}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> "ModelSpec | None":
        """The spec a registered version carries, or None for a version registered before specs."""
        if f"{TAG_PREFIX}module" not in tags:
            return None
        t = lambda key, default="": tags.get(f"{TAG_PREFIX}{key}", default)  # noqa: E731
        return cls.from_dict({"module": t("module"), "source_sha256": t("module_sha256"), "task": t("task"),
                              "inputs": json.loads(t("inputs", "{}")), "label": t("label"),
                              "class_names": json.loads(t("class_names", "[]")),
                              "hparams": json.loads(t("hparams", "{}")), "gate": json.loads(t("gate", "{}"))})


# ------------------------------------------------------------------ reading a module
def import_module(name: str) -> ModuleType:
    """Import the model module ``name`` if its top-level package is allowed (:func:`allowed_packages`)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", name):
        raise ModelModuleError(f"model module {name!r}: not a dotted Python module path (e.g. models.churn)")
    allowed = allowed_packages()
    if name.split(".")[0] not in allowed:
        raise ModelModuleError(f"model module {name!r}: its package {name.split('.')[0]!r} is not allowed; allowed "
                               f"packages: {list(allowed)} (set {PACKAGES_ENV} to add one)")
    try:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(name)
    except (ModuleNotFoundError, ValueError) as exc:
        raise ModelModuleError(f"model module {name!r}: not found on the workers (a file under include/models/ is "
                               f"'models.<file name>'; a package must be installed in the image)") from exc
    try:
        return importlib.import_module(name)
    except Exception as exc:  # the user's module may raise anything while importing
        raise ModelModuleError(f"model module {name!r}: importing it failed: {type(exc).__name__}: {exc}") from exc


def source_sha256(module: ModuleType) -> str:
    """SHA-256 of the module's source file (of its ``__init__.py`` for a package)."""
    path = getattr(module, "__file__", None)
    if not path or not os.path.isfile(path):
        return ""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(MAX_SOURCE_BYTES + 1)).hexdigest()


def _fail(module: str, problem: str):
    raise ModelModuleError(f"model module {module!r}: {problem}")


def _check_inputs(name: str, inputs) -> dict[str, tuple[str, tuple[int, ...]]]:
    if not isinstance(inputs, dict) or not inputs:
        _fail(name, "INPUTS must be a non-empty dict: input name -> (dtype, shape without the batch dimension)")
    out = {}
    for key, value in inputs.items():
        if not isinstance(key, str) or not INPUT_NAME_RE.fullmatch(key):
            _fail(name, f"input name {key!r} cannot be a tensor name: use a letter, then letters, digits or '_' "
                        "(at most 64)")
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            _fail(name, f"INPUTS[{key!r}] must be (dtype, shape), got {value!r}")
        dtype, shape = value
        if dtype not in DTYPES:
            _fail(name, f"INPUTS[{key!r}] has dtype {dtype!r}; tf.Example carries only {list(DTYPES)}")
        if not isinstance(shape, (tuple, list)) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                           for d in shape):
            _fail(name, f"INPUTS[{key!r}] has shape {shape!r}; shapes are fixed: a list of positive ints "
                        "(no batch dimension, no None), [] for a scalar")
        out[key] = (dtype, tuple(int(d) for d in shape))
    return out


def _check_gate(name: str, task: str, gate) -> dict:
    metric = DEFAULT_GATE_METRIC[task]
    defaults = {"metric": metric, "threshold": None, "tolerance": 0.0}
    if gate is None:
        return defaults
    if not isinstance(gate, dict) or set(gate) - {"metric", "threshold", "tolerance"}:
        _fail(name, f"GATE must be a dict with keys metric, threshold, tolerance; got {gate!r}")
    out = {**defaults, **gate}
    check_gate_metric(out["metric"], task, f"model module {name!r}: GATE")
    for key in ("threshold", "tolerance"):
        value = out[key]
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                  or not math.isfinite(value)):
            _fail(name, f"GATE[{key!r}] must be a finite number, got {value!r}")
    if out["tolerance"] is None or out["tolerance"] < 0:
        _fail(name, f"GATE['tolerance'] must be >= 0, got {out['tolerance']!r}")
    return out


def check_gate_metric(metric, task: str, where: str) -> str:
    if metric not in METRICS or task not in METRICS[metric][1]:
        valid = [m for m, (_, tasks) in METRICS.items() if task in tasks]
        raise ModelModuleError(f"{where}: gate metric {metric!r} is not one of {task}'s metrics {valid}")
    return metric


def read_spec(module_name: str, hyperparameters: dict | str | None = None) -> ModelSpec:
    """Import ``module_name``, check every name of the contract and merge ``hyperparameters`` (the
    form's JSON) over ``HPARAMS``; unknown keys are refused with the known ones. Raises
    :class:`ModelModuleError` naming the module and the problem."""
    module = import_module(module_name)
    name = module_name
    missing = [n for n in ("TASK", "INPUTS", "LABEL", "build_model") if not hasattr(module, n)]
    if missing:
        _fail(name, f"missing required names {missing} (the contract: TASK, INPUTS, LABEL, CLASS_NAMES for "
                    "classification, build_model)")
    task = module.TASK
    if task not in TASKS:
        _fail(name, f"TASK {task!r} is not one of {list(TASKS)}")
    inputs = _check_inputs(name, module.INPUTS)
    label = module.LABEL
    if not isinstance(label, str) or not INPUT_NAME_RE.fullmatch(label):
        _fail(name, f"LABEL {label!r} must be a column/feature name (a letter, then letters, digits or '_')")
    if label in inputs:
        _fail(name, f"LABEL {label!r} is also an input")
    class_names = getattr(module, "CLASS_NAMES", None)
    if task == "regression":
        if class_names:
            _fail(name, "CLASS_NAMES is for classification; a regression module has none")
        class_names = []
    else:
        if not isinstance(class_names, (list, tuple)) or not all(isinstance(c, str) and c for c in class_names):
            _fail(name, f"CLASS_NAMES must be a list of non-empty strings for TASK {task!r}, got {class_names!r}")
        if len(set(class_names)) != len(class_names):
            _fail(name, f"CLASS_NAMES has duplicates: {list(class_names)}")
        if task == "binary" and len(class_names) != 2:
            _fail(name, f"a binary module has exactly two CLASS_NAMES (negative, positive), got {list(class_names)}")
        if task == "multiclass" and len(class_names) < 2:
            _fail(name, f"a multiclass module needs at least two CLASS_NAMES, got {list(class_names)}")
    for fn in ("build_model", "load_data", "train", "build_student"):
        if hasattr(module, fn) and not callable(getattr(module, fn)):
            _fail(name, f"{fn} must be a function")
    module_hparams = getattr(module, "HPARAMS", {}) or {}
    if not isinstance(module_hparams, dict) or not all(isinstance(k, str) for k in module_hparams):
        _fail(name, "HPARAMS must be a dict with string keys")
    hparams = merge_hparams(name, {**PLATFORM_HPARAMS, **module_hparams}, hyperparameters)
    gate = _check_gate(name, task, getattr(module, "GATE", None))
    return ModelSpec(module=module_name, source_sha256=source_sha256(module), task=task, inputs=inputs, label=label,
                     class_names=list(class_names), hparams=hparams, gate=gate)


def json_overrides(defaults: dict, overrides: dict | str | None, what: str, owner: str, error=ValueError) -> dict:
    """``overrides`` (a dict, or its JSON; unset = none) over ``defaults``: ``error`` naming ``what``
    and their ``owner`` for text that is not a JSON object or keys that ``defaults`` does not have."""
    if overrides in (None, "", "None"):
        overrides = {}
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as exc:
            raise error(f"{what} for {owner} are not valid JSON: {exc}") from exc
    if not isinstance(overrides, dict):
        raise error(f"{what} for {owner} must be a JSON object, got {overrides!r}")
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise error(f"{what} {unknown} are not known to {owner}; known: {sorted(defaults)}")
    return {**defaults, **overrides}


def merge_hparams(module_name: str, defaults: dict, overrides: dict | str | None) -> dict:
    merged = json_overrides(defaults, overrides, "hyperparameters", f"model module {module_name!r}", ModelModuleError)
    try:
        json.dumps(merged)
    except TypeError as exc:
        raise ModelModuleError(f"HPARAMS of {module_name!r} must be JSON values: {exc}") from exc
    return merged


def resolve_gate(spec: ModelSpec, metric=None, threshold=None, tolerance=None) -> dict:
    """The gate of a run: the form's values where set, else the module's ``GATE``."""
    gate = dict(spec.gate)
    if metric not in (None, "", "None"):
        gate["metric"] = check_gate_metric(metric, spec.task, f"model module {spec.module!r}")
        if metric != spec.gate.get("metric"):  # a threshold is in the metric's own unit
            gate["threshold"] = None
    if threshold not in (None, "", "None"):
        gate["threshold"] = float(threshold)
    if tolerance not in (None, "", "None"):
        gate["tolerance"] = float(tolerance)
    gate["higher_is_better"] = METRICS[gate["metric"]][0]
    return gate


def module_source_changed(spec: ModelSpec) -> str | None:
    """A message when the module's source is not the one ``spec`` was read from (None when it is,
    or when the module cannot be imported here)."""
    try:
        current = source_sha256(import_module(spec.module))
    except ModelModuleError:
        return None
    if spec.source_sha256 and current and current != spec.source_sha256:
        return (f"model module {spec.module!r} changed since this version was trained: source SHA-256 was "
                f"{spec.source_sha256}, is now {current}")
    return None


def module_changed_tags(spec: ModelSpec) -> dict[str, str]:
    """The tag a later DAG's MLflow run gets when it works from a version whose module's source
    changed since it was trained (``model.module_changed``: the message with both hashes); else none."""
    changed = module_source_changed(spec)
    return {"model.module_changed": changed} if changed else {}


def build_model(spec: ModelSpec, module: ModuleType, sample: dict | None = None, function: str = "build_model"):
    """``module.build_model(hparams[, sample])`` (or another builder of the contract:
    ``build_student``, ``build_teacher``), then :func:`check_model`."""
    builder = getattr(module, function)
    params = list(inspect.signature(builder).parameters.values())
    try:
        if len(params) >= 2:
            model = builder(dict(spec.hparams), sample)
        else:
            model = builder(dict(spec.hparams))
    except ModelModuleError:
        raise
    except Exception as exc:  # the user's code may raise anything
        raise ModelModuleError(f"model module {spec.module!r}: {function} raised {type(exc).__name__}: {exc}") from exc
    check_model(spec, model)
    return model


def check_model(spec: ModelSpec, model) -> None:
    """The built model against the contract: a tf_keras Functional/Sequential model whose inputs are
    named as ``INPUTS`` with their shapes, and whose output fits the task."""
    import tfmlops  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
    import tf_keras

    name = spec.module
    if not isinstance(model, tf_keras.Model):
        kind = type(model).__module__ + "." + type(model).__qualname__
        if type(model).__module__.split(".")[0] == "keras":
            _fail(name, f"build_model returned a Keras 3 model ({kind}); models must be tf_keras models (import "
                        "tf_keras as keras): tfmot, the TF.js converter and multi-worker training reject Keras 3")
        _fail(name, f"build_model must return a tf_keras Model, got {kind}")
    if not model.built or not getattr(model, "inputs", None):
        _fail(name, "build_model returned a model without known inputs: give it keras.Input layers (Functional) "
                    "or an input shape (Sequential)")
    got = {}
    for t in model.inputs:
        got[t.name.split(":")[0]] = t
    if set(got) != set(spec.inputs):
        _fail(name, f"the model's inputs are named {sorted(got)}, INPUTS names {sorted(spec.inputs)} (name each "
                    "keras.Input as its INPUTS key)")
    for key, tensor in got.items():
        shape = tuple(tensor.shape[1:])
        want = spec.inputs[key][1]
        if shape != want:
            _fail(name, f"model input {key!r} has shape {list(shape)} (without batch), INPUTS says {list(want)}")
    if len(model.outputs) != 1:
        _fail(name, f"the model must have one output, it has {len(model.outputs)}")
    out_shape = tuple(model.outputs[0].shape[1:])
    if spec.task == "multiclass":
        if out_shape != (spec.num_classes,):
            _fail(name, f"a multiclass model's output must be [batch, {spec.num_classes}] (len(CLASS_NAMES)), got "
                        f"[batch, {', '.join(map(str, out_shape))}]")
    elif out_shape not in ((), (1,)):
        what = "one sigmoid unit" if spec.task == "binary" else "one value"
        _fail(name, f"a {spec.task} model's output must be {what}, [batch, 1] or [batch]; got "
                    f"[batch, {', '.join(map(str, out_shape))}]")
