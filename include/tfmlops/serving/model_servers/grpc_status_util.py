"""TF Status -> gRPC status, mirroring TF Serving's
``tensorflow_serving/model_servers/grpc_status_util.cc``: the gRPC status code equals the TF
Status code TF Serving would return, and messages over 1024 characters are truncated with
"...TRUNCATED".
"""

from __future__ import annotations

import logging

import grpc

from ..errors import GRPC_MESSAGE_LIMIT, Code, StatusError

log = logging.getLogger("tfmlops.serving")

_GRPC_CODES = {c.value[0]: c for c in grpc.StatusCode}


def abort(context, exc: StatusError):
    msg = exc.message
    if len(msg) > GRPC_MESSAGE_LIMIT:
        msg = msg[:GRPC_MESSAGE_LIMIT] + "...TRUNCATED"
    context.abort(_GRPC_CODES.get(int(exc.code), grpc.StatusCode.UNKNOWN), msg)


def guard(fn):
    """Decorate a servicer method: a StatusError (or an unexpected exception, as INTERNAL) ends
    the call with the matching gRPC status."""
    def wrapper(self, request, context):
        try:
            return fn(self, request, context)
        except StatusError as exc:
            abort(context, exc)
        except Exception as exc:  # pragma: no cover - defensive
            if isinstance(exc, grpc.RpcError) or type(exc).__name__ == "_AbortionException":
                raise
            log.exception("gRPC %s crashed", fn.__name__)
            abort(context, StatusError(Code.INTERNAL, f"{type(exc).__name__}: {exc}"))
    wrapper.__name__ = fn.__name__
    return wrapper
