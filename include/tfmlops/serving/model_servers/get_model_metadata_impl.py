"""Model metadata requests, mirroring TF Serving's
``tensorflow_serving/model_servers/get_model_metadata_impl.cc``: ``signature_def`` is the only
metadata field; the answer names the version that served it and packs the version's
``SignatureDefMap``.

Shared by the gRPC ``PredictionService.GetModelMetadata`` and the REST
``GET /v1/models/{m}/metadata``.
"""

from __future__ import annotations

from tensorflow_serving.apis import get_model_metadata_pb2

from ..errors import invalid_argument

SIGNATURE_DEF_FIELD = "signature_def"


def get_model_metadata(core, model_spec, metadata_fields):
    if not metadata_fields:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for f in metadata_fields:
        if f != SIGNATURE_DEF_FIELD:
            raise invalid_argument(f"Metadata field {f} is not supported")
    servable = core.acquire_spec(model_spec)
    try:
        resp = get_model_metadata_pb2.GetModelMetadataResponse()
        resp.model_spec.name = servable.name
        resp.model_spec.version.value = servable.version
        resp.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_def_map())
        return resp
    finally:
        servable.release()
