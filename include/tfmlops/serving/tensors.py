"""numpy <-> ``tensorflow.TensorProto`` conversion without going through TensorFlow ops.

Used by the gRPC service (requests in, responses out) and by the client. Decoding accepts
both encodings a TF client may send (``tensor_content`` bytes or the typed ``*_val``
fields, with TensorFlow's rule that a short value list is padded with its last value);
encoding writes the typed ``*_val`` fields, as TF Serving's predictor does
(``Tensor::AsProtoField``), so clients reading ``float_val`` directly keep working.
"""

from __future__ import annotations

import numpy as np

from .errors import invalid_argument

# tensorflow/core/framework/types.proto
DT_INVALID, DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING = range(8)
DT_COMPLEX64, DT_INT64, DT_BOOL = 8, 9, 10
DT_BFLOAT16, DT_UINT16, DT_COMPLEX128, DT_HALF = 14, 17, 18, 19
DT_UINT32, DT_UINT64 = 22, 23

DTYPE_NAMES = {
    DT_INVALID: "DT_INVALID", DT_FLOAT: "DT_FLOAT", DT_DOUBLE: "DT_DOUBLE", DT_INT32: "DT_INT32",
    DT_UINT8: "DT_UINT8", DT_INT16: "DT_INT16", DT_INT8: "DT_INT8", DT_STRING: "DT_STRING",
    DT_COMPLEX64: "DT_COMPLEX64", DT_INT64: "DT_INT64", DT_BOOL: "DT_BOOL",
    DT_BFLOAT16: "DT_BFLOAT16", DT_UINT16: "DT_UINT16", DT_COMPLEX128: "DT_COMPLEX128",
    DT_HALF: "DT_HALF", DT_UINT32: "DT_UINT32", DT_UINT64: "DT_UINT64",
}
# DataTypeString() spelling used in TF error messages ("float", "int64", ...)
DTYPE_SHORT = {
    DT_FLOAT: "float", DT_DOUBLE: "double", DT_INT32: "int32", DT_UINT8: "uint8",
    DT_INT16: "int16", DT_INT8: "int8", DT_STRING: "string", DT_COMPLEX64: "complex64",
    DT_INT64: "int64", DT_BOOL: "bool", DT_BFLOAT16: "bfloat16", DT_UINT16: "uint16",
    DT_COMPLEX128: "complex128", DT_HALF: "half", DT_UINT32: "uint32", DT_UINT64: "uint64",
}

NP_OF_DT = {
    DT_FLOAT: np.dtype(np.float32), DT_DOUBLE: np.dtype(np.float64),
    DT_INT32: np.dtype(np.int32), DT_UINT8: np.dtype(np.uint8), DT_INT16: np.dtype(np.int16),
    DT_INT8: np.dtype(np.int8), DT_STRING: np.dtype(object), DT_COMPLEX64: np.dtype(np.complex64),
    DT_INT64: np.dtype(np.int64), DT_BOOL: np.dtype(np.bool_), DT_UINT16: np.dtype(np.uint16),
    DT_COMPLEX128: np.dtype(np.complex128), DT_HALF: np.dtype(np.float16),
    DT_UINT32: np.dtype(np.uint32), DT_UINT64: np.dtype(np.uint64),
}
_DT_OF_NP = {v: k for k, v in NP_OF_DT.items() if k != DT_STRING}

# which repeated field of TensorProto carries each dtype
_FIELD_OF_DT = {
    DT_FLOAT: "float_val", DT_DOUBLE: "double_val", DT_INT32: "int_val", DT_UINT8: "int_val",
    DT_INT16: "int_val", DT_INT8: "int_val", DT_UINT16: "int_val", DT_STRING: "string_val",
    DT_INT64: "int64_val", DT_BOOL: "bool_val", DT_HALF: "half_val", DT_BFLOAT16: "half_val",
    DT_UINT32: "uint32_val", DT_UINT64: "uint64_val", DT_COMPLEX64: "scomplex_val",
    DT_COMPLEX128: "dcomplex_val",
}


def dt_of_numpy(arr: np.ndarray) -> int:
    if arr.dtype.kind in ("U", "S", "O"):
        return DT_STRING
    try:
        return _DT_OF_NP[arr.dtype]
    except KeyError:
        raise invalid_argument(f"Unsupported numpy dtype: {arr.dtype}") from None


