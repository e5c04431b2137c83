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


# Decoding is bounded: a TensorProto can declare a huge shape with one value (TensorFlow pads a short
# value list with its last value), so a 30-byte message could ask for gigabytes. The model server
# sets this from its options; a tensor that would decode to more is refused before allocation.
MAX_DECODED_BYTES = 256 * 1024 * 1024
# Responses with more elements than this carry ``tensor_content`` (one bytes field: fast to write
# and to parse) instead of the typed ``*_val`` lists (one protobuf field per value), which TF
# Serving uses for every size (deviation; ``tf.make_ndarray`` reads both).
TENSOR_CONTENT_MIN_ELEMENTS = 4096
_INT64_MAX = (1 << 63) - 1


def make_tensor_proto(arr, tensor_proto=None, dtype: int | None = None):
    """Fill (or create) a TensorProto from a numpy array: typed value fields, or ``tensor_content``
    for numeric arrays of at least :data:`TENSOR_CONTENT_MIN_ELEMENTS` elements."""
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
    if arr.size >= TENSOR_CONTENT_MIN_ELEMENTS and dt not in (DT_STRING, DT_BFLOAT16):
        tensor_proto.tensor_content = np.ascontiguousarray(arr, dtype=NP_OF_DT[dt].newbyteorder("<")).tobytes()
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


def checked_shape(tensor_proto, name: str = "", max_bytes: int | None = None) -> tuple[tuple, int]:
    """The shape and element count a TensorProto declares, checked without allocating anything:
    known rank, dimensions >= 0, no int64 overflow (TensorFlow's ``Tensor::FromProto`` refuses
    those: "tensor parsing error"), and at most ``max_bytes`` (default :data:`MAX_DECODED_BYTES`)
    once decoded."""
    dt = tensor_proto.dtype
    if dt not in NP_OF_DT or tensor_proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"tensor parsing error: {name}")
    shape, n, extent = [], 1, 1
    for d in tensor_proto.tensor_shape.dim:
        size = int(d.size)
        n *= size
        extent *= max(size, 1)  # numpy cannot represent e.g. [2**40, 0, 2**40] either, though it is empty
        if size < 0 or extent > _INT64_MAX:
            raise invalid_argument(f"tensor parsing error: {name}")
        shape.append(size)
    limit = MAX_DECODED_BYTES if max_bytes is None else max_bytes
    if n * NP_OF_DT[dt].itemsize > limit:
        raise invalid_argument(f"tensor parsing error: {name}: shape {shape} ({n} elements of "
                               f"{DTYPE_SHORT.get(dt, dt)}) exceeds the server's limit of {limit} bytes per tensor")
    return tuple(shape), n


def make_ndarray(tensor_proto, name: str = "", max_bytes: int | None = None) -> np.ndarray:
    """TensorProto -> numpy array (object array of bytes for DT_STRING), bounded by
    :func:`checked_shape` before anything is allocated."""
    dt = tensor_proto.dtype
    shape, n = checked_shape(tensor_proto, name, max_bytes)
    np_dtype = NP_OF_DT[dt]
    if tensor_proto.tensor_content and dt != DT_STRING:
        buf = tensor_proto.tensor_content
        if len(buf) != n * np_dtype.itemsize:
            raise invalid_argument(f"tensor parsing error: {name}")
        return np.frombuffer(buf, dtype=np_dtype.newbyteorder("<")).astype(np_dtype).reshape(shape)
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
