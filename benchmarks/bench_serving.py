"""Serving throughput and latency: the same model over REST, gRPC, both with server-side batching,
``mlflow models serve``, and in-process ``model(x)`` as the limit (tracker issue 3).

What it measures: batch-1 ``predict`` requests (one MNIST test image, 784 float32) sent by 1, 8 and
32 concurrent closed-loop clients, for a fixed time per point after a warmup; throughput
(successful requests / s) and p50/p90/p99 latency (client side, send to fully-read response).

- The model: the seed MLP (``tfmlops.models.build_model(ModelConfig(n_features=784, num_classes=10))``),
  trained briefly on 5 %
  of MNIST, exported with ``tfmlops.export.export_saved_model`` and published as version 1 for
  ``tf-serving-local``; the same trained model is logged with ``registry.log_keras_model`` and
  registered (version 1) in a real ``mlflow server`` started here.
- Modes: ``rest`` and ``grpc`` (``tf-serving-local``, no batching), ``rest_batching`` and
  ``grpc_batching`` (``--enable_batching`` + a BatchingParameters text file: max_batch_size 32,
  batch_timeout_micros 1000, num_batch_threads 2), ``mlflow_serve`` (``mlflow models serve -m
  models:/<name>/1 --env-manager local``, ``{"inputs": [[...]]}`` on ``/invocations``) and
  ``in_process`` (``model(x, training=False)`` on one example at a time, one thread, in this
  process: the limit). For information only (not used by the goals), the same loop over
  ``tf.function(model)`` shows how much of that limit is eager-mode Python overhead.
- The load generator runs in separate processes (``--client-procs``, default: CPU count) with
  threads inside: one ``requests.Session`` per REST client, one gRPC channel (own connection) per
  gRPC client. Request bodies are built once: the REST JSON body, and the ``PredictRequest`` built
  with ``predict_pb2`` + ``tf.make_tensor_proto`` and serialized once, then sent as bytes on
  ``/tensorflow.serving.PredictionService/Predict`` (what ``PredictionServiceStub.Predict`` puts on
  the wire; the client processes never import TensorFlow). Every payload is checked once against
  the in-process model's output before it is measured.
- Client and server run on the same machine: both use its cores. Server and client CPU time per
  point are recorded (``cpu_ms_per_request``) to show where the time goes.
- Every server is started with ``tfmlops.devservers`` on free loopback ports in a temporary folder
  and stopped in ``finally``.

Goals (ratios of throughput; printed and stored with ``meets_goal``):
REST >= 3x ``mlflow models serve``; gRPC >= 1.3x REST (each at every concurrency, and at peak);
gRPC with batching at 32 clients >= 0.5x the in-process limit.

Writes benchmarks/results/serving.json and serving.png (throughput per mode and concurrency; p99
latency in the second panel).

Reproduce (about 5 min on 2 cores; ``make bench`` runs the same):

    .venv/bin/python benchmarks/bench_serving.py

``--quick`` (about 2 min, 0.5 s warmup + 1.5 s per point) only checks that everything works; its
figures are noisy and are marked ``"quick": true``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # devservers: the embedded servers, started as processes
RESULTS = ROOT / "benchmarks" / "results"

MODEL_NAME = "bench_mlp"
SIGNATURE, INPUT_NAME, OUTPUT_NAME = "serving_default", "pixels", "probabilities"
GRPC_PREDICT = "/tensorflow.serving.PredictionService/Predict"
CONCURRENCY = (1, 8, 32)
MODES = ("rest", "grpc", "rest_batching", "grpc_batching", "mlflow_serve")
BATCHING_PARAMETERS = {"max_batch_size": 32, "batch_timeout_micros": 1000, "num_batch_threads": 2,
                       "max_enqueued_batches": 100}
GOALS = {"rest_vs_mlflow_serve": 3.0, "grpc_vs_rest": 1.3, "grpc_batching_32_vs_in_process": 0.5}
CHECK_TOLERANCE = 1e-5
SERVER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


# ---------------------------------------------------------------------------------------------
# load generator: runs in child processes (spawned; imports neither TensorFlow nor tfmlops)
# ---------------------------------------------------------------------------------------------

def _client_thread(spec: dict, cap: int, shared: dict) -> None:
    """One closed-loop client: connect, wait for the common start, send until the window ends."""
    lat, errors, first_error, last_end = array("d"), 0, None, 0.0
    if spec["kind"] == "http":
        import requests

        session = requests.Session()
        url, body, headers = spec["url"], spec["body"], {"Content-Type": "application/json"}

        def call() -> bool:
            r = session.post(url, data=body, headers=headers, timeout=60)
            return r.status_code == 200 and bool(r.content)
        closer = session.close
    else:
        import grpc

        # own connection per client (no shared subchannel), like one requests.Session per REST client
        channel = grpc.insecure_channel(spec["target"], options=[("grpc.use_local_subchannel_pool", 1)])
        predict = channel.unary_unary(spec["method"])  # bytes in, bytes out: no per-call (de)serialization
        body = spec["body"]

        def call() -> bool:
            return bool(predict(body, timeout=60))
        closer = channel.close
    try:
        try:  # connect before the clock starts
            call()
        except Exception as exc:  # noqa: BLE001
            first_error = f"connect: {type(exc).__name__}: {exc}"[:500]
        shared["ready"].release()
        shared["go"].wait()
        _, ws, we = shared["windows"]
        while True:
            start = time.monotonic()
            if start >= we or len(lat) >= cap:
                break
            try:
                ok = call()
                err = None if ok else "empty or non-200 response"
            except Exception as exc:  # noqa: BLE001
                ok, err = False, f"{type(exc).__name__}: {exc}"[:500]
            end = time.monotonic()
            if ws <= end <= we:  # completed inside the measured window
                if ok:
                    lat.append(end - start)
                    last_end = end
                else:
                    errors += 1
            if not ok:
                first_error = first_error or err
    finally:
        closer()
        shared["results"].append({"lat": lat.tobytes(), "errors": errors, "first_error": first_error,
                                  "last_end": last_end})


def _client_process(spec: dict, n_threads: int, cap_per_thread: int, ready_q, go, t0_value, result_q) -> None:
    import resource

    shared = {"ready": threading.Semaphore(0), "go": threading.Event(), "results": [], "windows": None}
    threads = [threading.Thread(target=_client_thread, args=(spec, cap_per_thread, shared), daemon=True)
               for _ in range(n_threads)]
    for t in threads:
        t.start()
    for _ in threads:
        shared["ready"].acquire()
    ready_q.put(os.getpid())
    go.wait()
    t0 = t0_value.value
    ws, we = t0 + spec["warmup_s"], t0 + spec["warmup_s"] + spec["duration_s"]
    shared["windows"] = (t0, ws, we)
    shared["go"].set()
    time.sleep(max(ws - time.monotonic(), 0))
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(max(we - time.monotonic(), 0))
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    for t in threads:
        t.join(120)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    result_q.put({"pid": os.getpid(), "threads": shared["results"], "cpu_s": cpu})


# ---------------------------------------------------------------------------------------------
# measurement helpers (parent)
# ---------------------------------------------------------------------------------------------

def _group_cpu_s(pgid: int | None) -> float:
    """utime + stime (s) of every live process in process group ``pgid`` (a devservers service)."""
    if not pgid:
        return float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # fields[0] = state, [2] = pgrp, [11] = utime, [12] = stime
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _percentiles(lat_s) -> dict:
    import numpy as np

    if len(lat_s) == 0:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    a = np.asarray(lat_s) * 1e3
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3), "p99_ms": round(float(p99), 3),
            "mean_ms": round(float(a.mean()), 3), "max_ms": round(float(a.max()), 3)}


def run_load(spec: dict, concurrency: int, client_procs: int, max_requests: int, server_pgid: int | None) -> dict:
    """``concurrency`` closed-loop clients spread over up to ``client_procs`` processes."""
    import numpy as np

    ctx = mp.get_context("spawn")
    n_procs = max(1, min(client_procs, concurrency))
    per_proc = [concurrency // n_procs + (1 if i < concurrency % n_procs else 0) for i in range(n_procs)]
    cap_per_thread = max(1, max_requests // concurrency)
    ready_q, result_q, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    t0_value = ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_client_process, args=(spec, n, cap_per_thread, ready_q, go, t0_value, result_q),
                         daemon=True) for n in per_proc]
    results = []
    try:
        for p in procs:
            p.start()
        for _ in procs:
            ready_q.get(timeout=120)
        t0 = time.monotonic() + 0.05
        t0_value.value = t0
        ws, we = t0 + spec["warmup_s"], t0 + spec["warmup_s"] + spec["duration_s"]
        go.set()
        time.sleep(max(ws - time.monotonic(), 0))
        server_cpu0 = _group_cpu_s(server_pgid)
        time.sleep(max(we - time.monotonic(), 0))
        server_cpu1 = _group_cpu_s(server_pgid)
        for _ in procs:
            results.append(result_q.get(timeout=spec["warmup_s"] + spec["duration_s"] + 180))
        for p in procs:
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
    threads = [t for r in results for t in r["threads"]]
    lat = np.concatenate([np.frombuffer(t["lat"], dtype=np.float64) for t in threads]) if threads else np.array([])
    errors = sum(t["errors"] for t in threads)
    first_error = next((t["first_error"] for t in threads if t["first_error"]), None)
    last_end = max((t["last_end"] for t in threads), default=0.0)
    capped = len(lat) >= cap_per_thread * concurrency
    window = (last_end - ws) if capped and last_end > ws else spec["duration_s"]
    n = int(len(lat))
    client_cpu = sum(r["cpu_s"] for r in results)
    server_cpu = server_cpu1 - server_cpu0
    point = {"concurrency": concurrency, "client_processes": n_procs, "requests": n, "errors": errors,
             "window_s": round(window, 3), "capped_by_max_requests": capped,
             "throughput_rps": round(n / window, 1) if window > 0 else 0.0, **_percentiles(lat),
             "server_cpu_s": round(server_cpu, 3), "client_cpu_s": round(client_cpu, 3),
             "cpu_ms_per_request": {"server": round(server_cpu / n * 1e3, 3) if n else None,
                                    "client": round(client_cpu / n * 1e3, 3) if n else None},
             "machine_cpu_utilisation": round((server_cpu + client_cpu) / (window * (os.cpu_count() or 1)), 3)}
    if first_error:
        point["first_error"] = first_error
    return point


def measure_in_process(call, x, warmup_s: float, duration_s: float, max_requests: int) -> dict:
    """``call(x)`` on one example at a time, one thread, no network, no serialization."""
    import numpy as np

    end = time.monotonic() + warmup_s
    while time.monotonic() < end:
        call(x).numpy()
    lat = array("d")
    ws = time.monotonic()
    we = ws + duration_s
    cpu0 = time.process_time()
    while len(lat) < max_requests:
        start = time.monotonic()
        if start >= we:
            break
        call(x).numpy()
        lat.append(time.monotonic() - start)
    window = time.monotonic() - ws
    cpu = time.process_time() - cpu0
    n = len(lat)
    return {"concurrency": 1, "requests": n, "errors": 0, "window_s": round(window, 3),
            "throughput_rps": round(n / window, 1), **_percentiles(np.asarray(lat)),
            "cpu_ms_per_request": {"process": round(cpu / n * 1e3, 3)}}


# ---------------------------------------------------------------------------------------------
# setup: model, registry, servers
# ---------------------------------------------------------------------------------------------

def _check(name: str, got, expected) -> float:
    import numpy as np

    got = np.asarray(got, dtype=np.float32).reshape(expected.shape)
    diff = float(np.max(np.abs(got - expected)))
    if diff > CHECK_TOLERANCE:
        raise RuntimeError(f"{name}: outputs differ from the in-process model by {diff:.3g}")
    return diff


def _payloads(x):
    """The exact bytes the clients send, built once."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    rows = x.tolist()
    rest_body = json.dumps({"signature_name": SIGNATURE, "instances": rows}).encode()
    mlflow_body = json.dumps({"inputs": rows}).encode()
    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL_NAME
    req.model_spec.signature_name = SIGNATURE
    req.inputs[INPUT_NAME].CopyFrom(tf.make_tensor_proto(x))
    return {"rest": rest_body, "mlflow": mlflow_body, "grpc": req.SerializeToString()}


