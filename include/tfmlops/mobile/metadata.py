"""TFLite model metadata, written and read the way tflite-support's ``MetadataPopulator`` /
``MetadataDisplayer`` do it, without tflite-support (it requires protobuf<4, which TensorFlow 2.21
and Airflow cannot share):

- the metadata is a ``ModelMetadata`` FlatBuffer (schema ``metadata_schema.fbs``, file identifier
  ``M001``; the generated code is vendored in :mod:`.metadata_schema_py_generated`);
- it goes into a new buffer of the model, referenced by the model's ``metadata`` entry named
  ``TFLITE_METADATA`` (the model is re-packed with LiteRT's own ``schema_py_generated``);
- associated files (``labels.txt``) are a zip archive appended to the flatbuffer: the ``.tflite``
  stays loadable by every interpreter and is also a zip file — what Android Studio's ML model
  binding, the LiteRT support library's ``MetadataExtractor`` and tflite-support read.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field

import flatbuffers
import numpy as np

from tfmlops.mobile import metadata_schema_py_generated as schema

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
MODEL_IDENTIFIER = b"TFL3"
# Every field written here exists since metadata schema 1.0.0 (tflite-support computes the same
# minimum for them); a parser older than this must refuse the metadata.
MIN_PARSER_VERSION = "1.0.0"
# the associated-file types a label file is written as, with the description written for each
LABEL_TYPES = {"TENSOR_AXIS_LABELS": "One class name per line, in output order.",
               "DESCRIPTIONS": "The class names, one per line: the negative class (output near 0), then the "
                               "positive class (output near 1)."}


class MetadataError(ValueError):
    """A model without (valid) TFLite metadata, or metadata that does not describe it."""


@dataclass
class TensorInfo:
    """What the metadata says about one tensor."""

    name: str
    description: str
    mean: list[float] | None = None  # normalization: (x - mean) / std, before quantization
    std: list[float] | None = None
    min: list[float] | None = None  # range of the (normalized) values
    max: list[float] | None = None
    label_file: str | None = None  # an associated file of class names, one per line
    # TENSOR_AXIS_LABELS: one name per element of the tensor's last axis (softmax probabilities);
    # DESCRIPTIONS: names that do not map onto the axis (a binary model's one probability: negative,
    # positive) — ML model binding would refuse axis labels whose count is not the axis size
    label_type: str = "TENSOR_AXIS_LABELS"


@dataclass
class ModelInfo:
    name: str
    description: str
    version: str
    author: str
    license: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    files: dict[str, bytes] = field(default_factory=dict)  # associated files, by name
    min_parser_version: str | None = None


def _tensor_metadata(info: TensorInfo) -> schema.TensorMetadataT:
    tensor = schema.TensorMetadataT()
    tensor.name, tensor.description = info.name, info.description
    tensor.content = schema.ContentT()
    tensor.content.contentPropertiesType = schema.ContentProperties.FeatureProperties
    tensor.content.contentProperties = schema.FeaturePropertiesT()
    if info.mean is not None:
        options = schema.NormalizationOptionsT()
        options.mean, options.std = list(info.mean), list(info.std)
        unit = schema.ProcessUnitT()
        unit.optionsType, unit.options = schema.ProcessUnitOptions.NormalizationOptions, options
        tensor.processUnits = [unit]
    if info.min is not None:
        tensor.stats = schema.StatsT()
        tensor.stats.min, tensor.stats.max = list(info.min), list(info.max)
    if info.label_file:
        if info.label_type not in LABEL_TYPES:
            raise MetadataError(f"label_type {info.label_type!r} is not one of {list(LABEL_TYPES)}")
        labels = schema.AssociatedFileT()
        labels.name, labels.description = info.label_file, LABEL_TYPES[info.label_type]
        labels.type = getattr(schema.AssociatedFileType, info.label_type)
        tensor.associatedFiles = [labels]
    return tensor


def metadata_buffer(info: ModelInfo) -> bytes:
    """The ``ModelMetadata`` FlatBuffer (identifier ``M001``) for ``info``."""
    metadata = schema.ModelMetadataT()
    metadata.name, metadata.description, metadata.version = info.name, info.description, info.version
    metadata.author, metadata.license = info.author, info.license
    metadata.minParserVersion = MIN_PARSER_VERSION
    subgraph = schema.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [_tensor_metadata(t) for t in info.inputs]
    subgraph.outputTensorMetadata = [_tensor_metadata(t) for t in info.outputs]
    metadata.subgraphMetadata = [subgraph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(metadata.Pack(builder), METADATA_IDENTIFIER)
    return bytes(builder.Output())


def populate(model: bytes, info: ModelInfo) -> bytes:
    """``model`` with ``info`` as its TFLite metadata and ``info.files`` appended as a zip. Every
    file a tensor names must be given; an existing ``TFLITE_METADATA`` entry is replaced."""
    from ai_edge_litert import schema_py_generated as tflite

    named = {t.label_file for t in info.inputs + info.outputs if t.label_file}
    missing = named - set(info.files)
    if missing:
        raise MetadataError(f"the metadata names associated files that were not given: {sorted(missing)}")
    if not tflite.Model.ModelBufferHasIdentifier(model, 0):
        raise MetadataError("not a TFLite flatbuffer (no TFL3 identifier)")
    model_t = tflite.ModelT.InitFromObj(tflite.Model.GetRootAs(model, 0))
    buffer = tflite.BufferT()
    buffer.data = np.frombuffer(metadata_buffer(info), dtype=np.uint8)
    model_t.buffers = list(model_t.buffers or []) + [buffer]
    entry = tflite.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model_t.buffers) - 1
    kept = [m for m in (model_t.metadata or []) if _text(m.name) != METADATA_NAME]
    model_t.metadata = kept + [entry]
    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(model_t.Pack(builder), MODEL_IDENTIFIER)
    out = io.BytesIO(bytes(builder.Output()))
    if info.files:
        with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:  # appended after the flatbuffer
            for name, content in sorted(info.files.items()):
                archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), content)
    return out.getvalue()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def _floats(values) -> list[float] | None:
    return None if values is None or not len(values) else [float(v) for v in values]


def _tensor_info(tensor: schema.TensorMetadataT) -> TensorInfo:
    info = TensorInfo(_text(tensor.name), _text(tensor.description))
    for unit in tensor.processUnits or []:
        if unit.optionsType == schema.ProcessUnitOptions.NormalizationOptions:
            info.mean, info.std = _floats(unit.options.mean), _floats(unit.options.std)
    if tensor.stats is not None:
        info.min, info.max = _floats(tensor.stats.min), _floats(tensor.stats.max)
    for associated in tensor.associatedFiles or []:
        for label_type in LABEL_TYPES:
            if associated.type == getattr(schema.AssociatedFileType, label_type):
                info.label_file, info.label_type = _text(associated.name), label_type
    return info


def read(model: bytes) -> ModelInfo:
    """The metadata and associated files of a ``.tflite`` (what :func:`populate` wrote, or
    tflite-support's populator). Raises :class:`MetadataError` when there is none."""
    from ai_edge_litert import schema_py_generated as tflite

    if not tflite.Model.ModelBufferHasIdentifier(model, 0):
        raise MetadataError("not a TFLite flatbuffer (no TFL3 identifier)")
    root = tflite.Model.GetRootAs(model, 0)
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        if _text(entry.Name()) == METADATA_NAME:
            data = root.Buffers(entry.Buffer()).DataAsNumpy()
            break
    else:
        raise MetadataError(f"the model has no {METADATA_NAME} metadata entry")
    data = bytes(np.asarray(data, dtype=np.uint8))
    if not schema.ModelMetadata.ModelMetadataBufferHasIdentifier(data, 0):
        raise MetadataError(f"the {METADATA_NAME} buffer is not a ModelMetadata flatbuffer (no M001 identifier)")
    metadata = schema.ModelMetadataT.InitFromObj(schema.ModelMetadata.GetRootAs(data, 0))
    files = {}
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        pass  # no associated files
    subgraph = metadata.subgraphMetadata[0]
    return ModelInfo(_text(metadata.name), _text(metadata.description), _text(metadata.version),
                     _text(metadata.author), _text(metadata.license),
                     [_tensor_info(t) for t in subgraph.inputTensorMetadata or []],
                     [_tensor_info(t) for t in subgraph.outputTensorMetadata or []], files,
                     _text(metadata.minParserVersion))
