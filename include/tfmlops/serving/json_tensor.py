"""REST JSON <-> numpy, following TF Serving's ``tensorflow_serving/util/json_tensor.cc``.

Request side: row (``instances``) and columnar (``inputs``) formats, ``{"b64": ...}`` for
DT_STRING, NaN/Infinity tokens, TF Serving's error messages. A numpy fast path converts
well-formed nested lists in one call; anything it cannot vouch for goes through the
reference walk (``_fill``) that mirrors ``FillTensorProto`` and produces the exact errors.

Response side: ``predictions`` (row) / ``outputs`` (columnar), one named tensor -> bare
value, several -> objects; DT_STRING outputs whose alias ends in ``_bytes`` are written as
``{"b64": ...}``; float32 values are written with the shortest representation that
round-trips *as float32* (``0.1`` rather than ``0.10000000149011612``), as TF Serving does.

Known deviation: a list mixing JSON booleans and numbers for a numeric input is coerced by
numpy (TF Serving rejects it).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math

import numpy as np

from . import tensors as T
from .errors import invalid_argument

ROW, COLUMNAR = "row", "columnar"
_FLOAT32_EXACT_LIMIT = 1 << 16  # above this many elements, skip the shortest-repr pass


# ---------------------------------------------------------------------------- helpers
_PREVIEW = json.JSONEncoder(separators=(",", ":"), allow_nan=True, default=str)


def _jstr(val, limit: int = 2000) -> str:
    """The JSON text of ``val`` for an error message, cut after ``limit`` characters: encoded
    piece by piece, so a huge document costs no more than its first ``limit`` characters."""
    parts, size = [], 0
    try:
        for piece in _PREVIEW.iterencode(val):
            parts.append(piece)
            size += len(piece)
            if size > limit:
                return "".join(parts)[:limit] + "..."
    except RecursionError:
        return "".join(parts)[:limit] + "..."
    return "".join(parts)


def _bounded_nesting(fn):
    """A document nested deeper than Python's recursion allows is the client's error (400), not a
    crash (500): json's parser and the converters below recurse once per nesting level."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RecursionError:
            raise invalid_argument("JSON Parse error: The document is nested too deeply") from None
    return wrapper


def _jtype(val) -> str:
    if val is None:
        return "Null"
    if val is True:
        return "True"
    if val is False:
        return "False"
    if isinstance(val, dict):
        return "Object"
    if isinstance(val, list):
        return "Array"
    if isinstance(val, str):
        return "String"
    return "Number"


def _is_b64(val) -> bool:
    return isinstance(val, dict) and len(val) == 1 and isinstance(val.get("b64"), str)


def _format_error(doc, *parts) -> Exception:
    return invalid_argument("JSON Value: " + _jstr(doc) + " " + "".join(parts))


# Python's json decoder messages -> rapidjson's GetParseError_En, which TF Serving reports
_RAPIDJSON_ERRORS = {
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
    "Invalid control character at": "Invalid encoding in string.",
    "Extra data": "The document root must not be followed by other values.",
}


def _innermost_container(text: str) -> str:
    """``{`` or ``[``: the container open at the end of ``text`` (a JSON prefix)."""
    stack, in_string, escaped = [], False, False
    for ch in text:
        if in_string:
            escaped = not escaped and ch == "\\"
            in_string = escaped or ch != '"'
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _rapidjson_reason(exc: json.JSONDecodeError) -> str:
    """rapidjson's message (what TF Serving reports) for a Python decoder error."""
    if exc.msg == "Expecting ',' delimiter":
        inner = _innermost_container(exc.doc[:exc.pos] if isinstance(exc.doc, str) else "")
        return ("Missing a comma or '}' after an object member." if inner == "{"
                else "Missing a comma or ']' after an array element.")
    return _RAPIDJSON_ERRORS.get(exc.msg, exc.msg)