def _check_rest(url: str, body: bytes, key: str, expected) -> float:
    import requests

    r = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=60)
    r.raise_for_status()
    return _check(url, r.json()[key], expected)


def _check_grpc(target: str, body: bytes, expected) -> float:
    import grpc
    from tensorflow_serving.apis import predict_pb2

    from tfmlops.serving import tensors as T

    with grpc.insecure_channel(target) as channel:
        raw = channel.unary_unary(GRPC_PREDICT)(body, timeout=60)
    resp = predict_pb2.PredictResponse.FromString(raw)
    return _check(f"grpc {target}", T.make_ndarray(resp.outputs[OUTPUT_NAME], OUTPUT_NAME), expected)


def _batching_stats(rest_port: int) -> dict:
    import requests

    return requests.get(f"http://127.0.0.1:{rest_port}/monitoring/tfmlops/batching", timeout=10).json()


def _environment(args) -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("tensorflow", "tf-keras", "tensorflow-serving-api", "mlflow", "grpcio", "protobuf", "requests",
                "uvicorn", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "platform": platform.platform(), "load_average_at_start": load, "versions": versions,
            "client_processes_max": args.client_procs}


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def _goals(points: dict, in_process: dict | None, in_process_compiled: dict | None) -> dict:
    def tput(mode, c):
        for p in points.get(mode, {}).get("points", []):
            if p["concurrency"] == c:
                return p["throughput_rps"]
        return None

    def peak(mode):
        vals = [p["throughput_rps"] for p in points.get(mode, {}).get("points", [])]
        return max(vals) if vals else None

    goals = {}
    pairs = {"rest_vs_mlflow_serve": ("rest", "mlflow_serve"), "grpc_vs_rest": ("grpc", "rest")}
    for name, (num, den) in pairs.items():
        goal = GOALS[name]
        by_c = {str(c): _ratio(tput(num, c), tput(den, c)) for c in CONCURRENCY}
        at_peak = _ratio(peak(num), peak(den))
        goals[name] = {
            "goal": goal, "what": f"throughput of {num} / {den}",
            "ratio_by_concurrency": by_c, "ratio_at_peak": at_peak,
            "meets_goal": all(r is not None and r >= goal for r in by_c.values()),
            "meets_goal_by_concurrency": {c: (r is not None and r >= goal) for c, r in by_c.items()},
            "meets_goal_at_peak": at_peak is not None and at_peak >= goal}
    limit = in_process["throughput_rps"] if in_process else None
    r = _ratio(tput("grpc_batching", 32), limit)
    goals["grpc_batching_32_vs_in_process"] = {
        "goal": GOALS["grpc_batching_32_vs_in_process"],
        "what": "throughput of grpc_batching at 32 clients / in-process model(x) loop",
        "ratio": r, "meets_goal": r is not None and r >= GOALS["grpc_batching_32_vs_in_process"],
        "ratio_vs_tf_function_informational": _ratio(
            tput("grpc_batching", 32), in_process_compiled["throughput_rps"] if in_process_compiled else None)}
    return goals


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    modes = [m for m in MODES if report["modes"].get(m, {}).get("points")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.6))
    width = 0.8 / max(len(modes), 1)
    xs = np.arange(len(CONCURRENCY))
    for i, mode in enumerate(modes):
        pts = {p["concurrency"]: p for p in report["modes"][mode]["points"]}
        tp = [pts[c]["throughput_rps"] if c in pts else 0 for c in CONCURRENCY]
        p99 = [pts[c]["p99_ms"] or 0 if c in pts else 0 for c in CONCURRENCY]
        off = xs + (i - (len(modes) - 1) / 2) * width
        bars = ax1.bar(off, tp, width, label=mode)
        ax1.bar_label(bars, fmt="%.0f", fontsize=6, rotation=90, padding=2)
        ax2.bar(off, p99, width, label=mode)
    ip = report.get("in_process")
    if ip:
        ax1.axhline(ip["throughput_rps"], color="k", ls="--", lw=1,
                    label=f"in-process model(x): {ip['throughput_rps']:.0f}/s")
        ax1.axhline(ip["throughput_rps"] * GOALS["grpc_batching_32_vs_in_process"], color="grey", ls=":", lw=1,
                    label="0.5x in-process (goal for grpc_batching @32)")
        ax2.axhline(ip["p99_ms"], color="k", ls="--", lw=1, label=f"in-process p99 {ip['p99_ms']:.2f} ms")
    for ax in (ax1, ax2):
        ax.set_xticks(xs, [f"{c} client{'s' if c > 1 else ''}" for c in CONCURRENCY])
    ipc = report.get("in_process_tf_function_informational")
    if ipc:
        ax1.axhline(ipc["throughput_rps"], color="k", ls="-.", lw=0.8,
                    label=f"in-process tf.function (info): {ipc['throughput_rps']:.0f}/s")
    ax1.set_ylabel("requests / s (batch 1)")
    ax1.set_title("throughput")
    ax1.margins(y=0.12)
    ax2.set_ylabel("p99 latency (ms, log scale)")
    ax2.set_yscale("log")
    ax2.set_title("p99 latency")
    for ax in (ax1, ax2):
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=3, frameon=False)
    env = report["environment"]
    title = (f"Serving the seed MLP: {env['cpu_count']} CPUs, client and server on the same machine, "
             f"{report['settings']['duration_s']} s per point")
    if report["quick"]:
        title += "  [--quick: smoke run, noisy]"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------

