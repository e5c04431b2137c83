"""One loaded model version: a SavedModel in its own TF graph + session, like TF Serving's
SavedModelBundle (MetaGraphDef tagged "serve" + Session, fed and fetched by the tensor
names listed in its SignatureDefs), loaded as ``tensorflow_serving/servables/tensorflow/
saved_model_bundle_factory.cc`` does and with the per-API entry points of
``saved_model_servable.cc`` (Predict, Classify, Regress: :mod:`.predict`, :mod:`.classifier`,
:mod:`.regressor`; warmup replay: :mod:`.warmup`).

Running through ``tf.compat.v1.Session`` rather than ``tf.saved_model.load`` keeps the exact
``SignatureDef`` protos for the metadata API, makes TensorFlow raise the same runtime errors
TF Serving reports, honours ``RunOptions.timeout_in_ms`` (REST ``--rest_api_timeout_in_ms``,
gRPC deadlines) and is the cheaper call path. Session callables are cached per
(feeds, fetches) so the hot path does no graph lookups.

Addition (not in TF Serving): while a version loads, every signature's full-predict callable is built and run once
on zeros (:meth:`Servable.prepare_callables`), on top of the warmup file TF Serving replays.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from .. import tensors as T
from ..errors import failed_precondition, from_tf_exception
from .classifier import run_classify
from .predict import run_predict
from .regressor import run_regress
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


class Servable:
    """A loaded SavedModel version."""

    def __init__(self, name: str, version: int, path: str, batcher=None, tags=("serve",)):
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # silence the v1 loader deprecation notice
        self.name = name
        self.version = version
        self.path = path
        self._tf = tf
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph)
        try:
            with self._graph.as_default():
                self.meta_graph = tf.compat.v1.saved_model.loader.load(self._session, list(tags), path)
        except BaseException:
            self._session.close()
            raise
        self.signatures: dict[str, SignatureInfo] = {}
        for sig_name, sig in self.meta_graph.signature_def.items():
            ins = {a: _spec(a, i) for a, i in sig.inputs.items()}
            outs = {a: _spec(a, i) for a, i in sig.outputs.items()}
            self.signatures[sig_name] = SignatureInfo(
                sig_name, sig, sig.method_name, ins, outs, frozenset(ins), tuple(sorted(ins)))
        self._callables: dict = {}
        self._callables_lock = threading.Lock()
        self._run_options: dict = {}
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
        for k, v in self.meta_graph.signature_def.items():
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
                    g = self._graph
                    with g.as_default():
                        fn = self._session.make_callable(
                            [g.get_tensor_by_name(n) for n in fetches],
                            [g.get_tensor_by_name(n) for n in feeds], accept_options=True)
                    self._callables[key] = fn
        return fn

    def _options(self, timeout_ms):
        if not timeout_ms or timeout_ms <= 0:
            return None
        opt = self._run_options.get(timeout_ms)
        if opt is None:
            opt = self._tf.compat.v1.RunOptions(timeout_in_ms=int(timeout_ms))
            if len(self._run_options) < 64:
                self._run_options[timeout_ms] = opt
        return opt

    def session_run(self, feeds: tuple, values: list, fetches: tuple, timeout_ms=None) -> list:
        """Run the session directly (no batching)."""
        fn = self._callable(feeds, fetches)
        opts = self._options(timeout_ms)
        try:
            if opts is None:
                return fn(*values)
            return fn(*values, options=opts)
        except Exception as exc:  # noqa: BLE001 - tf.errors.OpError, ValueError from shape checks -> a Status
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

    # ---------------------------------------------------------------- warmup
    def prepare_callables(self) -> int:
        """Build the session callable of every signature's full predict (all inputs → all
        outputs) and run it once on zeros (one row; numeric inputs of known rank only) while the
        version loads: building a callable prunes and optimizes the graph and its first run
        creates the kernels, tens of ms that would otherwise stall the first requests to reach a
        newly AVAILABLE version. Signatures this cannot feed are left to the warmup file."""
        n = 0
        for name in self.meta_graph.signature_def:
            try:
                sig = self.signature(name)
                specs = [sig.inputs[a] for a in sig.sorted_input_aliases]
                fn = self._callable(tuple(spec.tensor_name for spec in specs),
                                    tuple(sig.outputs[a].tensor_name for a in sorted(sig.outputs)))
                dtypes = [T.NP_OF_DT.get(spec.dtype) for spec in specs]
                if all(spec.shape is not None for spec in specs) and all(
                        dt is not None and np.dtype(dt).kind in "biuf" for dt in dtypes):
                    fn(*[np.zeros([1 if d < 0 else d for d in spec.shape], dt) for spec, dt in zip(specs, dtypes)])
                n += 1
            except Exception as exc:  # noqa: BLE001 - a request to this signature reports the error itself
                log.debug("no callable prepared for signature %s of %s: %s", name, self.path, exc)
        return n

    def warmup(self) -> int:
        """Prepare the callables, then replay assets.extra/tf_serving_warmup_requests
        (:mod:`.warmup`); returns the number of warmup records."""
        self.prepare_callables()
        return run_saved_model_warmup(self)
