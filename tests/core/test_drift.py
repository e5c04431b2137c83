"""Drift by model (tfmlops.drift): every kind of input gives no drift on data of the same
population and a clear, named drift when moved; predictions by task; quality by task; the
profile survives JSON; bad inputs are refused naming the input."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tfmlops import drift, model_data, modelspec
from tfmlops.modelspec import ModelSpec
from tfmlops.simulate import rotate

ROOT = Path(__file__).resolve().parents[2]
NO_DRIFT = 0.1
DRIFT = 0.25


def _load(name: str, uri: str):
    spec = modelspec.read_spec(f"tfmlops_examples.{name}")
    module = modelspec.import_module(f"tfmlops_examples.{name}")
    data, _ = model_data.load(spec, module, uri)
    return spec, module, data


def _outputs(spec: ModelSpec, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Outputs shaped as the task's model gives them, roughly agreeing with the labels."""
    n = len(labels)
    if spec.task == "multiclass":
        logits = rng.normal(size=(n, spec.num_classes))
        logits[np.arange(n), labels.astype(int)] += 3.0
        e = np.exp(logits)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    if spec.task == "binary":
        return np.clip(0.3 + 0.4 * labels + rng.normal(0, 0.15, n), 0, 1).astype(np.float32)
    return (labels + rng.normal(0, 20, n)).astype(np.float32)


def _assert_no_drift(m: dict):
    worst = {s: f["psi"] for s, f in m["features"].items() if f["psi"] >= NO_DRIFT}
    assert not worst, worst
    assert m["input_psi_max"] < NO_DRIFT
    assert m["prediction_psi"] < NO_DRIFT


def _roundtrip_same(profile: dict, features: dict, outputs: np.ndarray, module=None):
    again = json.loads(json.dumps(profile, allow_nan=False))
    assert drift.measure(again, features, outputs, module) == drift.measure(profile, features, outputs, module)


@pytest.fixture(scope="module")
def churn():
    return _load("churn", "examples/churn.parquet")


@pytest.fixture(scope="module")
def churn_profile(churn):
    spec, module, data = churn
    rng = np.random.default_rng(0)
    return drift.build_profile(spec, data.train.features, _outputs(spec, data.train.labels, rng), module,
                               source="churn train")


# --------------------------------------------------------------------------- tabular: churn
def test_churn_kinds_and_no_drift(churn, churn_profile):
    spec, module, data = churn
    kinds = {name: d["kind"] for name, d in churn_profile["inputs"].items()}
    assert kinds == {"tenure_months": "numeric", "monthly_charges": "numeric", "support_calls": "categorical",
                     "plan": "categorical", "region": "categorical"}
    assert churn_profile["prediction"]["kind"] == "probability"
    assert churn_profile["rows"] == len(data.train) and churn_profile["source"] == "churn train"
    m = drift.measure(churn_profile, data.test.features, _outputs(spec, data.test.labels, np.random.default_rng(1)))
    _assert_no_drift(m)
    assert set(m["features"]) == set(spec.inputs) and len(m["top"]) == 5
    assert [p for _, p in m["top"]] == sorted((p for _, p in m["top"]), reverse=True)
    _roundtrip_same(churn_profile, data.test.features, _outputs(spec, data.test.labels, np.random.default_rng(1)))


def test_churn_numeric_shift_tops_the_report(churn, churn_profile):
    spec, _, data = churn
    features = dict(data.test.features)
    features["monthly_charges"] = features["monthly_charges"] * 1.5
    m = drift.measure(churn_profile, features, _outputs(spec, data.test.labels, np.random.default_rng(1)))
    assert m["top"][0][0] == "monthly_charges" and m["top"][0][1] > DRIFT
    assert m["input_psi_worst"] == "monthly_charges"
    moved = m["features"]["monthly_charges"]
    assert moved["mean"] > 1.3 * moved["reference_mean"]
    assert all(f["psi"] < NO_DRIFT for s, f in m["features"].items() if s != "monthly_charges")


