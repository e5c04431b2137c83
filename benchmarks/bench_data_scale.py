"""Datasets larger than memory: peak RSS of tf_offline_retrain's steps as the dataset grows, and
training throughput streamed from shards (local disk, the S3 endpoint) against NumPy in memory.

1. **Peak RSS per task** — the steps of ``tf_offline_retrain`` (validate + profile, train, evaluate,
   gate against the champion, export, register), each in a process of its own as an Airflow task
   runs it (the step function, without the task runner around it), on noisy-MNIST shards at 1×,
   10× and 40× MNIST's size (70 000 rows ≈ 220 MB a copy), streamed; and the same steps at 1× on
   the in-memory path (``TFMLOPS_STREAM_MIN_MB`` above the dataset). Goal: the streamed peaks flat
   (within 1.2×) from 1× to 40×, and below the in-memory peak at 1×. The copies beyond the first
   are hard links of the first copy's shards (every row is read and parsed; the disk is spared),
   MLflow is a local SQLite store.
2. **Training throughput** — examples/s of one epoch (after a warm-up epoch) of the MNIST MLP, same
   batch, fed from NumPy in memory, from local shards and from shards on the S3 endpoint
   (``moto_server`` on loopback, through the bounded local cache). Goal: ≥ 0.8× from local disk;
   S3 measured and reported (goal ≥ 0.5×).
3. **Validation + profile of the 40× dataset** — the validate step's time and peak RSS (from 1.).

Writes benchmarks/results/data_scale.json and data_scale.png.

    .venv/bin/python benchmarks/bench_data_scale.py            # 1×, 10×, 40× (~15 min)
    .venv/bin/python benchmarks/bench_data_scale.py --scales 1,4 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "var" / "bench" / "data-scale"
STEPS = ("validate", "train", "evaluate", "gate", "export", "register")
BATCH = 256

# one step of tf_offline_retrain in this process; prints its result and the process's VmHWM
STEP = r"""
import json, sys, time
args = json.loads(sys.argv[1])
from tfmlops.steps import retrain
state = args["state"]
spec = retrain.DataSpec(uri=args["uri"], hyperparameters={"epochs": 1, "batch_size": args["batch"]},
                        model_spec=state.get("model_spec"))
t0 = time.perf_counter()
step, tracking = args["step"], args["tracking"]
if step == "validate":
    out = retrain.validate_data(spec)
    out = {"model_spec": out["model_spec"], "profile": out["profile"], "rows": out["train_rows"]}
elif step == "train":
    out = retrain.train(tracking, "data_scale", args["name"], {}, spec, profile=state["profile"])
    out = {k: out[k] for k in ("run_id", "model_uri", "dataset_fingerprint")}
elif step == "evaluate":
    out = {"metrics": retrain.evaluate(tracking, state["run_id"], state["model_uri"], spec)}
elif step == "gate":
    out = {"gate": retrain.gate_against_champion(tracking, args["model"], state["run_id"], state["metrics"], spec)}
elif step == "export":
    out = retrain.export(tracking, state["run_id"], state["model_uri"], spec)
else:
    out = retrain.register(tracking, args["model"], state["run_id"], state["model_uri"], state["metrics"],
                           {"dataset_fingerprint": state["dataset_fingerprint"]}, state["model_spec"])
    from tfmlops import registry
    registry.set_alias(tracking, args["model"], registry.CHAMPION, out["version"])