@_bounded_nesting
def parse_json(body: bytes) -> dict:
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except json.JSONDecodeError as exc:
        raise invalid_argument(f"JSON Parse error: {_rapidjson_reason(exc)} at offset: {exc.pos}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid_argument(f"JSON Parse error: {exc}") from None
    if not isinstance(doc, dict):
        raise _format_error(doc, "Is not object")
    return doc


def signature_name(doc: dict) -> str:
    sig = doc.get("signature_name")
    if sig is None and "signature_name" not in doc:
        return ""
    if not isinstance(sig, str):
        raise invalid_argument(
            f"JSON Value: {_jstr(doc)} not formatted correctly. 'signature_name' key must be a string value.")
    return sig


# ---------------------------------------------------------------------------- JSON -> ndarray
_INT_LIMITS = {
    T.DT_INT32: (-(1 << 31), (1 << 31) - 1), T.DT_INT16: (-(1 << 31), (1 << 31) - 1),
    T.DT_INT8: (-(1 << 31), (1 << 31) - 1), T.DT_UINT8: (-(1 << 31), (1 << 31) - 1),
    T.DT_UINT16: (-(1 << 31), (1 << 31) - 1),
    T.DT_INT64: (-(1 << 63), (1 << 63) - 1), T.DT_UINT32: (0, (1 << 32) - 1),
    T.DT_UINT64: (0, (1 << 64) - 1),
}
_FLOAT_TYPES = (T.DT_FLOAT, T.DT_DOUBLE, T.DT_HALF, T.DT_BFLOAT16)
_FLOAT_MAX_INT = {T.DT_FLOAT: (1 << 24) - 1, T.DT_DOUBLE: (1 << 53) - 1,
                  T.DT_HALF: (1 << 24) - 1, T.DT_BFLOAT16: (1 << 24) - 1}
_FLOAT_MAX = {T.DT_FLOAT: float(np.finfo(np.float32).max), T.DT_DOUBLE: float(np.finfo(np.float64).max),
              T.DT_HALF: float(np.finfo(np.float32).max), T.DT_BFLOAT16: float(np.finfo(np.float32).max)}


def _lossless(val, dt) -> bool:
    if isinstance(val, float):
        return not math.isfinite(val) or -_FLOAT_MAX[dt] <= val <= _FLOAT_MAX[dt]
    return abs(val) <= _FLOAT_MAX_INT[dt]


def _leaf(val, dt):
    """AddValueToTensor(): one JSON scalar -> Python value of the tensor type."""
    if dt in _FLOAT_TYPES:
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            raise _type_error(val, dt)
        if not _lossless(val, dt):
            raise invalid_argument(
                f"Cannot convert JSON value: {_jstr(val)} to {'double' if dt == T.DT_DOUBLE else 'float'} "
                "without loss of precision.")
        return val
    if dt in _INT_LIMITS:
        lo, hi = _INT_LIMITS[dt]
        if isinstance(val, bool) or not isinstance(val, int) or not lo <= val <= hi:
            raise _type_error(val, dt)
        return val
    if dt == T.DT_BOOL:
        if not isinstance(val, bool):
            raise _type_error(val, dt)
        return val
    if dt == T.DT_STRING:
        if isinstance(val, dict):
            return _b64decode(val)
        if not isinstance(val, str):
            raise _type_error(val, dt)
        return val.encode("utf-8")
    raise invalid_argument(f"Conversion of JSON Value: {_jstr(val)} to type: {T.DTYPE_SHORT.get(dt, dt)}")


def _type_error(val, dt):
    return invalid_argument(
        f"JSON Value: {_jstr(val)} Type: {_jtype(val)} is not of expected type: {T.DTYPE_SHORT.get(dt, dt)}")


def _b64decode(val) -> bytes:
    if not _is_b64(val):
        raise invalid_argument(f"JSON Value: {_jstr(val)} not formatted correctly for base64 data")
    s = val["b64"]
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        try:  # absl::Base64Unescape also accepts missing padding / web-safe alphabet
            return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
        except (binascii.Error, ValueError):
            raise invalid_argument("Unable to base64 decode") from None


def _dense_shape(val) -> list:
    shape = []
    while isinstance(val, list):
        shape.append(len(val))
        if not val:
            break
        val = val[0]
    return shape


def _fill(val, level, shape, dt, out) -> None:
    rank = len(shape)
    if not isinstance(val, list):
        if level != rank:
            raise invalid_argument(
                f"JSON Value: {_jstr(val)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {rank}")
        if isinstance(val, dict) and dt != T.DT_STRING:
            raise _type_error(val, dt)
        out.append(_leaf(val, dt))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(val) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(val)} at level: {level} expected size: {shape[level]}")
    for v in val:
        _fill(v, level + 1, shape, dt, out)


def _reference_array(val, dt) -> np.ndarray:
    shape = _dense_shape(val)
    flat: list = []
    _fill(val, 0, shape, dt, flat)
    np_dtype = T.NP_OF_DT[dt] if dt != T.DT_BFLOAT16 else np.dtype(np.float32)
    if dt == T.DT_STRING:
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        return arr.reshape(shape)
    return np.array(flat, dtype=np_dtype).reshape(shape)