def test_churn_category_share_and_unseen_category(churn, churn_profile):
    spec, _, data = churn
    outputs = _outputs(spec, data.test.labels, np.random.default_rng(1))
    plans = list(churn_profile["stats"]["plan"]["shares"])
    features = dict(data.test.features)
    features["plan"] = np.where(features["plan"] == plans[0].encode(), plans[1].encode(), features["plan"])
    m = drift.measure(churn_profile, features, outputs)
    assert m["top"][0][0] == "plan" and m["top"][0][1] > DRIFT
    plan = m["features"]["plan"]
    assert plan["kind"] == "categorical" and plan["shares"][plans[0]] == 0.0
    assert {c["category"] for c in plan["moved"][:2]} == {plans[0], plans[1]}

    features["plan"] = data.test.features["plan"].copy()
    features["plan"][: len(features["plan"]) // 3] = b"enterprise"
    plan = drift.measure(churn_profile, features, outputs)["features"]["plan"]
    assert plan["psi"] > DRIFT and plan["unseen_share"] == pytest.approx(1 / 3, abs=0.01)
    assert plan["moved"][0]["category"] == drift.UNSEEN and plan["unseen_values"][0][0] == "enterprise"


def test_int_category_moves(churn, churn_profile):
    spec, _, data = churn
    features = dict(data.test.features)
    features["support_calls"] = features["support_calls"] + 3
    m = drift.measure(churn_profile, features, _outputs(spec, data.test.labels, np.random.default_rng(1)))
    assert m["top"][0][0] == "support_calls"
    assert m["features"]["support_calls"]["kind"] == "categorical"


# ---------------------------------------------------------------------- regression: diabetes
def test_diabetes_numeric_columns_and_value_predictions():
    spec, module, data = _load("diabetes", "examples/diabetes")
    features = {k: np.concatenate([data.train.features[k], data.validation.features[k], data.test.features[k]])
                for k in spec.inputs}
    labels = np.concatenate([data.train.labels, data.validation.labels, data.test.labels])
    rng = np.random.default_rng(0)
    outputs = _outputs(spec, labels, rng)
    profile = drift.build_profile(spec, features, outputs, module)
    assert {d["kind"] for d in profile["inputs"].values()} == {"numeric"}
    assert profile["prediction"]["kind"] == "value"
    same = rng.permutation(len(labels))  # the same rows in another order: no drift at all
    m = drift.measure(profile, {k: v[same] for k, v in features.items()}, outputs[same])
    assert m["input_psi_max"] < 1e-9 and m["prediction_psi"] < 1e-9
    resample = rng.choice(len(labels), size=len(labels))  # a bootstrap resample: noise only
    _assert_no_drift(drift.measure(profile, {k: v[resample] for k, v in features.items()}, outputs[resample]))

    shifted = {**features, "bmi": features["bmi"] + 0.05}  # about one standard deviation
    m = drift.measure(profile, shifted, outputs + 60)
    assert m["top"][0][0] == "bmi" and m["top"][0][1] > DRIFT
    assert m["prediction_psi"] > DRIFT
    q, q0 = m["prediction"]["quantiles"], m["prediction"]["reference_quantiles"]
    assert list(q) == ["p5", "p25", "p50", "p75", "p95"]
    assert q["p50"] == pytest.approx(q0["p50"] + 60, abs=1e-3)
    _roundtrip_same(profile, shifted, outputs + 60)


# ------------------------------------------------------------------------------ text: reviews
def test_reviews_text_length_and_oov():
    spec, module, data = _load("reviews", "examples/reviews.jsonl")
    rng = np.random.default_rng(0)
    profile = drift.build_profile(spec, data.train.features, _outputs(spec, data.train.labels, rng), module)
    assert profile["inputs"]["text"] == {"dtype": "string", "shape": [], "kind": "text",
                                         "stats": ["text.length", "text.oov"]}
    oov_ref = profile["stats"]["text.oov"]["oov_rate_reference"]
    outputs = _outputs(spec, data.test.labels, rng)
    m = drift.measure(profile, data.test.features, outputs)
    _assert_no_drift(m)
    assert m["features"]["text.oov"]["oov_rate"] < oov_ref + 0.02

    texts = data.test.features["text"]
    novel = np.array([" ".join(f"zork{i % 97}qux" if j % 2 else w for j, w in enumerate(t.decode().split()))
                      for i, t in enumerate(texts)], dtype=object)
    m = drift.measure(profile, {"text": novel}, outputs)
    oov = m["features"]["text.oov"]
    assert oov["oov_rate"] > 0.3 > oov["oov_rate_reference"] and oov["psi"] > DRIFT
    assert m["top"][0][0] == "text.oov" and oov["unseen_tokens"][0][0].startswith("zork")
    assert m["features"]["text.length"]["psi"] < NO_DRIFT  # the same number of words

    longer = np.array([t + b" " + t + b" " + t for t in texts], dtype=object)
    m = drift.measure(profile, {"text": longer}, outputs)
    assert m["top"][0][0] == "text.length" and m["top"][0][1] > DRIFT
    _roundtrip_same(profile, {"text": novel}, outputs)


# ------------------------------------------------------------------------- images: digits_cnn
def test_digits_image_channels():
    spec, module, data = _load("digits_cnn", "sklearn-digits")
    rng = np.random.default_rng(0)
    profile = drift.build_profile(spec, data.train.features, _outputs(spec, data.train.labels, rng), module)
    assert profile["inputs"]["image"]["kind"] == "image"
    assert profile["inputs"]["image"]["stats"] == ["image.mean", "image.std"]
    outputs = _outputs(spec, data.test.labels, rng)
    _assert_no_drift(drift.measure(profile, data.test.features, outputs))
    bright = {"image": np.clip(data.test.features["image"] + 0.2, 0, 1)}
    m = drift.measure(profile, bright, outputs)
    assert m["top"][0][0] == "image.mean" and m["top"][0][1] > DRIFT
    assert m["features"]["image.mean"]["input"] == "image"


# ---------------------------------------------------------------------- MNIST: module's statistics
@pytest.fixture(scope="module")
def mnist():
    spec = modelspec.read_spec("tfmlops_examples.mnist_mlp")
    module = modelspec.import_module("tfmlops_examples.mnist_mlp")
    raw = gzip.decompress((ROOT / "data" / "mnist" / "t10k-images.idx3-ubyte.gz").read_bytes())
    images = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:6000]
    labels = np.frombuffer(gzip.decompress((ROOT / "data" / "mnist" / "t10k-labels.idx1-ubyte.gz").read_bytes()),
                           dtype=np.uint8, offset=8)[:6000].astype(np.int64)
    return spec, module, images, labels


