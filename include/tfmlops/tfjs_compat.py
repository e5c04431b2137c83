"""The one place that imports ``tensorflowjs`` (4.22), working around its install.

tensorflowjs is installed with ``--no-deps`` (its declared ``packaging~=23.1`` conflicts with
Airflow, and every tensorflow-decision-forests release pins an older TensorFlow). Its package
``__init__`` still imports, eagerly and unconditionally:

- ``tensorflow_decision_forests`` (from ``converters.tf_saved_model_conversion_v2``), only used
  to convert TF-DF models;
- ``jax.experimental.jax2tf`` (from ``converters.jax_conversion``), only used by ``convert_jax``;
- ``tensorflow_hub`` (real, installed from requirements.txt).

Neither of the first two is needed to convert a Keras model (layers model) or a SavedModel
(graph model). :func:`import_tensorflowjs` registers empty placeholder modules under those
names for the duration of the import and then removes the placeholders again, so
TensorFlow, tf_keras or anything else in the process never sees a fake ``jax`` (several
libraries probe ``"jax" in sys.modules``). TF-DF is imported by the converter only to register
its custom ops; the placeholder is removed from ``sys.modules`` too, and any attribute use of it
raises a clear ImportError (see :class:`_Placeholder`).

Installing real jax + jaxlib also works, but costs ~355 MB and ~1.5 s on every TensorFlow import.
"""

from __future__ import annotations

import importlib
import sys
import types

import tfmlops  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

TFDF = "tensorflow_decision_forests"
JAX = ("jax", "jax.experimental", "jax.experimental.jax2tf")


class _Placeholder(types.ModuleType):
    """A module that exists only so that ``import NAME`` succeeds; any use raises ImportError."""

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ImportError(f"{self.__name__} is not installed; tensorflowjs needed {self.__name__}.{attr}. "
                          "Only Keras (layers) and SavedModel (graph) conversions are supported here.")


def import_tensorflowjs():
    """Import and return the ``tensorflowjs`` package (idempotent)."""
    if "tensorflowjs" in sys.modules:
        return sys.modules["tensorflowjs"]
    added = []
    for name in (TFDF, *JAX):
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = _Placeholder(name)
            added.append(name)
    if "jax.experimental.jax2tf" in added:  # ``from jax.experimental import jax2tf`` reads the attribute
        sys.modules["jax.experimental"].__dict__["jax2tf"] = sys.modules["jax.experimental.jax2tf"]
    try:
        import tensorflowjs
        import tensorflowjs.converters  # noqa: F401
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return tensorflowjs