out["seconds"] = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux carries the forking process's peak across exec
out["vmhwm"] = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) * 1024
print("RESULT " + json.dumps(out))
"""

# one epoch's throughput from each source, after a warm-up epoch
THROUGHPUT = r"""
import json, os, sys, time
args = json.loads(sys.argv[1])
os.environ["TFMLOPS_STREAM_MIN_MB"] = "0"
import tfmlops
from tfmlops import model_data, modelspec, trainer
spec = modelspec.read_spec(modelspec.DEFAULT_MODULE, {"batch_size": args["batch"]})
module = modelspec.import_module(spec.module)
s3 = None
if args["source"] == "s3":
    import boto3
    s3 = boto3.client("s3", endpoint_url=args["endpoint"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
if args["source"] == "numpy":
    os.environ["TFMLOPS_STREAM_MIN_MB"] = "1000000"
data, _ = model_data.load(spec, module, args["uri"], s3_client=s3, max_overlap_fraction=1.0)
model = modelspec.build_model(spec, module, data.train.head(256).features)
trainer.compile_by_task(model, spec.task, 1e-3)
if args["source"] == "numpy":
    x, y = trainer.inputs_for(model, data.train.features), data.train.labels
    rows = len(y)
    def fit():
        model.fit(x, y, batch_size=args["batch"], epochs=1, verbose=0, shuffle=True)
else:
    ds = trainer.streamed_dataset(spec, model, data.train, args["batch"], shuffle_seed=0)
    ds = ds.map(lambda f, y: (trainer.inputs_for(model, f), y))
    rows = sum(len(y) for _, y in data.train.batches())
    def fit():
        model.fit(ds, epochs=1, verbose=0)
fit()  # warm-up: graphs traced, files in the page cache
t0 = time.perf_counter()
fit()
seconds = time.perf_counter() - t0
print("RESULT " + json.dumps({"seconds": seconds, "rows": rows, "examples_per_s": rows / seconds}))
"""


def _env(**extra) -> dict:
    return {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "include"), os.environ.get("PYTHONPATH", "")]), **extra}


def _child(code: str, args: dict, **env) -> dict:
    """``code`` in a fresh process (in the MLflow store's folder: its artifacts land there)."""
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], env=_env(**env), capture_output=True,
                          text=True, timeout=3600, cwd=WORK / "mlflow")
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{args.get('step', args.get('source'))} failed ({done.returncode}): {done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def base_dataset(quick: bool) -> Path:
    """Noisy MNIST (1×: 60 000 train + 10 000 test rows) written once, in 10 000-row shards."""
    base = WORK / ("x1-quick" if quick else "x1")
    if not (base / "train").exists():
        argv = ["--out", str(base), "--times", "1", "--rows-per-shard", "10000"] + (["--limit", "12000"] if quick
                                                                                  else [])
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_sharded_dataset.py"), *argv], env=_env(),
                       check=True, capture_output=True)
    return base


def scaled(base: Path, times: int) -> Path:
    """``times`` copies of the base dataset's shards (hard links past the first)."""
    out = base.with_name(f"{base.name}-x{times}")
    if out.exists():
        return out
    for split in ("train", "test"):
        (out / split).mkdir(parents=True)
        for i in range(times):
            for shard in sorted((base / split).iterdir()):
                os.link(shard, out / split / f"c{i:03d}-{shard.name}")
    return out


def run_steps(uri: str, tracking: str, model: str, name: str, stream: bool) -> dict:
    env = {"TFMLOPS_STREAM_MIN_MB": "0" if stream else "1000000"}
    state, tasks = {}, {}
    for step in STEPS:
        got = _child(STEP, {"step": step, "uri": uri, "tracking": tracking, "model": model, "name": name,
                            "batch": BATCH, "state": state}, **env)
        tasks[step] = {"seconds": round(got.pop("seconds"), 1), "peak_rss_mb": round(got.pop("vmhwm") / 2**20)}
        state.update({k: v for k, v in got.items() if k not in ("gate",)})
        print(f"  {name} {step}: {tasks[step]}", flush=True)
    return {"tasks": tasks, "rows": state.get("rows"), "test_accuracy": state["metrics"]["accuracy"],
            "peak_rss_mb": max(t["peak_rss_mb"] for t in tasks.values())}


def s3_copy(base: Path) -> tuple[str, str, callable]:
    """The base dataset on a moto_server on loopback; returns (endpoint, uri, stop)."""
    import boto3

    sys.path.insert(0, str(ROOT / "scripts"))
    import devservers

    root = WORK / "moto"
    root.mkdir(parents=True, exist_ok=True)
    port = devservers.free_port()
    devservers.start("moto", [str(devservers.BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], root)
    endpoint = f"http://127.0.0.1:{port}"
    devservers.wait_http(f"{endpoint}/moto-api/", 60, "moto", root, any_status=True)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket="bench")
    for split in ("train", "test"):
        for shard in sorted((base / split).iterdir()):
            s3.upload_file(str(shard), "bench", f"mnist/{split}/{shard.name}")
    return endpoint, "s3://bench/mnist/", lambda: devservers.stop("moto", root)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    runs = result["peak_rss"]
    labels = list(runs)
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        values = [runs[label]["tasks"][s]["peak_rss_mb"] for s in STEPS]
        left.bar([x + i * width for x in range(len(STEPS))], values, width, label=label)
    left.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(STEPS))], STEPS)
    left.set_ylabel("peak RSS (VmHWM), MiB")
    left.set_title("tf_offline_retrain's steps, one process each")
    left.legend(fontsize=8)
    sources = result["throughput"]["examples_per_s"]
    right.bar(list(sources), list(sources.values()), color=["#888", "#4a7", "#47a"][:len(sources)])
    for i, value in enumerate(sources.values()):
        ratio = value / sources["numpy"]
        right.text(i, value, f"{value:,.0f}/s\n{ratio:.2f}×", ha="center", va="bottom", fontsize=9)
    right.set_ylim(0, max(sources.values()) * 1.2)
    right.set_ylabel("training examples / s (one epoch, batch %d)" % BATCH)
    right.set_title("MNIST MLP: NumPy in memory vs streamed shards")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="1,10,40", help="copies of MNIST to stream (comma-separated)")
    parser.add_argument("--quick", action="store_true", help="12 000-row copies (a smoke run of the script)")
    parser.add_argument("--out", default=str(RESULTS / "data_scale.json"))
    args = parser.parse_args(argv)
    scales = [int(s) for s in args.scales.split(",")]
    base = base_dataset(args.quick)
    store = WORK / "mlflow"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    tracking = f"sqlite:///{store / 'mlflow.db'}"
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "batch_size": BATCH,
              "base_rows": {"train": 12_000 if args.quick else 60_000, "test": 12_000 if args.quick else 10_000},
              "base_bytes": sum(p.stat().st_size for p in base.rglob("*") if p.is_file()), "peak_rss": {}}
    started = time.time()
    print("in memory, 1×", flush=True)
    result["peak_rss"]["in memory 1×"] = run_steps(str(base), tracking, "in_memory", "in-memory-x1", stream=False)
    for times in scales:
        uri = str(scaled(base, times))
        print(f"streamed, {times}×", flush=True)
        result["peak_rss"][f"streamed {times}×"] = run_steps(uri, tracking, "streamed", f"streamed-x{times}", True)
    streamed = [v["peak_rss_mb"] for k, v in result["peak_rss"].items() if k.startswith("streamed")]
    result["peak_rss_growth"] = round(max(streamed) / min(streamed), 3)
    result["streamed_below_in_memory_at_1x"] = (result["peak_rss"].get("streamed 1×", {}).get("peak_rss_mb", 0)
                                                < result["peak_rss"]["in memory 1×"]["peak_rss_mb"])
    largest = f"streamed {max(scales)}×"
    result["validate_largest"] = {"scale": max(scales), **result["peak_rss"][largest]["tasks"]["validate"],
                                  "rows": result["peak_rss"][largest]["rows"]}

    print("throughput", flush=True)
    endpoint, s3_uri, stop = s3_copy(base)
    try:
        got = {"numpy": _child(THROUGHPUT, {"source": "numpy", "uri": str(base), "batch": BATCH}),
               "local shards": _child(THROUGHPUT, {"source": "local", "uri": str(base), "batch": BATCH}),
               "S3 shards": _child(THROUGHPUT, {"source": "s3", "uri": s3_uri, "endpoint": endpoint, "batch": BATCH})}
    finally:
        stop()
    rates = {k: round(v["examples_per_s"]) for k, v in got.items()}
    result["throughput"] = {"examples_per_s": rates, "rows": {k: v["rows"] for k, v in got.items()},
                            "ratio_local": round(rates["local shards"] / rates["numpy"], 3),
                            "ratio_s3": round(rates["S3 shards"] / rates["numpy"], 3)}
    result["goals"] = {"peak_rss_flat_within_1.2x": result["peak_rss_growth"] <= 1.2,
                       "streamed_below_in_memory_at_1x": result["streamed_below_in_memory_at_1x"],
                       "local_throughput_at_least_0.8x": result["throughput"]["ratio_local"] >= 0.8,
                       "s3_throughput_at_least_0.5x": result["throughput"]["ratio_s3"] >= 0.5}
    result["seconds"] = round(time.time() - started)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    print(json.dumps({k: result[k] for k in ("peak_rss_growth", "throughput", "goals", "validate_largest")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