def test_mnist_module_statistics_replace_the_defaults_and_see_a_rotation(mnist):
    spec, module, images, labels = mnist
    pixels = (images.reshape(-1, 784) / 255.0).astype(np.float32)
    rng = np.random.default_rng(0)
    outputs = _outputs(spec, labels, rng)
    ref, live = slice(0, 3000), slice(3000, 6000)
    profile = drift.build_profile(spec, {"pixels": pixels[ref]}, outputs[ref], module)
    moments = [f"pixels.{s}" for s in ("mean", "ink", "cx", "cy", "var_x", "var_y", "cov_xy")]
    assert profile["inputs"]["pixels"]["kind"] == "module" and profile["inputs"]["pixels"]["stats"] == moments
    assert {s["kind"] for s in profile["stats"].values()} == {"module"}
    _assert_no_drift(drift.measure(profile, {"pixels": pixels[live]}, outputs[live], module))

    rotated = (rotate(images[live], 30).reshape(-1, 784) / 255.0).astype(np.float32)
    m = drift.measure(profile, {"pixels": rotated}, outputs[live], module)
    assert m["features"]["pixels.cov_xy"]["psi"] > DRIFT
    assert "pixels.cov_xy" in [s for s, _ in m["top"][:2]]
    assert m["features"]["pixels.mean"]["psi"] < NO_DRIFT  # a rotation keeps the intensity
    _roundtrip_same(profile, {"pixels": rotated}, outputs[live], module)

    with pytest.raises(ValueError, match="DRIFT_STATISTICS"):
        drift.measure(profile, {"pixels": rotated}, outputs[live])

    plain = drift.build_profile(spec, {"pixels": pixels[ref]}, outputs[ref])  # no module: the vector's summaries
    assert plain["inputs"]["pixels"]["kind"] == "vector"
    assert plain["inputs"]["pixels"]["stats"] == ["pixels.mean", "pixels.std"]
    noisy = np.clip(pixels[live] + np.random.default_rng(2).normal(0, 0.3, pixels[live].shape), 0, 1)
    m = drift.measure(plain, {"pixels": noisy.astype(np.float32)}, outputs[live])
    assert m["features"]["pixels.mean"]["psi"] > DRIFT and m["features"]["pixels.mean"]["kind"] == "vector"


