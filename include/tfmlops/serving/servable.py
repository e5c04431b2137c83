"""One loaded model version: a SavedModel in its own TF graph + session, like TF Serving's
SavedModelBundle (MetaGraphDef tagged "serve" + Session, fed and fetched by the tensor
names listed in its SignatureDefs).

Running through ``tf.compat.v1.Session`` rather than ``tf.saved_model.load`` keeps the exact
``SignatureDef`` protos for the metadata API, makes TensorFlow raise the same runtime errors
TF Serving reports, honours ``RunOptions.timeout_in_ms`` (REST ``--rest_api_timeout_in_ms``,
gRPC deadlines) and is the cheaper call path. Session callables are cached per
(feeds, fetches) so the hot path does no graph lookups.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from dataclasses import dataclass

import numpy as np

from . import tensors as T
from .errors import Code, StatusError, failed_precondition, from_tf_exception, invalid_argument

log = logging.getLogger("tfmlops.serving")

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
CLASSIFY_INPUTS = "inputs"
CLASSIFY_OUTPUT_CLASSES = "classes"
CLASSIFY_OUTPUT_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000


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


def read_tfrecords(path: str):
    """Minimal TFRecord reader (length, crc, data, crc); CRCs are not verified."""
    with open(path, "rb") as fh:
        while True:
            header = fh.read(12)
            if not header:
                return
            if len(header) < 12:
                raise StatusError(Code.DATA_LOSS, f"truncated record at {path}. Please verify your "
                                  "warmup data is in TFRecord format.")
            (length,) = struct.unpack("<Q", header[:8])
            data = fh.read(length)
            footer = fh.read(4)
            if len(data) < length or len(footer) < 4:
                raise StatusError(Code.DATA_LOSS, f"truncated record at {path}. Please verify your "
                                  "warmup data is in TFRecord format.")
            yield data


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
        except Exception as exc:  # tf.errors.OpError, ValueError from shape checks
            raise from_tf_exception(exc) from None

    def run(self, feeds: tuple, values: list, fetches: tuple, timeout_ms=None) -> list:
        if self._batcher is not None:
            return self._batcher.run(self, feeds, values, fetches, timeout_ms)
        return self.session_run(feeds, values, fetches, timeout_ms)

    # ---------------------------------------------------------------- predict
    def predict(self, signature_name: str, inputs: dict, output_filter=(), timeout_ms=None):
        """Returns (resolved signature name, {alias: ndarray}). Mirrors predict_util.cc."""
        sig = self.signature(signature_name)
        if sig.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
            raise StatusError(Code.INTERNAL, (
                "Expected prediction signature method_name to be one of {"
                f"{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {sig.method_name}"))
        if len(inputs) != len(sig.inputs):
            req = sorted(inputs)
            sig_in = list(sig.sorted_input_aliases)
            extra = sorted(set(req) - set(sig_in))
            missing = sorted(set(sig_in) - set(req))
            raise invalid_argument(
                f"input size does not match signature: {len(inputs)}!={len(sig_in)} "
                f"len({{{','.join(req)}}}) != len({{{','.join(sig_in)}}}). "
                f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}.")
        feeds, values = [], []
        for i, alias in enumerate(sorted(inputs)):
            spec = sig.inputs.get(alias)
            if spec is None:
                raise invalid_argument(
                    f"input tensor alias not found in signature: {alias}. Inputs expected to be in "
                    f"the set {{{','.join(sig.sorted_input_aliases)}}}.")
            arr = inputs[alias]
            want = T.NP_OF_DT.get(spec.dtype)
            if want is not None and arr.dtype != want:
                if spec.dtype == T.DT_STRING and arr.dtype.kind in ("U", "S"):
                    arr = T.to_string_array(arr)
                else:
                    got = T.DTYPE_SHORT.get(T.dt_of_numpy(arr), str(arr.dtype))
                    raise invalid_argument(
                        f"Expects arg[{i}] to be {T.DTYPE_SHORT.get(spec.dtype)} but {got} is provided")
            feeds.append(spec.tensor_name)
            values.append(arr)
        if output_filter:
            aliases, seen = [], set()
            for alias in output_filter:
                if alias not in sig.outputs:
                    raise invalid_argument(
                        f"output tensor alias not found in signature: {alias} Outputs expected to be "
                        f"in the set {{{','.join(sorted(sig.outputs))}}}.")
                if alias in seen:
                    raise invalid_argument(f"duplicate output tensor alias: {alias}")
                seen.add(alias)
                aliases.append(alias)
        else:
            aliases = sorted(sig.outputs)
        fetches = tuple(sig.outputs[a].tensor_name for a in aliases)
        results = self.run(tuple(feeds), values, fetches, timeout_ms)
        return sig.name, dict(zip(aliases, results))

    # ---------------------------------------------------------------- classify / regress
    @staticmethod
    def serialized_examples(input_proto) -> np.ndarray:
        kind = input_proto.WhichOneof("kind")
        if kind == "example_list":
            ser = [e.SerializeToString() for e in input_proto.example_list.examples]
        elif kind == "example_list_with_context":
            ctx = input_proto.example_list_with_context.context.SerializeToString()
            # Concatenated serializations == proto merge (context fields first).
            ser = [ctx + e.SerializeToString() for e in input_proto.example_list_with_context.examples]
        else:
            ser = []
        if not ser:
            raise invalid_argument("Input is empty.")
        arr = np.empty(len(ser), dtype=object)
        arr[:] = ser
        return arr

    def _classification_signature(self, signature_name: str) -> SignatureInfo:
        name = signature_name or DEFAULT_SIGNATURE
        sig = self.signatures.get(name)
        if sig is None:
            raise invalid_argument(f"No signature was found with the name: {name}")
        if sig.method_name != CLASSIFY_METHOD:
            raise invalid_argument(
                f"Expected classification signature method_name to be {CLASSIFY_METHOD}. Was: {sig.method_name}")
        if len(sig.inputs) != 1:
            raise invalid_argument("Expected one input Tensor.")
        if len(sig.outputs) not in (1, 2):
            raise invalid_argument(f"Expected one or two output Tensors, found {len(sig.outputs)}")
        if CLASSIFY_INPUTS not in sig.inputs:
            raise failed_precondition(f"No classification inputs found in SignatureDef: {sig.proto}")
        if CLASSIFY_OUTPUT_CLASSES not in sig.outputs and CLASSIFY_OUTPUT_SCORES not in sig.outputs:
            raise failed_precondition(
                'Expected classification signature outputs to contain at least one of "classes" or '
                f'"scores". Signature was: {sig.proto}')
        return sig

    def classify(self, signature_name: str, input_proto, timeout_ms=None):
        """Returns (signature name, list of [(label, score), ...] per example)."""
        sig = self._classification_signature(signature_name)
        examples = self.serialized_examples(input_proto)
        n = len(examples)
        aliases = [a for a in (CLASSIFY_OUTPUT_CLASSES, CLASSIFY_OUTPUT_SCORES) if a in sig.outputs]
        fetches = tuple(sig.outputs[a].tensor_name for a in aliases)
        outs = dict(zip(aliases, self.run((sig.inputs[CLASSIFY_INPUTS].tensor_name,), [examples],
                                          fetches, timeout_ms)))
        classes, scores = outs.get(CLASSIFY_OUTPUT_CLASSES), outs.get(CLASSIFY_OUTPUT_SCORES)
        for label, t, want in (("classes", classes, "DT_STRING"), ("scores", scores, "DT_FLOAT")):
            if t is None:
                continue
            if t.ndim != 2:
                raise invalid_argument(
                    f"Expected Tensor shape: [batch_size num_classes] but got [{','.join(map(str, t.shape))}]")
            ok = t.dtype == object if want == "DT_STRING" else t.dtype == np.float32
            if not ok:
                raise invalid_argument(f"Expected {label} Tensor of {want}. Got: {t.dtype}")
            if t.shape[0] != n:
                raise invalid_argument(f"Expected {label} output batch size of {n}. Got: {t.shape[0]}")
        if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
            raise invalid_argument(
                "Tensors class and score should match in dim_size(1). Got "
                f"{classes.shape[1]} vs. {scores.shape[1]}")
        num_classes = (classes if classes is not None else scores).shape[1]
        result = []
        for i in range(n):
            row = []
            for c in range(num_classes):
                lab = classes[i, c] if classes is not None else b""
                row.append((lab if isinstance(lab, bytes) else str(lab).encode(),
                            float(scores[i, c]) if scores is not None else 0.0))
            result.append(row)
        return sig.name, result, classes is not None, scores is not None

    def regress(self, signature_name: str, input_proto, timeout_ms=None):
        name = signature_name or DEFAULT_SIGNATURE
        sig = self.signatures.get(name)
        if sig is None:
            raise invalid_argument(f"No signature was found with the name: {name}")
        if sig.method_name != REGRESS_METHOD:
            raise invalid_argument(
                f"Expected regression signature method_name to be {REGRESS_METHOD}. Was: {sig.method_name}")
        if len(sig.inputs) != 1:
            raise invalid_argument("Expected one input Tensor.")
        if len(sig.outputs) != 1:
            raise invalid_argument("Expected one output Tensor.")
        if REGRESS_INPUTS not in sig.inputs:
            raise failed_precondition(f"No regression inputs found in SignatureDef: {sig.proto}")
        if REGRESS_OUTPUTS not in sig.outputs:
            raise failed_precondition(f"No regression outputs found in SignatureDef: {sig.proto}")
        examples = self.serialized_examples(input_proto)
        n = len(examples)
        (out,) = self.run((sig.inputs[REGRESS_INPUTS].tensor_name,), [examples],
                          (sig.outputs[REGRESS_OUTPUTS].tensor_name,), timeout_ms)
        if out.dtype != np.float32:
            raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {out.dtype}")
        if not (out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1)):
            raise invalid_argument(
                "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
                f"[{','.join(map(str, out.shape))}]")
        if out.shape[0] != n:
            raise invalid_argument(f"Input batch size did not match output batch size: {n} vs. {out.shape[0]}")
        return sig.name, [float(v) for v in out.reshape(-1)]

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
        (saved_model_warmup_util.cc)."""
        self.prepare_callables()
        path = os.path.join(self.path, WARMUP_FILE)
        if not os.path.exists(path):
            return 0
        from tensorflow_serving.apis import prediction_log_pb2

        n = 0
        for record in read_tfrecords(path):
            plog = prediction_log_pb2.PredictionLog()
            try:
                plog.ParseFromString(record)
            except Exception:
                raise invalid_argument(f"Failed to parse warmup record: {record!r} from {path}") from None
            kind = plog.WhichOneof("log_type")
            if kind == "predict_log":
                req = plog.predict_log.request
                inputs = {k: T.make_ndarray(v, k) for k, v in req.inputs.items()}
                self.predict(req.model_spec.signature_name, inputs, list(req.output_filter))
            elif kind == "classify_log":
                req = plog.classify_log.request
                self.classify(req.model_spec.signature_name, req.input)
            elif kind == "regress_log":
                req = plog.regress_log.request
                self.regress(req.model_spec.signature_name, req.input)
            else:
                raise invalid_argument(f"Unsupported log_type for warmup: {kind}")
            n += 1
            if n > MAX_WARMUP_RECORDS:
                raise invalid_argument(
                    f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
        log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d.", path, n)
        return n
