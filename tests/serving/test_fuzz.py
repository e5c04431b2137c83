"""Fuzzing tf-serving-local: a few thousand random and mutated REST bodies and gRPC messages (a
fixed seed, so a failure reproduces). The server must answer each one with a client error or a
result — never 500 / INTERNAL / UNKNOWN — and must still be alive and serving at the end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from tensorflow_serving.apis import classification_pb2, get_model_metadata_pb2, predict_pb2, regression_pb2

from tfmlops.serving.tensors import make_tensor_proto

from ._proc import ServerProcess
from .conftest import model_entry

SEED = 20261130
# Bytes that are not a protobuf message at all never reach the server's code: gRPC's transport
# answers INTERNAL "Exception deserializing request!" (C++ gRPC, i.e. TF Serving, answers INTERNAL
# too). Every other INTERNAL/UNKNOWN would come from the server and fails the test.
TRANSPORT_PARSE_ERROR = "Exception deserializing request!"
REST_CASES = 2500
GRPC_CASES = 2500
BAD_GRPC = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


@pytest.fixture(scope="module")
def fuzz_server(store):
    cfg = store.path("fuzz.config")
    Path(cfg).write_text("model_config_list {" + model_entry("mlp", store.path("mlp"))
                         + model_entry("multi", store.path("multi")) + "}\n")
    with ServerProcess.running([f"--model_config_file={cfg}", "--rest_api_max_body_bytes=2000000"]) as srv:
        yield srv


SEEDS = [
    {"instances": [[1.0, 2.0, 3.0, 4.0]]},
    {"instances": [{"x": [1.0, 2.0, 3.0, 4.0]}], "signature_name": "two_outputs"},
    {"inputs": {"x": [[0.5, 0.5, 0.5, 0.5], [1, 2, 3, 4]]}},
    {"inputs": [[1.0, 2.0, 3.0, 4.0]]},
    {"examples": [{"x": [1.0]}], "context": {"y": "a"}},
    {"instances": [{"b64": "aGVsbG8="}]},
]
TOKENS = ['"', "[", "]", "{", "}", ",", ":", "null", "true", "NaN", "-Infinity", "1e999", "-0", '"\\u0000"',
          '{"b64": "!!"}', "[[[[", "]]]]", '"instances"', '"inputs"', "18446744073709551616", "\\", "\x00", "é"]
PATHS = ["/v1/models/mlp:predict", "/v1/models/mlp:classify", "/v1/models/mlp:regress",
         "/v1/models/multi:predict", "/v1/models/mlp/versions/1:predict", "/v1/models/mlp/labels/x:predict",
         "/v1/models/mlp/versions/99999999999999999999:predict", "/v1/models/mlp", "/v1/models/mlp/metadata"]


def mutate_text(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(text) + 1)
        op = rng.random()
        if op < 0.35:
            text = text[:pos] + rng.choice(TOKENS) + text[pos:]
        elif op < 0.6:
            text = text[:pos] + text[pos + rng.randint(1, 5):]
        elif op < 0.8:
            text = text[:pos]
        else:
            text = text[:pos] + str(rng.choice([0, -1, 1e308, 2**64, "x", None])) + text[pos:]
    return text


def random_doc(rng: random.Random, depth: int = 0):
    kind = rng.random()
    if depth > 4 or kind < 0.3:
        return rng.choice([0, 1.5, -3, "s", True, None, 1e300, [], {}])
    if kind < 0.65:
        return [random_doc(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["instances", "inputs", "x", "signature_name", "b64", "examples", "context"]):
            random_doc(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def rest_bodies(rng: random.Random):
    for i in range(REST_CASES):
        if i % 3 == 0:
            yield json.dumps(random_doc(rng)).encode()
        elif i % 3 == 1:
            yield mutate_text(rng, json.dumps(rng.choice(SEEDS))).encode("utf-8", "surrogatepass")
        else:
            raw = bytearray(json.dumps(rng.choice(SEEDS)).encode())
            for _ in range(rng.randint(1, 6)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            yield bytes(raw)


def test_random_and_mutated_rest_bodies_never_get_a_500(fuzz_server):
    rng = random.Random(SEED)
    session = requests.Session()
    seen: dict[int, int] = {}
    failures = []
    for body in rest_bodies(rng):
        path = rng.choice(PATHS)
        method = "POST" if ":" in path else rng.choice(["GET", "POST"])
        got = session.request(method, f"http://127.0.0.1:{fuzz_server.rest_port}{path}", data=body, timeout=60)
        seen[got.status_code] = seen.get(got.status_code, 0) + 1
        if got.status_code >= 500 or not got.headers.get("Content-Type", "").startswith("application/json"):
            failures.append((method, path, body[:200], got.status_code, got.text[:300]))
    print("REST status counts:", dict(sorted(seen.items())))
    assert not failures, failures[:5]
    assert seen.get(200, 0) > 0 and seen.get(400, 0) > REST_CASES // 2  # both kinds exercised
    assert fuzz_server.proc.poll() is None


def grpc_messages(rng: random.Random):
    good = predict_pb2.PredictRequest()
    good.model_spec.name = "mlp"
    make_tensor_proto(np.ones((2, 4), np.float32), good.inputs["x"])
    columnar = predict_pb2.PredictRequest()
    columnar.model_spec.name = "multi"
    columnar.model_spec.signature_name = "serving_default"
    make_tensor_proto(np.ones((3, 4), np.float32), columnar.inputs["x"])
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "mlp"
    classify.input.example_list.examples.add().features.feature["x"].float_list.value.extend([1.0, 2.0])
    regress = regression_pb2.RegressionRequest()
    regress.CopyFrom(regression_pb2.RegressionRequest(model_spec=classify.model_spec, input=classify.input))
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "mlp"
    seeds = [("Predict", good), ("Predict", columnar), ("Classify", classify), ("Regress", regress),
             ("GetModelMetadata", metadata)]
    for i in range(GRPC_CASES):
        if i % 2:
            yield "Predict", structured_predict(rng).SerializeToString()
            continue
        method, seed = rng.choice(seeds)
        raw = bytearray(seed.SerializeToString())
        for _ in range(rng.randint(1, 2)):
            op, pos = rng.random(), rng.randrange(len(raw))
            if op < 0.5:
                raw[pos] = rng.randrange(256)
            elif op < 0.7:
                del raw[pos:pos + rng.randint(1, 8)]
            elif op < 0.9:
                raw[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            else:
                raw = raw[:pos]
            if not raw:
                raw = bytearray(b"\x0a")
        yield method, bytes(raw)


def structured_predict(rng: random.Random) -> predict_pb2.PredictRequest:
    """A well-formed PredictRequest with random contents: dtypes, shapes (negative, huge, overflowing),
    value lists shorter or longer than the shape, raw tensor_content, aliases, filters, specs."""
    req = predict_pb2.PredictRequest()
    req.model_spec.name = rng.choice(["mlp", "multi", "none", ""])
    if rng.random() < 0.3:
        req.model_spec.signature_name = rng.choice(["two_outputs", "serving_default", "nope", ""])
    if rng.random() < 0.2:
        req.model_spec.version.value = rng.choice([1, 2, -1, 2**62])
    for _ in range(rng.choice([1, 1, 1, 2, 0])):
        tensor = req.inputs[rng.choice(["x", "x", "y", ""])]
        tensor.dtype = rng.choice([1, 1, 1, 2, 3, 7, 9, 10, 19, 0, 99])
        for _ in range(rng.randint(0, 3)):
            tensor.tensor_shape.dim.add().size = rng.choice([0, 1, 2, 4, -1, 2**31, 2**40, rng.randint(0, 9)])
        if rng.random() < 0.2:
            tensor.tensor_shape.unknown_rank = True
        if rng.random() < 0.3:
            tensor.tensor_content = bytes(rng.randrange(256) for _ in range(rng.choice([0, 3, 16, 32, 33])))
        else:
            values = [rng.uniform(-1e3, 1e3) for _ in range(rng.randint(0, 12))]
            kind = rng.random()
            if kind < 0.6:
                tensor.float_val.extend(values)
            elif kind < 0.75:
                tensor.int64_val.extend(int(v) for v in values)
            elif kind < 0.9:
                tensor.string_val.extend(str(v).encode() for v in values)
            else:
                tensor.half_val.extend(int(abs(v)) for v in values)
    if rng.random() < 0.2:
        req.output_filter.extend(rng.sample(["y", "total", "nope", "y"], rng.randint(1, 3)))
    return req


def test_mutated_grpc_messages_never_get_internal_errors(fuzz_server):
    rng = random.Random(SEED)
    channel = grpc.insecure_channel(f"127.0.0.1:{fuzz_server.grpc_port}")
    calls = {}
    seen: dict[str, int] = {}
    failures = []
    for method, raw in grpc_messages(rng):
        call = calls.get(method) or calls.setdefault(method, channel.unary_unary(
            f"/tensorflow.serving.PredictionService/{method}", request_serializer=None,
            response_deserializer=None))
        try:
            call(raw, timeout=60)
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code = err.code()
            if code in BAD_GRPC and err.details() != TRANSPORT_PARSE_ERROR:
                failures.append((method, raw[:80], code, err.details()[:300]))
        seen[code.name] = seen.get(code.name, 0) + 1
    channel.close()
    print("gRPC status counts:", dict(sorted(seen.items())))
    assert not failures, failures[:5]
    assert seen.get("OK", 0) > 0 and seen.get("INVALID_ARGUMENT", 0) > 0
    assert fuzz_server.proc.poll() is None
    answer = requests.post(f"http://127.0.0.1:{fuzz_server.rest_port}/v1/models/mlp:predict",
                           json={"instances": [[1.0, 2.0, 3.0, 4.0]]}, timeout=30)
    assert answer.status_code == 200