# ------------------------------------------------------------------- every kind, synthetic
def _every_kind(n: int, rng: np.random.Generator, words: int = 400) -> dict:
    vocab = np.array([f"w{i}" for i in range(words)], dtype=object)
    return {
        "amount": rng.lognormal(3, 1, n).astype(np.float32),
        "count": rng.integers(0, 1000, n).astype(np.int64),
        "level": rng.integers(0, 5, n).astype(np.int64),
        "color": rng.choice(np.array([b"red", b"green", b"blue"], dtype=object), n, p=[0.5, 0.3, 0.2]),
        "note": np.array([" ".join(rng.choice(vocab, rng.integers(3, 12))) for _ in range(n)], dtype=object),
        "tags": rng.choice(vocab[:60], (n, 3)),
        "photo": rng.uniform(0, 1, (n, 4, 4, 3)).astype(np.float32),
        "gray": rng.uniform(0, 1, (n, 6, 6)).astype(np.float32),
        "series": rng.normal(0, 1, (n, 5)).astype(np.float32),
    }


SYNTHETIC = ModelSpec(module="synthetic", source_sha256="", task="multiclass", label="y", class_names=["a", "b", "c"],
                      inputs={"amount": ("float32", ()), "count": ("int64", ()), "level": ("int64", ()),
                              "color": ("string", ()), "note": ("string", ()), "tags": ("string", (3,)),
                              "photo": ("float32", (4, 4, 3)), "gray": ("float32", (6, 6)),
                              "series": ("float32", (5,))})


def _probs(n: int, rng: np.random.Generator, prior=(0.5, 0.3, 0.2)) -> np.ndarray:
    p = np.full((n, 3), 0.1)
    p[np.arange(n), rng.choice(3, n, p=prior)] = 0.8
    return p


