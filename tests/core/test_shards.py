"""Sharded datasets streamed (tfmlops.shards), with the shipped examples' data written as shards:
an image model (nested fixed shapes), a tabular binary model with string columns, a regressor and a
text classifier; TFRecord and Parquet, local and on a real S3 endpoint (moto_server). Every row is
read exactly once per epoch, the one-pass profile matches NumPy on the whole split, and bad shards
are refused naming the shard and the record."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tfmlops import model_data, modelspec, shards
from tfmlops.data import DatasetError

EXAMPLES = {"digits_cnn": "sklearn:digits", "churn": "examples/churn.parquet", "diabetes": "examples/diabetes",
            "reviews": "examples/reviews.jsonl"}


@pytest.fixture(scope="module")
def examples():
    out = {}
    for name, uri in EXAMPLES.items():
        spec = modelspec.read_spec(f"tfmlops_examples.{name}")
        data, _ = model_data.load(spec, modelspec.import_module(spec.module), uri)
        out[name] = (spec, data)
    return out


def write(spec, data, root, fmt, rows_per_shard=97):
    for split in ("train", "test"):
        s = getattr(data, split)
        shards.write_shards(spec, root, split, [(s.features, s.labels)], fmt=fmt, rows_per_shard=rows_per_shard,
                            row_group_size=40)
    return str(root)


def scan(spec, layout, s3_client=None, reservoir=10_000, **kw):
    """Each split of ``layout`` read once as validate_data reads a streamed dataset: checked batch by
    batch (``StreamedSplit.batches``) and profiled (``shards.profile_split``)."""
    rng = np.random.default_rng(0)
    return {"splits": {name: shards.profile_split(
        spec, (b for _, b in model_data.ShardSplit(spec, layout, name, s3_client, **kw).batches()), rng, reservoir)
        for name in shards.SPLITS if name in layout.splits}}


def epoch(spec, layout, split, **kw):
    features, labels = {k: [] for k in spec.inputs}, []
    for x, y in shards.dataset(spec, layout, split, batch_size=32, **kw).as_numpy_iterator():
        for k in spec.inputs:
            features[k].append(x[k])
        labels.append(y)
    return {k: np.concatenate(v) for k, v in features.items()}, np.concatenate(labels)


def rows(features, labels, spec):
    """Each row as a hashable tuple (order-free comparison of two reads)."""
    def cell(x):
        x = np.asarray(x, dtype=object if isinstance(x, (bytes, str)) else None)
        if x.dtype != object:
            return x.astype(np.float64).tobytes()
        return b"|".join(v if isinstance(v, bytes) else v.encode() for v in x.reshape(-1))

    keys = sorted(spec.inputs)
    return sorted(tuple(cell(features[k][i]) for k in keys) + (float(labels[i]),) for i in range(len(labels)))


@pytest.mark.parametrize("fmt", ["tfrecord", "parquet"])
@pytest.mark.parametrize("name", list(EXAMPLES))
def test_every_row_is_read_once_per_epoch_shuffled_by_seed(name, fmt, examples, tmp_path):
    spec, data = examples[name]
    layout = shards.discover(write(spec, data, tmp_path, fmt))
    assert layout.format == fmt and set(layout.splits) == {"train", "test"} and len(layout.splits["train"]) > 2
    features, labels = epoch(spec, layout, "train", seed=1, shuffle_buffer=64)
    assert rows(features, labels, spec) == rows(data.train.features, data.train.labels, spec)
    for k, (dtype, shape) in spec.inputs.items():
        assert features[k].shape[1:] == tuple(shape) and (features[k].dtype == object) == (dtype == "string")
    again, _ = epoch(spec, layout, "train", seed=1, shuffle_buffer=64)
    other, _ = epoch(spec, layout, "train", seed=2, shuffle_buffer=64)
    first = next(iter(spec.inputs))
    assert np.array_equal(again[first], features[first]) and not np.array_equal(other[first], features[first])
    ordered, ordered_labels = epoch(spec, layout, "test", shuffle_buffer=0)  # not shuffled: the same every time
    np.testing.assert_array_equal(epoch(spec, layout, "test", shuffle_buffer=0)[1], ordered_labels)
    assert rows(ordered, ordered_labels, spec) == rows(data.test.features, data.test.labels, spec)


def test_the_one_pass_profile_matches_numpy_on_the_whole_split(examples, tmp_path):
    spec, data = examples["churn"]
    layout = shards.discover(write(spec, data, tmp_path, "parquet"))
    profile = scan(spec, layout, reservoir=100_000)
    train = profile["splits"]["train"]
    assert train["rows"] == len(data.train)
    assert train["label"]["counts"] == np.bincount(data.train.labels, minlength=2).tolist()
    x = data.train.features["monthly_charges"].astype(np.float64)
    got = train["features"]["monthly_charges"]
    assert got["count"] == len(x) and got["mean"] == pytest.approx(x.mean()) and got["std"] == pytest.approx(x.std())
    assert (got["min"], got["max"]) == (pytest.approx(x.min()), pytest.approx(x.max()))
    assert got["quantiles"]["p50"] == pytest.approx(np.quantile(x, 0.5))  # the reservoir holds every value here
    plans = train["features"]["plan"]
    values, counts = np.unique(data.train.features["plan"].astype(str), return_counts=True)
    assert dict(plans["top"]) == dict(zip(values.tolist(), counts.tolist())) and plans["other"] == 0
    regression, rdata = examples["diabetes"]
    rprofile = scan(regression, shards.discover(write(regression, rdata, tmp_path / "r", "tfrecord")))
    assert rprofile["splits"]["test"]["label"]["mean"] == pytest.approx(rdata.test.labels.mean(), rel=1e-5)


def test_the_fingerprint_is_the_manifest(examples, tmp_path):
    spec, data = examples["diabetes"]
    root = write(spec, data, tmp_path, "tfrecord")
    first = shards.discover(root)
    assert shards.discover(root).fingerprint() == first.fingerprint()
    manifest = first.manifest()
    assert manifest["splits"]["train"][0]["size"] > 0 and manifest["fingerprint"] == first.fingerprint()
    shard = first.splits["test"][0].uri
    payload = open(shard, "rb").read()
    open(shard, "wb").write(payload)  # rewritten, same bytes: a new version (mtime), a new identity
    assert shards.discover(root).fingerprint() != first.fingerprint()


def test_bad_shards_are_refused_naming_the_shard_and_the_record(examples, tmp_path):
    import pyarrow.parquet as pq

    spec, data = examples["diabetes"]
    root = write(spec, data, tmp_path / "corrupt", "tfrecord")
    layout = shards.discover(root)
    victim = layout.splits["train"][1].uri
    good = open(victim, "rb").read()
    open(victim, "wb").write(good[:3000] + b"\0" * 64 + good[3064:])
    with pytest.raises(DatasetError, match=rf"^{victim}: cannot read tf.Example records .* record \d+"):
        scan(spec, shards.discover(root))

    churn, cdata = examples["churn"]
    root = write(churn, cdata, tmp_path / "schema", "parquet")
    victim = shards.discover(root).splits["test"][0].uri
    pq.write_table(pq.read_table(victim).drop(["region"]), victim)
    with pytest.raises(DatasetError, match=rf"^{victim}: missing columns \['region'\]"):
        scan(churn, shards.discover(root))

    wrong = modelspec.ModelSpec.from_dict({**spec.to_dict(), "inputs": {**spec.to_dict()["inputs"],
                                                                        "bmi": ["float32", [2]]}})
    with pytest.raises(DatasetError, match=r"train/part-00000.tfrecord: cannot read tf.Example records .* record 0"):
        scan(wrong, shards.discover(write(spec, data, tmp_path / "shape", "tfrecord")))

    nan = cdata.train.take(slice(0, 60))
    nan.features["monthly_charges"] = nan.features["monthly_charges"].copy()
    nan.features["monthly_charges"][50] = np.nan
    shards.write_shards(churn, tmp_path / "nan", "train", [(nan.features, nan.labels)], fmt="parquet",
                        rows_per_shard=40)
    shards.write_shards(churn, tmp_path / "nan", "test", [(nan.features, nan.labels)], fmt="parquet")
    with pytest.raises(DatasetError, match=r"train/part-00001.parquet \(records 0..19\): train split: feature "
                                           r"'monthly_charges' has NaN or inf values in 1 rows"):
        scan(churn, shards.discover(str(tmp_path / "nan")))

    with pytest.raises(DatasetError, match="row group 0 is .* MiB, over the 0 MiB .* row_group_size"):
        scan(churn, shards.discover(str(tmp_path / "nan")), max_row_group_bytes=100)
    (tmp_path / "mixed" / "test").mkdir(parents=True)
    write(spec, data, tmp_path / "mixed", "tfrecord")
    pq.write_table(pq.read_table(victim), tmp_path / "mixed" / "test" / "extra.parquet")
    with pytest.raises(DatasetError, match="mixes TFRecord and Parquet shards"):
        shards.discover(str(tmp_path / "mixed"))
    (tmp_path / "no-test" / "train").mkdir(parents=True)
    (tmp_path / "no-test" / "train" / "a.tfrecord").write_bytes(b"")
    with pytest.raises(DatasetError, match="no test shards"):
        shards.discover(str(tmp_path / "no-test"))


def test_a_split_column_and_split_patterns(examples, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec, data = examples["churn"]
    table = pq.read_table(model_data.resolve_uri("examples/churn.parquet"))
    (tmp_path / "col").mkdir()
    for i, start in enumerate(range(0, table.num_rows, 150)):
        pq.write_table(table.slice(start, 150), tmp_path / "col" / f"part-{i}.parquet")
    layout = shards.discover(str(tmp_path / "col"))
    assert layout.split_column and layout.splits["train"] == layout.splits["test"]
    profile = scan(spec, layout)
    counts = {s: int(np.sum(np.asarray(table.column("split").to_pylist()) == s)) for s in shards.SPLITS}
    assert {s: p["rows"] for s, p in profile["splits"].items()} == {s: n for s, n in counts.items() if n}
    features, labels = epoch(spec, layout, "test", shuffle_buffer=0)
    assert rows(features, labels, spec) == rows(data.test.features, data.test.labels, spec)

    write(spec, data, tmp_path / "pat", "tfrecord")
    pattern = shards.discover(str(tmp_path / "pat" / "{split}" / "part-*.tfrecord"))
    assert [len(pattern.splits[s]) for s in ("train", "test")] == [
        len(shards.discover(str(tmp_path / "pat")).splits[s]) for s in ("train", "test")]
    assert pa  # list columns written by write_shards are what the reader takes (the tests above)


def test_s3_shards_stream_through_a_bounded_local_cache(examples, tmp_path, s3_endpoint, monkeypatch):
    import tempfile

    s3 = s3_endpoint["client"]()
    s3.create_bucket(Bucket="shards")
    for name, fmt in [("churn", "parquet"), ("digits_cnn", "tfrecord")]:
        spec, data = examples[name]
        root = write(spec, data, tmp_path / name, fmt)
        local = shards.discover(root)
        for split, listed in local.splits.items():
            for shard in listed:
                s3.upload_file(shard.uri, "shards", f"{name}/{split}/{shard.uri.rsplit('/', 1)[1]}")
        remote = shards.discover(f"s3://shards/{name}/", s3_client=s3)
        assert [s.size for s in remote.splits["train"]] == [s.size for s in local.splits["train"]]
        assert all(s.version for s in remote.splits["train"])  # the ETag
        scratch = tmp_path / f"scratch-{name}"
        scratch.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(scratch))
        features, labels = epoch(spec, remote, "train", s3_client=s3, seed=3, shuffle_buffer=50)
        assert rows(features, labels, spec) == rows(data.train.features, data.train.labels, spec)
        got, want = scan(spec, remote, s3_client=s3), scan(spec, local)
        assert got["splits"]["test"]["rows"] == want["splits"]["test"]["rows"] == len(data.test)
        assert got["splits"]["train"]["label"] == want["splits"]["train"]["label"]
        # every fetched shard deleted once read (autograph may leave its generated modules there too)
        assert list(scratch.glob("tfmlops-shard-*")) == []
        monkeypatch.undo()


def test_the_benchmarks_synthetic_dataset_is_noisy_mnist_in_shards(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "make_sharded_dataset.py"
    module = importlib.util.spec_from_file_location("make_sharded_dataset", path)
    script = importlib.util.module_from_spec(module)
    module.loader.exec_module(script)
    assert script.main(["--out", str(tmp_path), "--times", "3", "--limit", "200", "--rows-per-shard", "250",
                        "--format", "parquet"]) == 0
    spec = modelspec.read_spec(modelspec.DEFAULT_MODULE)
    layout = shards.discover(str(tmp_path))
    assert [len(layout.splits[s]) for s in ("train", "test")] == [3, 3]
    profile = scan(spec, layout)
    assert profile["splits"]["train"]["rows"] == 600 and profile["splits"]["test"]["rows"] == 600
    pixels = profile["splits"]["train"]["features"]["pixels"]
    assert 0.0 <= pixels["min"] and pixels["max"] <= 1.0 and 0.1 < pixels["mean"] < 0.25  # MNIST ink + noise
    features, _ = epoch(spec, layout, "train", shuffle_buffer=0)
    assert len({row.tobytes() for row in features["pixels"]}) == 600  # every copy differs (noise)


def load_streamed(spec, root, monkeypatch, **kw):
    """``model_data.load`` of the shards as a model module without a ``load_data`` of its own (the
    platform's default loaders), streamed whatever the size."""
    module = modelspec.import_module(spec.module)
    if hasattr(module, "load_data"):
        monkeypatch.delattr(module, "load_data")
    monkeypatch.setenv("TFMLOPS_STREAM_MIN_MB", "0")
    return model_data.load(spec, module, str(root), **kw)


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_a_streamed_dataset_trains_and_evaluates_like_the_same_rows_in_memory(name, examples, tmp_path,
                                                                             monkeypatch):
    from tfmlops import trainer

    spec, data = examples[name]
    spec = modelspec.ModelSpec(**{**spec.__dict__, "hparams": {**spec.hparams, "epochs": 2}})
    for split in ("train", "validation", "test"):
        s = getattr(data, split)
        shards.write_shards(spec, tmp_path, split, [(s.features, s.labels)], rows_per_shard=120)
    streamed, report = load_streamed(spec, tmp_path, monkeypatch)
    assert isinstance(streamed, model_data.StreamedData) and report["streamed"] and not report["validation_carved"]
    assert report["shards"]["train"] == -(-len(data.train) // 120) and report["train_rows"] is None
    model, history = trainer.train_model(spec, modelspec.import_module(spec.module), streamed)
    assert len(history["loss"]) == 2 and any(k.startswith("val_") for k in history)
    # the streamed test split (read batch by batch, in manifest order) is the rows in memory
    labels, outputs = trainer.labels_and_outputs(spec, model, streamed.test)
    want_labels, want_outputs = trainer.labels_and_outputs(spec, model, data.test)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(outputs, want_outputs, rtol=1e-5, atol=1e-6)
    head = streamed.test.head(5)
    assert len(head) == 5 and all(len(v) == 5 for v in head.features.values())
    profile = model_data.profile(spec, streamed)
    assert {s: p["rows"] for s, p in profile["splits"].items()} == {
        "train": len(data.train), "validation": len(data.validation), "test": len(data.test)}
    with pytest.raises(DatasetError, match="split streams \\(a dataset of"):
        _ = streamed.test.features  # a step that would load it whole says so


def test_streamed_carve_and_sample_go_by_shard_and_the_fingerprint_is_the_manifest(examples, tmp_path, monkeypatch):
    spec, data = examples["churn"]
    write(spec, data, tmp_path, "parquet", rows_per_shard=100)
    n = len(shards.discover(str(tmp_path)).splits["train"])
    streamed, report = load_streamed(spec, tmp_path, monkeypatch)
    assert report["validation_carved"] and report["shards"]["validation"] == max(1, round(n * 0.1))
    assert report["shards"]["train"] + report["shards"]["validation"] == n
    assert [s.uri for s in streamed.validation.layout.splits["validation"]] == \
        [s.uri for s in shards.discover(str(tmp_path)).splits["train"][-report["shards"]["validation"]:]]
    sampled, sampled_report = load_streamed(spec, tmp_path, monkeypatch, sample_fraction=0.5, seed=3)
    assert sampled_report["shards"]["test"] == max(1, round(len(shards.discover(str(tmp_path)).splits["test"]) * 0.5))
    assert sampled.fingerprint() != streamed.fingerprint()
    assert load_streamed(spec, tmp_path, monkeypatch)[0].fingerprint() == streamed.fingerprint()
    one = tmp_path / "one"
    write(spec, data, one, "parquet", rows_per_shard=100_000)
    with pytest.raises(DatasetError, match="1 train shard.*add validation/ shards"):
        load_streamed(spec, one, monkeypatch)
    monkeypatch.setenv("TFMLOPS_STREAM_MIN_MB", "1000")  # small sharded data loads in memory, as before
    in_memory, _ = model_data.load(spec, modelspec.import_module(spec.module), str(tmp_path))
    assert isinstance(in_memory, model_data.ModelData) and len(in_memory.test) == len(data.test)


def test_a_step_that_reads_splits_in_memory_refuses_a_streamed_one_clearly(examples, tmp_path, monkeypatch):
    spec, data = examples["diabetes"]
    for split in ("train", "validation", "test"):
        s = getattr(data, split)
        shards.write_shards(spec, tmp_path, split, [(s.features, s.labels)], rows_per_shard=50)
    streamed, _ = load_streamed(spec, tmp_path, monkeypatch)
    for read in (lambda s: s.labels, len, lambda s: s.take([0])):
        with pytest.raises(DatasetError, match=r"the test split streams \(a dataset of .* does not stream yet"):
            read(streamed.test)


def test_a_seeded_sample_of_a_streamed_split_is_a_uniform_reservoir(examples, tmp_path, monkeypatch):
    spec, data = examples["churn"]
    for split in ("train", "validation", "test"):
        s = getattr(data, split)
        shards.write_shards(spec, tmp_path, split, [(s.features, s.labels)], fmt="parquet", rows_per_shard=60)
    streamed, _ = load_streamed(spec, tmp_path, monkeypatch)
    got = model_data.sample(streamed.train, 50, seed=4)
    assert len(got) == 50 and rows(got.features, got.labels, spec) == sorted(
        set(rows(got.features, got.labels, spec)) & set(rows(data.train.features, data.train.labels, spec)))
    again = model_data.sample(streamed.train, 50, seed=4)
    np.testing.assert_array_equal(again.features["monthly_charges"], got.features["monthly_charges"])
    assert not np.array_equal(model_data.sample(streamed.train, 50, seed=5).features["monthly_charges"],
                              got.features["monthly_charges"])
    everything = model_data.sample(streamed.train, 10 * len(data.train))  # fewer rows than asked: all, in order
    np.testing.assert_array_equal(everything.labels, data.train.labels)
    # uniform: over many seeds, the rows of the last shard are kept as often as those of the first
    counts = np.zeros(len(data.train))
    for seed in range(30):
        picked = model_data.sample(streamed.train, 20, seed=seed).features["monthly_charges"]
        counts += np.isin(data.train.features["monthly_charges"], picked)
    half = len(data.train) // 2
    assert 0.8 < counts[:half].sum() / counts[half:].sum() < 1.25


def test_the_online_replay_samples_a_streamed_history_and_partitions_in_memory_as_one(examples, tmp_path,
                                                                                        monkeypatch):
    """tf_online_update's replay when the champion's training set streams: one seeded sample of the
    union of the streamed train split and the partitions consumed before (in memory), drawn by the
    reservoir — the streamed split's rows are never all in memory (its ``features`` refuse)."""
    from tfmlops.steps.online import OnlineConfig, _with_replay

    spec, data = examples["churn"]
    for split in ("train", "validation", "test"):
        s = getattr(data, split)
        shards.write_shards(spec, tmp_path, split, [(s.features, s.labels)], fmt="parquet", rows_per_shard=60)
    streamed, _ = load_streamed(spec, tmp_path, monkeypatch)
    new, earlier = data.test, data.validation  # the new partition's rows; a partition consumed before
    history = lambda: ([streamed.train, earlier], ["base", "p1"])  # noqa: E731
    fit, replay_rows, sources = _with_replay(new, history, OnlineConfig(replay_fraction=0.5, seed=1))
    assert replay_rows == len(new) and len(fit) == 2 * len(new) and sources == ["base", "p1"]
    got = rows(fit.features, fit.labels, spec)
    from collections import Counter

    left = Counter(got) - Counter(rows(new.features, new.labels, spec))  # every new row is in, once
    assert sum(left.values()) == replay_rows
    from_train = left & Counter(rows(data.train.features, data.train.labels, spec))
    from_earlier = left & Counter(rows(earlier.features, earlier.labels, spec))
    assert sum(from_train.values()) + sum(from_earlier.values()) >= replay_rows
    assert from_train and from_earlier  # one sample of the union: both sources are drawn from
    again, _, _ = _with_replay(new, history, OnlineConfig(replay_fraction=0.5, seed=1))
    np.testing.assert_array_equal(again.labels, fit.labels)


def test_a_reservoir_sample_keeps_rows_not_the_batches_they_came_from(tmp_path, monkeypatch):
    """The reservoir holds copies of its rows: a kept row that were a view would keep its whole
    batch alive, and a sample of a few rows would cost the memory of every batch it drew from."""
    import tracemalloc

    spec = modelspec.read_spec(modelspec.DEFAULT_MODULE)
    rng = np.random.default_rng(0)
    x = rng.random((12_000, 784), dtype=np.float32)  # 36 MiB of train rows, in 12 shards
    y = rng.integers(0, 10, 12_000)
    name = next(iter(spec.inputs))
    shards.write_shards(spec, tmp_path, "train", [({name: x}, y)], rows_per_shard=1_000)
    shards.write_shards(spec, tmp_path, "test", [({name: x[:100]}, y[:100])], rows_per_shard=100)
    del x
    streamed, _ = load_streamed(spec, tmp_path, monkeypatch)
    tracemalloc.start()
    try:
        got = model_data.sample(streamed.train, 200, seed=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(got) == 200 and got.features[name].shape == (200, 784)
    assert peak < 16 << 20, f"sampling 200 rows peaked at {peak >> 20} MiB of a 36 MiB split"
    monkeypatch.setenv("TFMLOPS_SAMPLE_CACHE", str(tmp_path / "samples"))
    in_memory = model_data.sampled(streamed, 200, seed=1)  # what tf_optimize_export works on
    assert isinstance(in_memory, model_data.ModelData) and len(in_memory.train) == 200
    np.testing.assert_array_equal(in_memory.train.labels, got.labels)  # the same seeded sample every time
    assert len(in_memory.test) == 100
    # kept on the machine: the next task reads the file, not the shards
    assert len(list((tmp_path / "samples").glob("*.npz"))) == 1
    monkeypatch.setattr(model_data, "sample", lambda *a, **k: pytest.fail("the shards were sampled again"))
    again = model_data.sampled(streamed, 200, seed=1)
    np.testing.assert_array_equal(again.train.features[name], in_memory.train.features[name])
    np.testing.assert_array_equal(again.test.labels, in_memory.test.labels)


def test_the_sample_cache_keeps_strings_refuses_nothing_it_cannot_read_and_keys_by_the_manifest(
        examples, tmp_path, monkeypatch):
    """Samples with string features round-trip through the cache file (read without pickle); a
    damaged file is sampled again; a rewritten shard (another manifest) is another sample."""
    from tfmlops import sample_cache

    spec, data = examples["churn"]
    write(spec, data, tmp_path / "churn", "parquet")
    monkeypatch.setenv("TFMLOPS_SAMPLE_CACHE", str(tmp_path / "samples"))
    streamed, _ = load_streamed(spec, tmp_path / "churn", monkeypatch)
    first = model_data.sampled(streamed, 50, seed=2)
    strings = [k for k, (dtype, _) in spec.inputs.items() if dtype == "string"]
    assert strings
    cached, = (tmp_path / "samples").glob("*.npz")
    with np.load(cached, allow_pickle=False) as z:  # nothing in it needs unpickling
        assert all(z[f].dtype != object for f in z.files)
    again = model_data.sampled(streamed, 50, seed=2)
    for key in spec.inputs:
        assert again.train.features[key].tolist() == first.train.features[key].tolist(), key
    assert again.train.features[strings[0]].dtype == object and isinstance(again.train.features[strings[0]][0], bytes)

    cached.write_bytes(cached.read_bytes()[:100])  # damaged: sampled again, and rewritten
    damaged = model_data.sampled(streamed, 50, seed=2)
    np.testing.assert_array_equal(damaged.test.labels, first.test.labels)
    assert sample_cache.load(cached)["train"].labels.tolist() == first.train.labels.tolist()

    shard = sorted((tmp_path / "churn" / "train").iterdir())[0]
    os.utime(shard, (shard.stat().st_atime, shard.stat().st_mtime + 10))  # rewritten: another manifest
    rewritten, _ = load_streamed(spec, tmp_path / "churn", monkeypatch)
    model_data.sampled(rewritten, 50, seed=2)
    assert len(list((tmp_path / "samples").glob("*.npz"))) == 2


def test_tf_optimize_export_works_on_a_seeded_sample_of_a_streamed_dataset(examples, tmp_path, monkeypatch):
    """A dataset that streams is not refused by tf_optimize_export: its steps get a seeded sample of
    ``TFMLOPS_OPTIMIZE_SAMPLE_ROWS`` rows per split (the same one in every task), and an int8
    variant is calibrated and scored on it."""
    from tfmlops import optimize
    from tfmlops.steps.optimize import model_problem
    from tfmlops.steps.retrain import DataSpec

    spec, data = examples["diabetes"]
    for split in ("train", "validation", "test"):
        s = getattr(data, split)
        shards.write_shards(spec, tmp_path, split, [(s.features, s.labels)], rows_per_shard=50)
    load_streamed(spec, tmp_path, monkeypatch)  # the module's own loader off, every size streamed
    monkeypatch.setenv("TFMLOPS_OPTIMIZE_SAMPLE_ROWS", "60")
    version = {"model_spec": spec.to_dict(), "dataset_uri": str(tmp_path)}
    got_spec, module, loaded = model_problem(version, DataSpec(uri=""))
    assert isinstance(loaded, model_data.ModelData) and got_spec.module == spec.module
    assert len(loaded.train) == len(loaded.test) == 60 and len(data.test) > 60
    again = model_problem(version, DataSpec(uri=""))[2]
    np.testing.assert_array_equal(again.test.labels, loaded.test.labels)
    model = modelspec.build_model(spec, module, loaded.train.features)
    model.compile("adam", "mse")
    _, result = optimize.optimize_one("int8", model, loaded, optimize.OptimizeConfig(max_rmse_increase=1e9),
                                      spec=spec, module=module)
    assert result["status"] == "passed", result
    assert result["details"]["calibration_rows"] == 60
