"""Model status requests, mirroring TF Serving's
``tensorflow_serving/model_servers/get_model_status_impl.cc``: the states and errors the
:class:`~tfmlops.serving.core.servable_state_monitor.ServableStateMonitor` holds for one model
(or one version of it), as a ``GetModelStatusResponse``, newest version first. Labels are not
resolved (TF Serving ignores ``version_label`` here).

Shared by the gRPC ``ModelService.GetModelStatus`` and the REST ``GET /v1/models/{m}``.
"""

from __future__ import annotations

from tensorflow_serving.apis import get_model_status_pb2

from ..core.servable_state_monitor import AVAILABLE, END, LOADING, START, UNLOADING

STATE_ENUM = {
    START: get_model_status_pb2.ModelVersionStatus.START,
    LOADING: get_model_status_pb2.ModelVersionStatus.LOADING,
    AVAILABLE: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
    UNLOADING: get_model_status_pb2.ModelVersionStatus.UNLOADING,
    END: get_model_status_pb2.ModelVersionStatus.END,
}


def get_model_status(core, name: str, version: int | None = None):
    """GetModelStatusResponse of model ``name`` (all its versions, or ``version`` only)."""
    resp = get_model_status_pb2.GetModelStatusResponse()
    for v, state, err in core.servable_state_monitor.model_status(name, version):
        s = resp.model_version_status.add()
        s.version = v
        s.state = STATE_ENUM[state]
        s.status.SetInParent()
        if err is not None:
            s.status.error_code = int(err.code)
            s.status.error_message = err.message
    return resp


def get_model_status_with_model_spec(core, model_spec):
    if model_spec.WhichOneof("version_choice") == "version":
        return get_model_status(core, model_spec.name, model_spec.version.value)
    return get_model_status(core, model_spec.name)