def test_every_kind_decided_from_spec_and_data():
    rng = np.random.default_rng(0)
    profile = drift.build_profile(SYNTHETIC, _every_kind(3000, rng), _probs(3000, rng))
    kinds = {name: d["kind"] for name, d in profile["inputs"].items()}
    assert kinds == {"amount": "numeric", "count": "numeric", "level": "categorical", "color": "categorical",
                     "note": "text", "tags": "text", "photo": "image", "gray": "image", "series": "vector"}
    assert profile["inputs"]["photo"]["stats"] == [f"photo.c{k}.{s}" for k in range(3) for s in ("mean", "std")]
    assert profile["inputs"]["gray"]["stats"] == ["gray.mean", "gray.std"]
    assert profile["stats"]["level"]["shares"].keys() == {"0", "1", "2", "3", "4"}
    assert profile["prediction"]["kind"] == "classes"

    live = _every_kind(2000, rng)
    outputs = _probs(2000, rng)
    _assert_no_drift(drift.measure(profile, live, outputs))
    _roundtrip_same(profile, live, outputs)

    moved = dict(live)
    moved["photo"] = live["photo"].copy()
    moved["photo"][..., 1] *= 0.5  # the green channel darker
    m = drift.measure(profile, moved, outputs)
    assert m["top"][0][0] == "photo.c1.mean"
    assert m["features"]["photo.c0.mean"]["psi"] < NO_DRIFT

    moved = {**live, "amount": np.where(rng.uniform(size=2000) < 0.3, np.nan, live["amount"]).astype(np.float32)}
    m = drift.measure(profile, moved, outputs)
    assert m["top"][0][0] == "amount" and m["features"]["amount"]["missing"] == pytest.approx(0.3, abs=0.05)


def test_profile_is_strict_json_and_bounded():
    rng = np.random.default_rng(0)
    features = _every_kind(500, rng, words=30_000)
    profile = drift.build_profile(SYNTHETIC, features, _probs(500, rng), max_rows=300)
    assert profile["rows"] == 500 and profile["rows_used"] == 300
    json.dumps(profile, allow_nan=False)
    assert len(profile["stats"]["note.oov"]["vocabulary"]) <= drift.MAX_VOCAB
    # an unknown-word-heavy reference: its held-out OOV rate is high, so the same population is no drift
    assert profile["stats"]["note.oov"]["oov_rate_reference"] > 0.5
    m = drift.measure(profile, _every_kind(500, rng, words=30_000), _probs(500, rng), max_rows=400)
    assert m["rows_used"] == 400 and m["features"]["note.oov"]["psi"] < NO_DRIFT


# ----------------------------------------------------------------------------- predictions
def _scalar_spec(task: str) -> ModelSpec:
    return ModelSpec(module="m", source_sha256="", task=task, inputs={"x": ("float32", ())}, label="y",
                     class_names=["no", "yes"] if task == "binary" else [])


def test_multiclass_prediction_histogram():
    rng = np.random.default_rng(0)
    x = {"x": rng.normal(size=4000).astype(np.float32)}
    profile = drift.build_profile(replace(SYNTHETIC, inputs={"x": ("float32", ())}), x, _probs(4000, rng))
    same = drift.measure(profile, x, _probs(4000, rng))
    assert same["prediction_psi"] < NO_DRIFT
    assert same["prediction"]["reference"]["a"] == pytest.approx(0.5, abs=0.03)
    m = drift.measure(profile, x, _probs(4000, rng, prior=(0.2, 0.3, 0.5)))
    assert m["prediction_psi"] > DRIFT and m["prediction"]["histogram"]["c"] == pytest.approx(0.5, abs=0.03)
    assert m["input_psi_max"] < 1e-9


def test_binary_prediction_bins_and_positive_share():
    rng = np.random.default_rng(0)
    x = {"x": rng.normal(size=3000).astype(np.float32)}
    p = rng.beta(2, 5, 3000)
    profile = drift.build_profile(_scalar_spec("binary"), x, p[:, None])  # [N, 1] is accepted too
    assert drift.measure(profile, x, rng.beta(2, 5, 3000))["prediction_psi"] < NO_DRIFT
    m = drift.measure(profile, x, rng.beta(5, 2, 3000))
    assert m["prediction_psi"] > DRIFT
    assert m["prediction"]["positive_share"] > 0.8 > 0.2 > m["prediction"]["reference_positive_share"]


