"""tfmlops.feedback.read_request_logs on each kind of logged record, written as TF Serving writes
them: Classify with an example list and a context, Predict of serialized tf.Example rows to the
classification signature, Regress, and records that do not fit the model (skipped with the reason)."""

from __future__ import annotations

import numpy as np
import pytest


def _example(**features):
    from tensorflow.core.example import example_pb2

    ex = example_pb2.Example()
    for name, value in features.items():
        f = ex.features.feature[name]
        if isinstance(value, str):
            f.bytes_list.value.append(value.encode())
        elif isinstance(value, int):
            f.int64_list.value.append(value)
        else:
            f.float_list.value.append(value)
    return ex


@pytest.fixture(scope="module")
def churn():
    from tfmlops import modelspec

    return modelspec.read_spec("tfmlops_examples.churn")


def _write(path, records) -> str:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r.SerializeToString())
    return str(path)


def test_each_record_kind_is_read_by_the_spec_and_misfits_are_skipped(churn, tmp_path):
    from tensorflow_serving.apis import prediction_log_pb2

    from tfmlops import feedback
    from tfmlops.serving.tensors import make_tensor_proto

    rows = [dict(tenure_months=3.0, monthly_charges=70.5, support_calls=2, plan="basic"),
            dict(tenure_months=40.0, monthly_charges=20.0, support_calls=0, plan="pro")]
    # Classify: two examples sharing a context (region), answered with labelled scores
    classify = prediction_log_pb2.PredictionLog()
    classify.log_metadata.request_origin = "c1"
    classify.log_metadata.model_spec.version.value = 3
    inp = classify.classify_log.request.input.example_list_with_context
    inp.context.CopyFrom(_example(region="north"))
    for r in rows:
        inp.examples.add().CopyFrom(_example(**r))
    for p in (0.8, 0.3):
        c = classify.classify_log.response.result.classifications.add()
        c.classes.add(label="stays", score=1 - p)
        c.classes.add(label="churns", score=p)
    # Predict of serialized examples to the classification signature
    predict = prediction_log_pb2.PredictionLog()
    predict.log_metadata.request_origin = "p1"
    serialized = np.array([_example(**rows[0], region="south").SerializeToString()], dtype=object)
    make_tensor_proto(serialized, predict.predict_log.request.inputs["inputs"])
    make_tensor_proto(np.array([[0.4, 0.6]], np.float32), predict.predict_log.response.outputs["scores"])
    # another model's request and an example missing a feature: skipped, with the reason
    other = prediction_log_pb2.PredictionLog()
    other.log_metadata.request_origin = "x1"
    make_tensor_proto(np.zeros((1, 784), np.float32), other.predict_log.request.inputs["pixels"])
    missing = prediction_log_pb2.PredictionLog()
    missing.log_metadata.request_origin = "x2"
    missing.classify_log.request.input.example_list.examples.add().CopyFrom(_example(**rows[0]))

    problems: list[str] = []
    got = feedback.read_request_logs([_write(tmp_path / "log.tfrecord", [classify, predict, other, missing])],
                                     churn, problems)
    assert sorted(got) == ["c1", "p1"]
    c1 = got["c1"]
    assert c1["rows"] == 2 and c1["model_version"] == 3
    assert list(c1["features"]["region"]) == [b"north", b"north"]  # from the context
    assert c1["features"]["support_calls"].dtype == np.int64 and list(c1["features"]["plan"]) == [b"basic", b"pro"]
    assert np.allclose(c1["outputs"], [0.8, 0.3])  # binary: the positive class's probability
    assert list(got["p1"]["features"]["region"]) == [b"south"] and np.allclose(got["p1"]["outputs"], [0.6])
    assert len(problems) == 2
    assert "the request has inputs ['pixels']" in problems[0] and "x1" in problems[0]
    assert "has no feature 'region'" in problems[1] and "x2" in problems[1]


def test_regress_records_and_numeric_labels_join_for_a_regressor(tmp_path):
    from tensorflow_serving.apis import prediction_log_pb2

    from tfmlops import feedback, modelspec

    spec = modelspec.read_spec("tfmlops_examples.diabetes")
    regress = prediction_log_pb2.PredictionLog()
    regress.log_metadata.request_origin = "r1"
    regress.regress_log.request.input.example_list.examples.add().CopyFrom(
        _example(**{name: 0.01 * i for i, name in enumerate(spec.inputs)}))
    regress.regress_log.response.result.regressions.add().value = 151.5
    requests = feedback.read_request_logs([_write(tmp_path / "log.tfrecord", [regress])], spec)
    assert np.allclose(requests["r1"]["outputs"], [151.5]) and np.isclose(requests["r1"]["features"]["bmi"][0], 0.02)
    labels_file = tmp_path / "labels.jsonl"
    labels_file.write_text('{"request_id": "r1", "label": 140.25}\n{"request_id": "r2", "label": "high"}\n')
    labels, problems = feedback.read_labels(str(labels_file), numeric=True)
    assert labels == {"r1": [140.25]} and "finite numbers" in problems[0]
    joined = feedback.join(requests, labels, spec)
    assert joined["joined_ids"] == ["r1"] and joined["y"].dtype == np.float32 and joined["y"][0] == 140.25
