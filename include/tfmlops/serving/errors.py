"""Status codes and the server-side error type, mirroring TensorFlow Serving.

TF Serving reports every failure as a ``tensorflow::Status``: a canonical error code
(``tensorflow/core/protobuf/error_codes.proto``, numerically identical to gRPC's status
codes) plus a message. The gRPC front end passes the code through unchanged (messages
over 1024 characters are cut and end in ``...TRUNCATED``); the REST front end maps it to
an HTTP status (``tensorflow_serving/model_servers/http_server.cc``).
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# tensorflow_serving/model_servers/http_server.cc: ToHTTPStatusCode
HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

GRPC_MESSAGE_LIMIT = 1024


class StatusError(Exception):
    """A failed ``tensorflow::Status``: canonical code + message."""

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code = Code(code)
        self.message = message

    def __str__(self) -> str:  # like Status::ToString()
        return f"{self.code.name}: {self.message}"

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


def invalid_argument(msg: str) -> StatusError:
    return StatusError(Code.INVALID_ARGUMENT, msg)


def not_found(msg: str) -> StatusError:
    return StatusError(Code.NOT_FOUND, msg)


def failed_precondition(msg: str) -> StatusError:
    return StatusError(Code.FAILED_PRECONDITION, msg)


def from_tf_exception(exc: BaseException) -> StatusError:
    """Turn an exception raised by TensorFlow (or our own code) into a StatusError."""
    if isinstance(exc, StatusError):
        return exc
    code = getattr(exc, "error_code", None)
    message = getattr(exc, "message", None)
    if code is not None and message is not None:  # tf.errors.OpError
        try:
            return StatusError(Code(int(code)), str(message))
        except ValueError:
            return StatusError(Code.UNKNOWN, str(message))
    if isinstance(exc, (ValueError, TypeError)):
        return StatusError(Code.INVALID_ARGUMENT, str(exc))
    return StatusError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")