def seed_model(work: Path, epochs: int = 1):
    """The seed MLP trained briefly on 5 % of MNIST and exported: ``(dataset, model, export result)``
    (the SavedModel is ``<export result path>/saved_model``)."""
    from tfmlops import data
    from tfmlops.export import export_saved_model
    from tfmlops.models import ModelConfig, TrainConfig, build_model, train

    dataset, _ = data.load_validated("mnist", 784, 10, sample_fraction=0.05)
    model = build_model(ModelConfig(n_features=784, num_classes=10))
    history = train(model, dataset.x_train, dataset.y_train, TrainConfig(epochs=epochs))
    exported = export_saved_model(model, work / "export", dataset.x_test[:8], dataset.x_train[:32])
    return dataset, model, {**exported, "history": history}


def save_results(name: str, report: dict, plot_fn=None) -> None:
    """``benchmarks/results/<name>.json`` (and ``<name>.png`` drawn by ``plot_fn(report, path)``)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2))
    if plot_fn is not None:
        plot_fn(report, RESULTS / f"{name}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="0.5 s warmup + 1.5 s per point (smoke run)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds per point before measuring (2)")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds per point (8)")
    parser.add_argument("--max-requests", type=int, default=None, help="cap per point (200000; quick 20000)")
    parser.add_argument("--client-procs", type=int, default=os.cpu_count() or 1,
                        help="load-generator processes (clients are spread over them)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (server logs)")
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    duration = args.duration if args.duration is not None else (1.5 if args.quick else 8.0)
    max_requests = args.max_requests or (20_000 if args.quick else 200_000)

    bench_start = time.perf_counter()
    environment = _environment(args)
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import devservers

    run_dir = work / "run"
    mlflow_port = devservers.free_port()
    tracking_uri = f"http://127.0.0.1:{mlflow_port}"
    ports = {"plain": (devservers.free_port(), devservers.free_port()),
             "batching": (devservers.free_port(), devservers.free_port()), "mlflow_serve": devservers.free_port()}
    services = []  # started here, stopped in finally
    modes: dict = {}
    in_process = in_process_compiled = None
    checks: dict = {}
    timings: dict = {}
    try:
        devservers.start("mlflow", devservers.mlflow_server_argv(work / "mlflow", mlflow_port), run_dir,
                         env=devservers.mlflow_server_env())
        services.append("mlflow")

        # ---- model: train, export, publish (while the MLflow server starts)
        t = time.perf_counter()
        from tfmlops import registry
        from tfmlops.deploy.client import ServingClient
        from tfmlops.deploy.publish import ensure_model_config, publish_version

        dataset, model, exported = seed_model(work, args.epochs)
        history = exported["history"]
        models_root = work / "serving" / "models"
        publish_version(Path(exported["path"]) / "saved_model", models_root, MODEL_NAME, 1)
        config_file = work / "serving" / "models.config"
        ensure_model_config(config_file, MODEL_NAME, str(models_root / MODEL_NAME))
        timings["train_export_s"] = round(time.perf_counter() - t, 1)

        # ---- tf-serving-local, plain and with batching (both start now; each is measured alone)
        batching_file = work / "serving" / "batching_parameters.txt"
        batching_file.write_text("".join(f"{k} {{ value: {v} }}\n" for k, v in BATCHING_PARAMETERS.items()))
        for name, extra in (("plain", []), ("batching", ["--enable_batching=true",
                                                         f"--batching_parameters_file={batching_file}"])):
            rest, grpc_port = ports[name]
            devservers.start(f"serving-{name}", devservers.serving_argv(config_file, rest, grpc_port) + extra,
                             run_dir, env=SERVER_ENV)
            services.append(f"serving-{name}")

        # ---- MLflow: log + register the same trained model, then `mlflow models serve` it
        t = time.perf_counter()
        devservers.wait_http(f"{tracking_uri}/health", 180, "mlflow", run_dir)
        run_id = registry.start_run(tracking_uri, "bench_serving", "bench_serving", {"purpose": "benchmark"})
        model_uri = registry.log_keras_model(tracking_uri, run_id, model, dataset.x_test[:8])
        version = registry.register(tracking_uri, MODEL_NAME, model_uri, run_id, {"purpose": "benchmark"})
        registry.end_run(tracking_uri, run_id)
        mlflow_serve_argv = [str(devservers.BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}/{version}",
                             "--env-manager", "local", "-p", str(ports["mlflow_serve"]), "-h", "127.0.0.1"]
        devservers.start("mlflow-serve", mlflow_serve_argv, run_dir,
                         # mlflow runs `bash -c "exec uvicorn ..."`: the venv's bin must be on PATH
                         env={**SERVER_ENV, "MLFLOW_TRACKING_URI": tracking_uri,
                              "PATH": f"{devservers.BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
        services.append("mlflow-serve")
        timings["mlflow_log_register_s"] = round(time.perf_counter() - t, 1)

        t = time.perf_counter()
        for name in ("plain", "batching"):
            rest, _ = ports[name]
            devservers.wait_http(f"http://127.0.0.1:{rest}/v1/models/{MODEL_NAME}", 300, f"serving-{name}",
                                 run_dir, any_status=True)
            with ServingClient(rest_port=rest, grpc_port=None) as c:
                c.wait_until_available(MODEL_NAME, 1, timeout_s=300)
        devservers.wait_http(f"http://127.0.0.1:{ports['mlflow_serve']}/ping", 300, "mlflow-serve", run_dir)
        timings["servers_ready_s"] = round(time.perf_counter() - t, 1)

        # ---- the same example everywhere; every payload checked against the in-process output
        import numpy as np

        x = np.ascontiguousarray(dataset.x_test[:1], dtype=np.float32)
        expected = model(x, training=False).numpy()
        payloads = _payloads(x)
        for name in ("plain", "batching"):
            rest, grpc_port = ports[name]
            with ServingClient(rest_port=rest, grpc_port=grpc_port) as c:  # the project's client, both protocols
                checks[f"{name}_client_rest"] = _check(name, c.predict_rest(MODEL_NAME, x), expected)
                checks[f"{name}_client_grpc"] = _check(name, c.predict_grpc(MODEL_NAME, {INPUT_NAME: x})[OUTPUT_NAME],
                                                       expected)
            checks[f"{name}_rest_payload"] = _check_rest(
                f"http://127.0.0.1:{rest}/v1/models/{MODEL_NAME}:predict", payloads["rest"], "predictions", expected)
            checks[f"{name}_grpc_payload"] = _check_grpc(f"127.0.0.1:{grpc_port}", payloads["grpc"], expected)
        checks["mlflow_serve_payload"] = _check_rest(f"http://127.0.0.1:{ports['mlflow_serve']}/invocations",
                                                     payloads["mlflow"], "predictions", expected)

        base = {"warmup_s": warmup, "duration_s": duration}
        specs = {
            "rest": ("serving-plain", {"kind": "http", "body": payloads["rest"],
                                       "url": f"http://127.0.0.1:{ports['plain'][0]}/v1/models/{MODEL_NAME}:predict"}),
            "grpc": ("serving-plain", {"kind": "grpc", "body": payloads["grpc"], "method": GRPC_PREDICT,
                                       "target": f"127.0.0.1:{ports['plain'][1]}"}),
            "rest_batching": ("serving-batching", {
                "kind": "http", "body": payloads["rest"],
                "url": f"http://127.0.0.1:{ports['batching'][0]}/v1/models/{MODEL_NAME}:predict"}),
            "grpc_batching": ("serving-batching", {"kind": "grpc", "body": payloads["grpc"], "method": GRPC_PREDICT,
                                                   "target": f"127.0.0.1:{ports['batching'][1]}"}),
            "mlflow_serve": ("mlflow-serve", {"kind": "http", "body": payloads["mlflow"],
                                              "url": f"http://127.0.0.1:{ports['mlflow_serve']}/invocations"}),
        }
        # a server is stopped once its modes are measured, so nothing else runs during a point
        last_use = {svc: max(i for i, m in enumerate(MODES) if specs[m][0] == svc) for svc, _ in specs.values()}
        t = time.perf_counter()
        for i, mode in enumerate(MODES):
            service, spec = specs[mode]
            spec = {**spec, **base}
            pgid = devservers.running_pid(service, run_dir)
            entry = modes[mode] = {"server": service, "points": []}
            try:
                for c in CONCURRENCY:
                    if service == "serving-batching":
                        before = _batching_stats(ports["batching"][0])
                    point = run_load(spec, c, args.client_procs, max_requests, pgid)
                    if service == "serving-batching":
                        after = _batching_stats(ports["batching"][0])
                        tasks, batches = after["tasks"] - before["tasks"], after["batches"] - before["batches"]
                        point["server_batches"] = {
                            "batches": batches, "tasks": tasks,
                            "mean_tasks_per_batch": round(tasks / batches, 2) if batches else None}
                    entry["points"].append(point)
                    print(f"{mode:>14} x{c:<3} {point['throughput_rps']:>8.1f} req/s  p50 {point['p50_ms']} ms  "
                          f"p99 {point['p99_ms']} ms  errors {point['errors']}  "
                          f"cpu/req server {point['cpu_ms_per_request']['server']} ms "
                          f"client {point['cpu_ms_per_request']['client']} ms", flush=True)
            except Exception as exc:  # noqa: BLE001  (record, keep measuring the others)
                entry["error"] = f"{type(exc).__name__}: {exc}"
                print(f"{mode}: FAILED {entry['error']}\n{devservers.log_tail(service, run_dir)}", file=sys.stderr)
            if last_use[service] == i:
                devservers.stop(service, run_dir)
                services.remove(service)
        timings["load_points_s"] = round(time.perf_counter() - t, 1)
        devservers.stop("mlflow", run_dir)
        services.remove("mlflow")

        # ---- the limit, with every server stopped: eager model(x) as the issue defines it, and (for
        # information only, not used by the goals) the same model compiled with tf.function
        import tensorflow as tf

        in_process = measure_in_process(lambda v: model(v, training=False), x, warmup, duration, max_requests)
        in_process["call"] = "model(x, training=False), eager, x a (1, 784) float32 numpy array"
        compiled = tf.function(lambda v: model(v, training=False),
                               input_signature=[tf.TensorSpec([None, 784], tf.float32)])
        in_process_compiled = measure_in_process(compiled, x, warmup, duration, max_requests)
        in_process_compiled["call"] = "tf.function(lambda v: model(v, training=False))(x): informational only"
        for label, r in (("in_process", in_process), ("(tf.function)", in_process_compiled)):
            print(f"{label:>14} x1   {r['throughput_rps']:>8.1f} req/s  p50 {r['p50_ms']} ms  "
                  f"p99 {r['p99_ms']} ms  cpu/req {r['cpu_ms_per_request']['process']} ms", flush=True)
    finally:
        for service in reversed(services):
            devservers.stop(service, run_dir)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    goals = _goals(modes, in_process, in_process_compiled)
    report = {
        "what": "batch-1 predict requests, closed-loop clients; throughput = successful requests / measured s; "
                "latency = client-side send to fully read response",
        "quick": args.quick,
        "model": {"builder": "tfmlops.models.build_model(ModelConfig(n_features=784, num_classes=10))",
                  "train_epochs": args.epochs,
                  "data": "mnist sample_fraction=0.05", "final_epoch": {k: round(v[-1], 4) for k, v in history.items()},
                  "name": MODEL_NAME, "signature": SIGNATURE, "input": INPUT_NAME, "output": OUTPUT_NAME},
        "settings": {"concurrency": list(CONCURRENCY), "warmup_s": warmup, "duration_s": duration,
                     "max_requests_per_point": max_requests, "client_processes_max": args.client_procs,
                     "batching_parameters": BATCHING_PARAMETERS,
                     "mlflow_serve": {"command": "mlflow models serve -m models:/<name>/<v> --env-manager local "
                                                 "-p PORT -h 127.0.0.1",
                                      "workers": int(os.environ.get("MLFLOW_MODELS_WORKERS") or 1)},
                     "grpc_client": "one channel (own connection) per client; PredictRequest serialized once",
                     "rest_client": "one requests.Session per client; JSON body encoded once"},
        "environment": environment,
        "output_checks_max_abs_diff": checks,
        "modes": modes,
        "in_process": in_process,
        "in_process_tf_function_informational": in_process_compiled,
        "goals": goals,
        "timings_s": {**timings, "total_s": round(time.perf_counter() - bench_start, 1)},
    }
    save_results("serving", report, plot)

    print("\ngoals (throughput ratios):")
    for name, g in goals.items():
        if "ratio_by_concurrency" in g:
            per_c = ", ".join(f"x{c}: {r}" for c, r in g["ratio_by_concurrency"].items())
            print(f"  {name}: goal >= {g['goal']}  [{per_c}]  peak {g['ratio_at_peak']}  "
                  f"meets_goal={g['meets_goal']} (at peak: {g['meets_goal_at_peak']})")
        else:
            print(f"  {name}: goal >= {g['goal']}  ratio {g['ratio']}  meets_goal={g['meets_goal']}  "
                  f"(vs tf.function, info: {g['ratio_vs_tf_function_informational']})")
    print(f"wrote {RESULTS / 'serving.json'} and {RESULTS / 'serving.png'} in {report['timings_s']['total_s']} s")
    return 0 if all(m.get("points") and not m.get("error") for m in modes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
