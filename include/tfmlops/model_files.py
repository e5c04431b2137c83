"""Load Keras model files without running code from them.

A model file is data, but Keras formats can carry code: a ``Lambda`` layer stores Python bytecode
(run when the model is rebuilt), a layer config may name any importable module and class, and
MLflow's Keras flavour can ship ``custom_objects.cloudpickle`` (unpickled by
``mlflow.tensorflow.load_model``, run on load) and a ``code`` directory it puts on ``sys.path``.
``tf_keras.models.load_model(..., safe_mode=True)`` refuses lambdas in ``.keras`` files only: for
``.h5`` files Keras ignores ``safe_mode``.

So every model this project loads goes through :func:`load_keras_file`, which reads the model's
architecture config first (``config.json`` inside a ``.keras`` zip, the ``model_config`` attribute
of an ``.h5`` file) and refuses it — :class:`UnsafeModelError`, naming the file and the reason —
unless every object it names comes from Keras itself (modules ``keras``/``tf_keras`` or Keras
built-in functions) and no ``Lambda`` layer is present. Only then does Keras load it (still in
safe mode). MLflow models go through :func:`load_mlflow_keras_model`, which also refuses pickled
custom objects and code directories instead of loading them.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

KERAS_MODULE_PREFIXES = ("keras", "tf_keras")
UNSAFE_CLASSES = ("Lambda",)  # stores Python bytecode
PICKLE_FILES = ("custom_objects.cloudpickle", "global_custom_objects.cloudpickle")
MAX_CONFIG_BYTES = 16 * 1024 * 1024


class UnsafeModelError(ValueError):
    """A model file that could run code when loaded (or that cannot be checked); not loaded."""


def _walk(node, where: str, problems: list[str]) -> None:
    if isinstance(node, dict):
        module, class_name = node.get("module"), node.get("class_name")
        if isinstance(class_name, str):
            if class_name in UNSAFE_CLASSES:
                problems.append(f"{where}: a {class_name} layer (Python bytecode)")
            if isinstance(module, str) and module != "builtins" and not any(
                    module == p or module.startswith(p + ".") for p in KERAS_MODULE_PREFIXES):
                problems.append(f"{where}: {class_name} from module {module!r} (not Keras)")
        for key, value in node.items():
            _walk(value, f"{where}.{key}" if where else str(key), problems)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _walk(value, f"{where}[{i}]", problems)


def check_keras_config(config: dict, source: str) -> None:
    """Raise :class:`UnsafeModelError` when the architecture config names anything but Keras objects."""
    problems: list[str] = []
    _walk(config, "", problems)
    if problems:
        raise UnsafeModelError(f"{source}: refused to load, its config could run code: " + "; ".join(problems[:5])
                               + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))


def read_keras_config(path: str | Path) -> dict:
    """The architecture config of a ``.keras`` or ``.h5`` file, without loading the model."""
    path = Path(path)
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo("config.json")
                if info.file_size > MAX_CONFIG_BYTES:
                    raise UnsafeModelError(f"{path}: config.json is {info.file_size} bytes")
                return json.loads(archive.read(info))
        if path.suffix == ".h5":
            import h5py

            with h5py.File(path, "r") as h5:
                raw = h5.attrs.get("model_config")
            if raw is None:
                raise UnsafeModelError(f"{path}: no model_config in the .h5 file (weights only?)")
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, UnsafeModelError):
            raise
        raise UnsafeModelError(f"{path}: cannot read the model config: {type(exc).__name__}: {exc}") from exc
    raise UnsafeModelError(f"{path}: only .keras and .h5 model files are loaded (got {path.suffix or 'no suffix'})")


def load_keras_file(path: str | Path, compile: bool = True):
    """Check the file's config (see the module doc), then ``tf_keras.models.load_model`` in safe mode."""
    import tfmlops  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
    import tf_keras as keras

    check_keras_config(read_keras_config(path), str(path))
    return keras.models.load_model(str(path), compile=compile, safe_mode=True)


def load_mlflow_keras_model(local_dir: str | Path):
    """A Keras model from a downloaded MLflow model directory (``MLmodel`` + ``data/``), refusing
    pickled custom objects and code directories instead of loading them."""
    import yaml

    local_dir = Path(local_dir)
    try:
        mlmodel = yaml.safe_load((local_dir / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UnsafeModelError(f"{local_dir}: not an MLflow model directory: {exc}") from exc
    flavor = (mlmodel.get("flavors") or {}).get("tensorflow") or (mlmodel.get("flavors") or {}).get("keras")
    if not isinstance(flavor, dict) or flavor.get("model_type", "keras") != "keras":
        raise UnsafeModelError(f"{local_dir}: not a Keras model of MLflow's tensorflow flavour")
    if flavor.get("code"):
        raise UnsafeModelError(f"{local_dir}: refused to load, the model ships a code directory "
                               f"({flavor['code']!r}) that MLflow would put on sys.path")
    data = local_dir / str(flavor.get("data", "data"))
    pickles = sorted(str(p.relative_to(local_dir)) for name in PICKLE_FILES for p in local_dir.rglob(name))
    if pickles:
        raise UnsafeModelError(f"{local_dir}: refused to load, the model carries pickled custom objects "
                               f"({', '.join(pickles)}): unpickling runs code from the registry")
    candidates = [data / "model.keras", data / "model.h5"]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise UnsafeModelError(f"{local_dir}: no model.keras or model.h5 under {data.name}/ "
                               "(only Keras v3 or HDF5 files are loaded, after a config check)")
    return load_keras_file(found)