def test_regression_prediction_quantiles():
    rng = np.random.default_rng(0)
    x = {"x": rng.normal(size=3000).astype(np.float32)}
    profile = drift.build_profile(_scalar_spec("regression"), x, rng.normal(100, 10, 3000))
    same = drift.measure(profile, x, rng.normal(100, 10, 3000))
    assert same["prediction_psi"] < NO_DRIFT and same["prediction"]["kind"] == "value"
    assert same["prediction"]["quantiles"]["p50"] == pytest.approx(100, abs=1)
    wide = drift.measure(profile, x, rng.normal(100, 30, 3000))
    assert wide["prediction_psi"] > DRIFT
    assert wide["prediction"]["quantiles"]["p95"] > wide["prediction"]["reference_quantiles"]["p95"] + 20


# ----------------------------------------------------------------------------------- quality
def _json_plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_plain(v) for v in value)
    return value is None or type(value) in (bool, int, float, str)


def test_quality_by_task():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 500)
    q = drift.quality("multiclass", y, np.eye(3)[y], 3)
    assert q["metric"] == "accuracy" and q["value"] == 1.0 and q["per_class"]["f1"] == [1.0, 1.0, 1.0]
    assert _json_plain(q) and q["rows"] == 500

    yb = rng.integers(0, 2, 30_000)
    q = drift.quality("binary", yb, np.clip(0.3 + 0.4 * yb + rng.normal(0, 0.2, 30_000), 0, 1), 2)
    assert q["metric"] == "auc" and q["value"] > 0.8 and q["rows"] == 30_000 and q["rows_used"] == drift.MAX_ROWS
    assert len(q["roc"]["fpr"]) <= drift.MAX_ROC_POINTS and q["roc"]["tpr"][-1] == 1.0
    assert _json_plain(q)

    yr = rng.normal(0, 1, 200)
    q = drift.quality("regression", yr, yr + 0.5, 0)
    assert q["metric"] == "rmse" and q["value"] == pytest.approx(0.5) and _json_plain(q)
    json.dumps(q, allow_nan=False)

    with pytest.raises(ValueError, match="class indices"):
        drift.quality("multiclass", [0, 3], np.eye(3)[[0, 1]], 3)
    with pytest.raises(ValueError, match="outputs for"):
        drift.quality("binary", [0, 1, 1], [0.1, 0.9], 2)


# ------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_name_the_input(churn, churn_profile):
    spec, _, data = churn
    outputs = _outputs(spec, data.test.labels, np.random.default_rng(1))
    features = dict(data.test.features)
    with pytest.raises(ValueError, match=r"miss the input\(s\) \['plan'\]"):
        drift.measure(churn_profile, {k: v for k, v in features.items() if k != "plan"}, outputs)
    with pytest.raises(ValueError, match="input 'tenure_months' has shape"):
        drift.measure(churn_profile, {**features, "tenure_months": features["tenure_months"][:, None]}, outputs)
    with pytest.raises(ValueError, match="input 'monthly_charges' is float32 in the spec"):
        drift.measure(churn_profile, {**features, "monthly_charges": features["plan"]}, outputs)
    with pytest.raises(ValueError, match="input 'region' has 10 rows"):
        drift.measure(churn_profile, {**features, "region": features["region"][:10]}, outputs)
    with pytest.raises(ValueError, match="outputs for"):
        drift.measure(churn_profile, features, outputs[:5])
    with pytest.raises(ValueError, match="no rows"):
        drift.build_profile(spec, {k: v[:0] for k, v in features.items()}, outputs[:0])
    with pytest.raises(ValueError, match=r"multiclass outputs are class probabilities \[rows, 3\]"):
        drift.build_profile(SYNTHETIC, _every_kind(10, np.random.default_rng(0)), np.zeros((10, 2)))

    class Broken:
        @staticmethod
        def DRIFT_STATISTICS(features):  # noqa: N802 - the hook's name
            return {"tenure_months.log": np.zeros(3)}

    with pytest.raises(ValueError, match=r"statistic 'tenure_months.log' has shape \[3\]"):
        drift.build_profile(spec, features, outputs, Broken)
