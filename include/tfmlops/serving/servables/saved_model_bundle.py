"""One loaded model version, like TF Serving's SavedModelBundle: a SavedModel's MetaGraphDef
(tagged ``--saved_model_tags``, default "serve") in its own TF graph + session, fed and fetched
by the tensor names listed in its SignatureDefs, loaded as
``tensorflow_serving/servables/tensorflow/saved_model_bundle_factory.cc`` does -- or, with
``--prefer_tflite_model`` and a ``model.tflite`` in the version directory, a TFLite model
(:mod:`.tflite_session`) -- with the per-API entry points of ``saved_model_servable.cc``
(Predict, Classify, Regress, MultiInference: :mod:`.predict`, :mod:`.classifier`,
:mod:`.regressor`, :mod:`.multi_inference`; warmup replay: :mod:`.warmup`).

Running through a ``tf.compat.v1.Session`` rather than ``tf.saved_model.load`` keeps the exact
``SignatureDef`` protos for the metadata API, makes TensorFlow raise the same runtime errors
TF Serving reports and honours ``RunOptions.timeout_in_ms`` (REST ``--rest_api_timeout_in_ms``,
gRPC deadlines). Runs go straight to the C++ ``Session::Run`` (``TF_SessionRun``), as TF
Serving's do: no Python-side check of the fed shapes against the placeholders' static shapes
(``{"instances": [2.0, 3.0]}`` feeds a ``[2]`` tensor to an ``x`` of shape ``[-1, 1]``, and
the graph's ops decide). Runners are cached per (feeds, fetches) so the hot path does no graph
lookups.

Addition (not in TF Serving): while a version loads, every signature's full-predict runner is built and run once
on zeros (:meth:`Servable.prepare_callables`), on top of the warmup file TF Serving replays.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass

import numpy as np

from .. import tensors as T
from ..errors import failed_precondition, from_tf_exception
from .classifier import run_classify
from .multi_inference import run_multi_inference
from .predict import run_predict
from .regressor import run_regress
from .tflite_session import TFLITE_MODEL_FILENAME, TfLiteSession
from .util import DEFAULT_SIGNATURE
from .warmup import run_saved_model_warmup

log = logging.getLogger("tfmlops.serving")


@dataclass(frozen=True)
class TensorSpecInfo:
    alias: str
    tensor_name: str
    dtype: int
    shape: tuple | None  # None = unknown rank; -1 = unknown dim


@dataclass
class SignatureInfo:
    name: str
    proto: object  # tensorflow.SignatureDef
    method_name: str
    inputs: dict  # alias -> TensorSpecInfo
    outputs: dict  # alias -> TensorSpecInfo
    input_keys: frozenset
    sorted_input_aliases: tuple


def _spec(alias, info) -> TensorSpecInfo:
    if info.tensor_shape.unknown_rank:
        shape = None
    else:
        shape = tuple(int(d.size) for d in info.tensor_shape.dim)
    return TensorSpecInfo(alias, info.name, int(info.dtype), shape)


class SavedModelSession:
    """A SavedModel's MetaGraphDef loaded into its own graph and ``tf.compat.v1.Session``."""

    def __init__(self, path: str, tags=("serve",)):
        import tensorflow as tf
        from tensorflow.python.client import pywrap_tf_session

        tf.get_logger().setLevel("ERROR")  # silence the v1 loader deprecation notice
        self._tf_session = pywrap_tf_session
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph)
        try:
            with self._graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(self._session, list(tags), path)
        except BaseException:
            self._session.close()
            raise
        self.signature_defs = dict(meta_graph.signature_def)
        self._run_options: dict = {}

    def _options(self, timeout_ms) -> bytes | None:
        if not timeout_ms or timeout_ms <= 0:
            return None
        opt = self._run_options.get(timeout_ms)
        if opt is None:
            from tensorflow.core.protobuf import config_pb2

            opt = config_pb2.RunOptions(timeout_in_ms=int(timeout_ms)).SerializeToString()
            if len(self._run_options) < 64:
                self._run_options[timeout_ms] = opt
        return opt

    def make_runner(self, feeds: tuple, fetches: tuple):
        """``Session::Run`` for these tensor names: ``run(values, timeout_ms=None) -> [arrays]``."""
        g = self._graph
        feed_outputs = [g.get_tensor_by_name(n)._as_tf_output() for n in feeds]
        fetch_outputs = [g.get_tensor_by_name(n)._as_tf_output() for n in fetches]
        session, tf_session = self._session, self._tf_session

        def run(values: list, timeout_ms=None) -> list:
            options = self._options(timeout_ms)
            buf = tf_session.TF_NewBufferFromString(options) if options else None
            try:
                return session._call_tf_sessionrun(buf, dict(zip(feed_outputs, values)),
                                                   fetch_outputs, [], None)
            finally:
                if buf is not None:
                    tf_session.TF_DeleteBuffer(buf)

        return run

    def close(self) -> None:
        self._session.close()


