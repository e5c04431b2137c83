"""Front-end independent request handling shared by the REST and gRPC servers."""

from __future__ import annotations

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from .errors import Code, StatusError, invalid_argument
from .manager import AVAILABLE, END, LOADING, START, UNLOADING, ModelManager

STATE_ENUM = {
    START: get_model_status_pb2.ModelVersionStatus.START,
    LOADING: get_model_status_pb2.ModelVersionStatus.LOADING,
    AVAILABLE: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
    UNLOADING: get_model_status_pb2.ModelVersionStatus.UNLOADING,
    END: get_model_status_pb2.ModelVersionStatus.END,
}
SIGNATURE_DEF_FIELD = "signature_def"


class ServingCore:
    """What TF Serving's handlers do around ServerCore."""

    def __init__(self, manager: ModelManager, batcher=None):
        self.manager = manager
        self.batcher = batcher

    # ------------------------------------------------------------------ status
    def model_status(self, name: str, version: int | None = None):
        """GetModelStatusImpl: labels are not resolved (TF Serving ignores version_label here)."""
        resp = get_model_status_pb2.GetModelStatusResponse()
        for v, state, err in self.manager.model_status(name, version):
            s = resp.model_version_status.add()
            s.version = v
            s.state = STATE_ENUM[state]
            s.status.SetInParent()
            if err is not None:
                s.status.error_code = int(err.code)
                s.status.error_message = err.message
        return resp

    def model_status_spec(self, model_spec):
        if model_spec.WhichOneof("version_choice") == "version":
            return self.model_status(model_spec.name, model_spec.version.value)
        return self.model_status(model_spec.name)

    # ------------------------------------------------------------------ metadata
    def metadata(self, model_spec, metadata_fields) -> object:
        if not metadata_fields:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for f in metadata_fields:
            if f != SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {f} is not supported")
        servable = self.manager.acquire_spec(model_spec)
        try:
            resp = get_model_metadata_pb2.GetModelMetadataResponse()
            resp.model_spec.name = servable.name
            resp.model_spec.version.value = servable.version
            resp.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_def_map())
            return resp
        finally:
            servable.release()


def status_json(resp) -> bytes:
    return json_format.MessageToJson(resp, always_print_fields_with_no_presence=True, indent=1).encode() + b"\n"


def metadata_json(resp) -> bytes:
    """http_rest_api_util.cc ToJsonString(GetModelMetadataResponse)."""
    spec = json_format.MessageToJson(resp.model_spec, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True, indent=1)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    if not resp.metadata[SIGNATURE_DEF_FIELD].Unpack(sig_map):
        raise StatusError(Code.INTERNAL, "Failed to unpack 'Any' object to 'SignatureDefMap'.")
    sigs = json_format.MessageToJson(sig_map, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True, indent=1)
    return ("{\n\"model_spec\":" + spec + ",\n\"metadata\": {\"signature_def\": " + sigs + "}\n}\n").encode()