def _fast_array(val, dt):
    """numpy fast path; returns None when the reference walk must decide."""
    if dt == T.DT_STRING:
        return None
    try:
        arr = np.asarray(val)
    except (ValueError, OverflowError):
        return None
    kind = arr.dtype.kind
    if arr.size == 0:
        return None
    if dt in _FLOAT_TYPES:
        if kind == "f":
            if dt != T.DT_DOUBLE:
                finite = np.isfinite(arr)
                if np.any(np.abs(arr[finite]) > _FLOAT_MAX[dt]):
                    return None
            return arr.astype(T.NP_OF_DT.get(dt, np.float32), copy=False)
        if kind in "iu":
            if np.any(np.abs(arr) > _FLOAT_MAX_INT[dt]):
                return None
            return arr.astype(T.NP_OF_DT.get(dt, np.float32))
        return None
    if dt in _INT_LIMITS:
        if kind not in "iu":
            return None
        lo, hi = _INT_LIMITS[dt]
        if arr.min() < lo or arr.max() > hi:
            return None
        return arr.astype(T.NP_OF_DT[dt], copy=False)
    if dt == T.DT_BOOL:
        return arr if kind == "b" else None
    return None


def value_to_array(val, dt) -> np.ndarray:
    arr = _fast_array(val, dt)
    if arr is not None:
        return arr
    return _reference_array(val, dt)


def _shape_str(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _instances_column(items, dt):
    """Stack one named input across instances (AddInstanceItem semantics)."""
    arr = _fast_array(items, dt)
    if arr is not None:
        return arr
    parts, first_shape, first_size = [], None, None
    for i, item in enumerate(items):
        try:
            a = _reference_array(item, dt)
        except Exception as exc:  # noqa: BLE001 - any conversion error is the client's: INVALID_ARGUMENT
            raise invalid_argument(f"Failed to process element: {i} of 'instances' list. Error: {exc}") from None
        if first_shape is None:
            first_shape, first_size = a.shape, a.size
        elif a.size != first_size:
            raise invalid_argument(f"Failed to process element: {i} of 'instances' list. Error: "
                                   f"INVALID_ARGUMENT: Expecting tensor size: {first_size} but got: {a.size}")
        elif a.shape != first_shape:
            raise invalid_argument(f"Failed to process element: {i} of 'instances' list. Error: "
                                   f"INVALID_ARGUMENT: Expecting shape {_shape_str(first_shape)} but got: "
                                   f"{_shape_str(a.shape)}")
        parts.append(a)
    if dt == T.DT_STRING:
        flat = [v for p in parts for v in p.ravel().tolist()]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape((len(parts),) + first_shape)
    return np.stack(parts)


@_bounded_nesting
def predict_inputs(doc: dict, sig) -> tuple[dict, str]:
    """FillPredictRequestFromJson(): -> ({alias: ndarray}, ROW|COLUMNAR)."""
    specs = sig.inputs
    if not specs:
        raise invalid_argument(f"Failed to get input map for signature: {sig.name or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise _format_error(doc, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise _format_error(doc, "Excepting 'instances' to be an list/array")
        if not instances:
            raise _format_error(doc, "No values in 'instances' array")
        return _from_instances(instances, specs), ROW
    if has_inputs:
        return _from_inputs(doc["inputs"], specs), COLUMNAR
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _from_instances(instances: list, specs: dict) -> dict:
    first = instances[0]
    if not isinstance(first, dict) and len(specs) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors required "
            "as per tensorinfo_map")
    if isinstance(first, dict) and not _is_b64(first):
        names = set(specs)
        columns: dict[str, list] = {n: [] for n in names}
        for i, elem in enumerate(instances):
            if not isinstance(elem, dict) or _is_b64(elem):
                raise invalid_argument(f"Expecting object but got list at item {i} of input list")
            for key, value in elem.items():
                if key not in names:
                    raise invalid_argument(
                        f"Failed to process element: {i} key: {key} of 'instances' list. Error: "
                        f"INVALID_ARGUMENT: JSON object: does not have named input: {key}")
                columns[key].append(value)
            if set(elem) != names:
                raise invalid_argument(
                    f"Failed to process element: {i} of 'instances' list. JSON object: {_jstr(elem)} must only "
                    f"have keys: {','.join(sorted(names))}")
        return {n: _instances_column(columns[n], specs[n].dtype) for n in names}
    for i, elem in enumerate(instances):
        if isinstance(elem, dict) and not _is_b64(elem):
            raise invalid_argument(f"Expecting value/list but got object at item {i} of input list")
    (name, spec), = specs.items()
    return {name: _instances_column(instances, spec.dtype)}


def _from_inputs(val, specs: dict) -> dict:
    if not isinstance(val, dict) or _is_b64(val):
        if len(specs) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required "
                "as per tensorinfo_map")
        (name, spec), = specs.items()
        return {name: value_to_array(val, spec.dtype)}
    out = {}
    for name in sorted(specs):
        if name not in val:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        out[name] = value_to_array(val[name], specs[name].dtype)
    return out