def load_session(path: str, tags=("serve",), prefer_tflite: bool = False, num_tflite_interpreters=None):
    """SavedModelBundleFactory: the TFLite model when preferred and present, else the SavedModel."""
    if prefer_tflite and os.path.isfile(os.path.join(path, TFLITE_MODEL_FILENAME)):
        return TfLiteSession(path, num_tflite_interpreters)
    return SavedModelSession(path, tags)


class Servable:
    """A loaded model version (SavedModel or, with ``prefer_tflite``, TFLite)."""

    def __init__(self, name: str, version: int, path: str, batcher=None, tags=("serve",), *,
                 prefer_tflite: bool = False, num_tflite_interpreters: int | None = None,
                 enable_warmup: bool = True, warmup_iterations: int = 1):
        self.name = name
        self.version = version
        self.path = path
        self._session = load_session(path, tags, prefer_tflite, num_tflite_interpreters)
        self.signature_defs = self._session.signature_defs
        self.signatures: dict[str, SignatureInfo] = {}
        for sig_name, sig in self.signature_defs.items():
            ins = {a: _spec(a, i) for a, i in sig.inputs.items()}
            outs = {a: _spec(a, i) for a, i in sig.outputs.items()}
            self.signatures[sig_name] = SignatureInfo(
                sig_name, sig, sig.method_name, ins, outs, frozenset(ins), tuple(sorted(ins)))
        self.enable_warmup = enable_warmup
        self.warmup_iterations = max(1, warmup_iterations)
        self._callables: dict = {}
        self._callables_lock = threading.Lock()
        self._batcher = batcher
        self._inflight = 0
        self._inflight_cv = threading.Condition()
        self._closed = False

    # ---------------------------------------------------------------- lifecycle
    def acquire(self) -> bool:
        with self._inflight_cv:
            if self._closed:
                return False
            self._inflight += 1
            return True

    def release(self) -> None:
        with self._inflight_cv:
            self._inflight -= 1
            if self._inflight == 0:
                self._inflight_cv.notify_all()

    def close(self, wait_s: float = 60.0) -> None:
        """Wait for in-flight requests (like TF Serving's handle ref-counting), then free."""
        with self._inflight_cv:
            self._closed = True
            self._inflight_cv.wait_for(lambda: self._inflight == 0, timeout=wait_s)
        if self._batcher is not None:
            self._batcher.drop_servable(self)
        self._callables.clear()
        self._session.close()

    # ---------------------------------------------------------------- signatures
    def signature(self, name: str) -> SignatureInfo:
        sig = self.signatures.get(name or DEFAULT_SIGNATURE)
        if sig is None:
            raise failed_precondition(f'Serving signature key "{name or DEFAULT_SIGNATURE}" not found.')
        return sig

    def signature_def_map(self):
        from tensorflow_serving.apis import get_model_metadata_pb2

        m = get_model_metadata_pb2.SignatureDefMap()
        for k, v in self.signature_defs.items():
            m.signature_def[k].CopyFrom(v)
        return m

    # ---------------------------------------------------------------- session runs
    def _callable(self, feeds: tuple, fetches: tuple):
        key = (feeds, fetches)
        fn = self._callables.get(key)
        if fn is None:
            with self._callables_lock:
                fn = self._callables.get(key)
                if fn is None:
                    fn = self._callables[key] = self._session.make_runner(feeds, fetches)
        return fn

    def session_run(self, feeds: tuple, values: list, fetches: tuple, timeout_ms=None) -> list:
        """Run the session directly (no batching)."""
        try:
            return self._callable(feeds, fetches)(values, timeout_ms)
        except Exception as exc:  # noqa: BLE001 - tf.errors.OpError, KeyError of an unknown tensor -> a Status
            raise from_tf_exception(exc) from None

    def run(self, feeds: tuple, values: list, fetches: tuple, timeout_ms=None) -> list:
        if self._batcher is not None:
            return self._batcher.run(self, feeds, values, fetches, timeout_ms)
        return self.session_run(feeds, values, fetches, timeout_ms)

    # ---------------------------------------------------------------- APIs (saved_model_servable.cc)
    def predict(self, signature_name: str, inputs: dict, output_filter=(), timeout_ms=None):
        """Returns (resolved signature name, {alias: ndarray}); see :mod:`.predict`."""
        return run_predict(self, signature_name, inputs, output_filter, timeout_ms)

    def classify(self, signature_name: str, input_proto, timeout_ms=None):
        """Returns (signature name, list of [(label, score), ...] per example, has classes, has
        scores); see :mod:`.classifier`."""
        return run_classify(self, signature_name, input_proto, timeout_ms)

    def regress(self, signature_name: str, input_proto, timeout_ms=None):
        """Returns (signature name, one float per example); see :mod:`.regressor`."""
        return run_regress(self, signature_name, input_proto, timeout_ms)

    def multi_inference(self, request, timeout_ms=None) -> list:
        """Returns one (task, signature, result) per task; see :mod:`.multi_inference`."""
        return run_multi_inference(self, request, timeout_ms)

    # ---------------------------------------------------------------- warmup
    def prepare_callables(self) -> int:
        """Build the session runner of every signature's full predict (all inputs → all
        outputs) and run it once on zeros (one row; numeric inputs of known rank only) while the
        version loads: building a callable prunes and optimizes the graph and its first run
        creates the kernels, tens of ms that would otherwise stall the first requests to reach a
        newly AVAILABLE version. Signatures this cannot feed are left to the warmup file."""
        n = 0
        for name in self.signature_defs:
            try:
                sig = self.signature(name)
                specs = [sig.inputs[a] for a in sig.sorted_input_aliases]
                fn = self._callable(tuple(spec.tensor_name for spec in specs),
                                    tuple(sig.outputs[a].tensor_name for a in sorted(sig.outputs)))
                dtypes = [T.NP_OF_DT.get(spec.dtype) for spec in specs]
                if all(spec.shape is not None for spec in specs) and all(
                        dt is not None and np.dtype(dt).kind in "biuf" for dt in dtypes):
                    fn([np.zeros([1 if d < 0 else d for d in spec.shape], dt) for spec, dt in zip(specs, dtypes)])
                n += 1
            except Exception as exc:  # noqa: BLE001 - a request to this signature reports the error itself
                log.debug("no callable prepared for signature %s of %s: %s", name, self.path, exc)
        return n

    def warmup(self) -> int:
        """Prepare the runners, then replay assets.extra/tf_serving_warmup_requests
        (:mod:`.warmup`); returns the number of warmup records (0 with ``--enable_model_warmup=false``)."""
        if not self.enable_warmup:
            return 0
        self.prepare_callables()
        return run_saved_model_warmup(self, self.warmup_iterations)


def servable_factory(*, tags=("serve",), prefer_tflite: bool = False, num_tflite_interpreters: int | None = None,
                     enable_warmup: bool = True, warmup_iterations: int = 1):
    """``(name, version, path, batcher=None) -> Servable`` with the server's loading options (the
    manager's ``servable_factory``)."""
    return functools.partial(Servable, tags=tuple(tags), prefer_tflite=prefer_tflite,
                             num_tflite_interpreters=num_tflite_interpreters, enable_warmup=enable_warmup,
                             warmup_iterations=warmup_iterations)