def to_string_array(arr: np.ndarray) -> np.ndarray:
    """Any str/bytes array -> object array of bytes (TF's representation of DT_STRING)."""
    if arr.dtype == object:
        out = np.empty(arr.shape, dtype=object)
        flat_in, flat_out = arr.ravel(), out.ravel()
        for i, v in enumerate(flat_in):
            flat_out[i] = v.encode("utf-8") if isinstance(v, str) else bytes(v)
        return out
    if arr.dtype.kind == "U":
        return np.char.encode(arr, "utf-8").astype(object)
    if arr.dtype.kind == "S":
        return arr.astype(object)
    raise invalid_argument(f"Cannot convert numpy dtype {arr.dtype} to DT_STRING")


def make_tensor_proto(arr, tensor_proto=None, dtype: int | None = None):
    """Fill (or create) a TensorProto from a numpy array, using the typed value fields."""
    if tensor_proto is None:
        from tensorflow.core.framework import tensor_pb2

        tensor_proto = tensor_pb2.TensorProto()
    arr = np.asarray(arr)
    dt = dt_of_numpy(arr) if dtype is None else dtype
    tensor_proto.dtype = dt
    shape = tensor_proto.tensor_shape
    for d in arr.shape:
        shape.dim.add().size = d
    if arr.size == 0:
        return tensor_proto
    field = getattr(tensor_proto, _FIELD_OF_DT[dt])
    if dt == DT_STRING:
        if arr.dtype != object or (arr.size and not isinstance(arr.flat[0], bytes)):
            arr = to_string_array(arr)
        field.extend(arr.ravel().tolist())
    elif dt in (DT_HALF, DT_BFLOAT16):
        field.extend(np.ascontiguousarray(arr, dtype=np.float16).ravel().view(np.uint16).astype(np.int32).tolist())
    elif dt in (DT_COMPLEX64, DT_COMPLEX128):
        flat = arr.ravel()
        field.extend(np.column_stack([flat.real, flat.imag]).ravel().tolist())
    else:
        want = NP_OF_DT[dt]
        if arr.dtype != want:
            arr = arr.astype(want)
        field.extend(arr.ravel().tolist())
    return tensor_proto


def make_ndarray(tensor_proto, name: str = "") -> np.ndarray:
    """TensorProto -> numpy array (object array of bytes for DT_STRING)."""
    dt = tensor_proto.dtype
    if dt not in NP_OF_DT:
        raise invalid_argument(f"tensor parsing error: {name}")
    if tensor_proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"tensor parsing error: {name}")
    shape = tuple(int(d.size) for d in tensor_proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise invalid_argument(f"tensor parsing error: {name}")
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    np_dtype = NP_OF_DT[dt]
    if tensor_proto.tensor_content and dt != DT_STRING:
        buf = tensor_proto.tensor_content
        if len(buf) != n * np_dtype.itemsize:
            raise invalid_argument(f"tensor parsing error: {name}")
        return np.frombuffer(buf, dtype=np_dtype).reshape(shape).copy()
    values = getattr(tensor_proto, _FIELD_OF_DT[dt])
    if dt == DT_STRING:
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    elif dt in (DT_HALF, DT_BFLOAT16):
        flat = np.asarray(values, dtype=np.int32).astype(np.uint16).view(np.float16)
    elif dt in (DT_COMPLEX64, DT_COMPLEX128):
        pairs = np.asarray(values, dtype=np.float64).reshape(-1, 2)
        flat = (pairs[:, 0] + 1j * pairs[:, 1]).astype(np_dtype)
    else:
        flat = np.asarray(values, dtype=np_dtype)
    if flat.size == n:
        return flat.reshape(shape)
    if flat.size > n:
        raise invalid_argument(f"tensor parsing error: {name}")
    # TensorFlow pads a short list with its last value (or zeros/empty when empty).
    if flat.size == 0:
        out = np.empty(n, dtype=np_dtype)
        out[:] = b"" if dt == DT_STRING else 0
    else:
        out = np.empty(n, dtype=np_dtype)
        out[: flat.size] = flat
        out[flat.size:] = flat[-1]
    return out.reshape(shape)