# ---------------------------------------------------------------------------- ndarray -> JSON
def _nest(flat: list, shape: tuple):
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = int(np.prod(shape[1:], dtype=np.int64))
    return [_nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def to_jsonable(arr: np.ndarray, name: str):
    kind = arr.dtype.kind
    if kind == "f":
        if arr.dtype != np.float64 and arr.size <= _FLOAT32_EXACT_LIMIT:
            # shortest decimal that round-trips in the tensor's own precision
            arr = arr.astype(str).astype(np.float64)
        return arr.tolist()
    if kind in "iub":
        return arr.tolist()
    if kind == "c":
        raise invalid_argument(f"Failed to write JSON value for tensor type: {arr.dtype}")
    flat = arr.ravel().tolist()
    if name.endswith("_bytes"):
        flat = [{"b64": base64.b64encode(v if isinstance(v, bytes) else str(v).encode()).decode("ascii")}
                for v in flat]
    else:
        flat = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in flat]
    return _nest(flat, arr.shape)


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode("utf-8")


def predict_outputs_json(outputs: dict, fmt: str) -> bytes:
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == ROW:
        batch = 0
        for n in names:
            arr = outputs[n]
            if arr.ndim == 0:
                raise invalid_argument(f"Tensor name: {n} has no shape information ")
            bs = arr.shape[0]
            if bs < 1:
                raise invalid_argument(f"Tensor name: {n} has invalid batch size: {bs}")
            if batch and bs != batch:
                raise invalid_argument(f"Tensor name: {n} has inconsistent batch size: {bs} expecting: {batch}")
            batch = bs
        if len(names) == 1:
            return dumps({"predictions": to_jsonable(outputs[names[0]], names[0])})
        cols = {n: to_jsonable(outputs[n], n) for n in names}
        return dumps({"predictions": [{n: cols[n][i] for n in names} for i in range(batch)]})
    if len(names) == 1:
        return dumps({"outputs": to_jsonable(outputs[names[0]], names[0])})
    return dumps({"outputs": {n: to_jsonable(outputs[n], n) for n in names}})


# ---------------------------------------------------------------------------- classify / regress
def _feature_kind_error(name, kind):
    return invalid_argument(f"Unexpected element type in feature: {name} expecting type: {kind}")


def _add_to_feature(val, name, feature, kinds: list) -> None:
    # kinds[0] holds the kind fixed by the first element ("bytes" | "float" | "int64")
    def need(kind):
        if kinds[0] is None:
            kinds[0] = kind
        elif kinds[0] != kind:
            raise _feature_kind_error(name, kinds[0])

    if val is None or isinstance(val, list):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {_jtype(val)}")
    if isinstance(val, bool):
        need("int64")
        feature.int64_list.value.append(1 if val else 0)
    elif isinstance(val, dict):
        if not _is_b64(val):
            raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: Object")
        need("bytes")
        feature.bytes_list.value.append(_b64decode(val))
    elif isinstance(val, str):
        need("bytes")
        feature.bytes_list.value.append(val.encode("utf-8"))
    elif isinstance(val, float):
        need("float")
        if not _lossless(val, T.DT_FLOAT):
            raise invalid_argument(f"Cannot convert JSON value: {_jstr(val)} to float without loss of precision.")
        feature.float_list.value.append(val)
    else:
        need("int64")
        if val > (1 << 63) - 1:
            raise invalid_argument(f"Feature: {name} has uint64 element. Only int64 is supported.")
        if val < -(1 << 63):
            raise _type_error(val, T.DT_INT64)
        feature.int64_list.value.append(val)


def _make_example(val, example) -> None:
    if not isinstance(val, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {_jtype(val)}")
    for name, content in val.items():
        feature = example.features.feature[name]
        kinds = [None]
        if isinstance(content, list):
            for v in content:
                _add_to_feature(v, name, feature, kinds)
        else:
            _add_to_feature(content, name, feature, kinds)


@_bounded_nesting
def classify_regress_input(doc: dict, input_proto) -> None:
    """FillClassifyRegressRequestFromJson(): fill a tensorflow.serving.Input."""
    has_context = "context" in doc
    if has_context:
        _make_example(doc["context"], input_proto.example_list_with_context.context)
    if "examples" not in doc:
        raise _format_error(doc, "When method is classify, key 'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise _format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise _format_error(doc, "'examples' value is an empty array")
    target = (input_proto.example_list_with_context.examples if has_context
              else input_proto.example_list.examples)
    for ex in examples:
        _make_example(ex, target.add())


def _f32(x: float) -> float:
    return float(str(np.float32(x))) if math.isfinite(x) else x


def classification_json(rows: list) -> bytes:
    if not rows:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    return dumps({"results": [[[lab.decode("utf-8", errors="replace"), _f32(score)] for lab, score in row]
                              for row in rows]})


def regression_json(values: list) -> bytes:
    if not values:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return dumps({"results": [_f32(v) for v in values]})
