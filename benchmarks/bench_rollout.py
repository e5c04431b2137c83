"""Rollout under load: requests/s, failures, p50/p99 before, during and after a ``replace`` and a
``canary`` rollout on the local TF Serving-compatible server (one endpoint, tiny 4→3 MLPs).

Goal: 0 failed requests and p99 during a rollout ≤ 2× the steady p99. A steady client loop
(2 REST + 2 gRPC threads, in a process of their own) runs throughout; the replace phase sends
unversioned requests, the canary phase addresses the ``stable`` label. One rollout of these models
lasts a fraction of a second (~100 requests), so each phase runs ``ROLLOUTS`` rollouts back to back
and "during" pools the requests sent while any of them ran: its p99 then rests on ~1000 samples,
not on the slowest one or two. Writes benchmarks/results/rollout.json and rollout.png.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # devservers: the embedded servers, started as processes
RESULTS = ROOT / "benchmarks" / "results"
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
MODEL = "bench_roll"
ROLLOUTS = 8  # per strategy
X = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.25, 2.0]], np.float32)


def build(path: Path, scale: float) -> dict:
    import tensorflow as tf
    import tf_keras as keras

    rng = np.random.default_rng(1)
    model = keras.Sequential([keras.layers.Input((4,), name="x"), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    for layer, factor in zip(model.layers, (1.0, scale)):
        layer.set_weights([rng.normal(size=w.shape).astype(np.float32) * factor for w in layer.get_weights()])

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def serve(x):
        return {"y": model(x, training=False)}

    tf.saved_model.save(model, str(path), signatures={"serving_default": serve})
    expected = tf.saved_model.load(str(path)).signatures["serving_default"](x=tf.constant(X))["y"].numpy()
    return {"signature_name": "serving_default", "output": "y", "instances": X.tolist(),
            "expected": expected.tolist(), "tolerance": 1e-5}


def _client_loop(api: str, rest: int, grpc: int, stable, stop, samples: list, lock, warm: threading.Event) -> None:
    from tfmlops.deploy.client import ServingClient

    client = ServingClient("127.0.0.1", rest, grpc, timeout=30)
    for _ in range(50):  # untimed: imports (TensorFlow for gRPC tensors) and connections
        client.predict_rest(MODEL, X.tolist()) if api == "rest" else client.predict_grpc(MODEL, {"x": X})
    warm.set()
    while not stop.is_set():
        label = "stable" if stable.is_set() else None
        t0 = time.perf_counter()
        try:
            if api == "rest":
                client.predict_rest(MODEL, X.tolist(), label=label)
            else:
                client.predict_grpc(MODEL, {"x": X}, label=label)
            ok = True
        except Exception:  # noqa: BLE001
            ok = False
        with lock:
            samples.append((time.monotonic(), (time.perf_counter() - t0) * 1000, ok))
    client.close()


def _load_process(rest: int, grpc: int, stable, stop, ready, out: str) -> None:
    """The clients: 2 REST + 2 gRPC threads in a process of their own, as real clients are (in the
    driver's process their latencies would include its GIL time). Samples go to ``out`` (.npy)."""
    samples, lock = [], threading.Lock()
    warm = [threading.Event() for _ in range(4)]
    threads = [threading.Thread(target=_client_loop, args=(api, rest, grpc, stable, stop, samples, lock, w))
               for api, w in zip(("rest", "rest", "grpc", "grpc"), warm)]
    for t in threads:
        t.start()
    for w in warm:
        w.wait()
    ready.set()
    for t in threads:
        t.join()
    np.save(out, np.array(samples, dtype=float).reshape(-1, 3))


class Load:
    """Steady client load in a child process; ``samples`` = [(monotonic t, latency ms, ok)] after stop()."""

    def __init__(self, rest: int, grpc: int, out: Path):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.out = out
        self.stable, self._stop, self._ready = ctx.Event(), ctx.Event(), ctx.Event()
        self.process = ctx.Process(target=_load_process,
                                   args=(rest, grpc, self.stable, self._stop, self._ready, str(out)))
        self.samples: list[tuple[float, float, bool]] = []

    def start(self):
        self.process.start()
        if not self._ready.wait(120):
            raise RuntimeError("the load process sent no request within 120 s")

    def stop(self):
        self._stop.set()
        self.process.join(60)
        self.samples = [(t, lat, bool(ok)) for t, lat, ok in np.load(self.out)]


def stats(samples, windows) -> dict:
    sel = [(lat, ok) for t, lat, ok in samples if any(t0 <= t < t1 for t0, t1 in windows)]
    lats = np.array([lat for lat, ok in sel if ok]) if sel else np.array([0.0])
    seconds = sum(t1 - t0 for t0, t1 in windows)
    return {"seconds": round(seconds, 2), "requests": len(sel), "rps": round(len(sel) / max(seconds, 1e-9), 1),
            "failures": sum(1 for _, ok in sel if not ok), "p50_ms": round(float(np.percentile(lats, 50)), 2),
            "p99_ms": round(float(np.percentile(lats, 99)), 2)}


def main() -> None:
    import devservers
    from tfmlops.deploy.checks import CanaryChecks
    from tfmlops.deploy.endpoint import Endpoint
    from tfmlops.deploy.model_config import apply_config, find_entry, read_config, with_versions
    from tfmlops.deploy.publish import publish_version
    from tfmlops.deploy.rollout import Candidate, rollout

    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    smokes = {v: build(work / "staging" / str(v), 1.0 + v / 2) for v in (1, 2, 3)}  # cycled: version n is model n % 3
    models_root, config_file = work / "models", work / "models.config"
    publish_version(work / "staging" / "1", models_root, MODEL, 1)
    config_file.write_text(f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{models_root / MODEL}" '
                           'model_platform: "tensorflow" } }\n')
    rest, grpc = devservers.free_port(), devservers.free_port()
    argv = [str(devservers.BIN / "tf-serving-local"), f"--port={grpc}", f"--rest_api_port={rest}",
            f"--model_config_file={config_file}", "--file_system_poll_wait_seconds=1"]
    devservers.start("serving", argv, work)
    marks = []
    try:
        devservers.wait_http(f"http://127.0.0.1:{rest}/v1/models/{MODEL}", 120, "serving", work)
        ep = Endpoint("bench", rest_port=rest, grpc_port=grpc, models_root=str(models_root),
                      model_config_file=str(config_file), timeout=60)
        load = Load(rest, grpc, work / "samples.npy")
        load.start()
        results, windows_of = {}, {}
        version = 1
        for strategy in ("replace", "canary"):
            if strategy == "canary":  # canary clients address the stable label
                cfg = read_config(ep)
                apply_config(ep, with_versions(cfg, MODEL, find_entry(cfg, MODEL).base_path, [version],
                                               {"stable": version}))
                load.stable.set()
            t0 = time.monotonic()
            time.sleep(8)
            t1 = time.monotonic()
            windows, runs = [], []
            for _ in range(ROLLOUTS):
                version += 1
                model = version % 3 + 1  # 3 → 1, 4 → 2, 5 → 3, ...
                ta = time.monotonic()
                res = rollout(Candidate(MODEL, version, str(work / "staging" / str(model)), smokes[model]), [ep],
                              strategy, CanaryChecks(latency_budget_ms=1000, latency_requests=20))
                windows.append((ta, time.monotonic()))
                runs.append({"version": version, "outcome": res.outcome, "reason": res.reason,
                             "rollout_s": res.seconds})
                time.sleep(0.5)
            t2 = time.monotonic()
            time.sleep(8)
            t3 = time.monotonic()
            windows_of[strategy] = {"before": [(t0, t1)], "during": windows, "after": [(t2, t3)]}
            results[strategy] = runs
            marks.append((strategy, windows))
        load.stop()
        ep.close()
        phases = {strategy: {phase: stats(load.samples, w) for phase, w in ws.items()}
                  for strategy, ws in windows_of.items()}
    finally:
        devservers.stop("serving", work)

    failures = sum(p["failures"] for ph in phases.values() for p in ph.values())
    ratio = {s: round(ph["during"]["p99_ms"] / max(ph["before"]["p99_ms"], 1e-9), 2) for s, ph in phases.items()}
    promoted = all(r["outcome"] == "promoted" for runs in results.values() for r in runs)
    out = {"phases": phases, "rollouts": results, "rollouts_per_strategy": ROLLOUTS, "all_promoted": promoted,
           "failures_total": failures, "p99_during_over_steady": ratio,
           "goal": {"failures": 0, "p99_ratio_max": 2.0},
           "goal_met": promoted and failures == 0 and all(r <= 2.0 for r in ratio.values()),
           "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rollout.json").write_text(json.dumps(out, indent=2))
    plot(load.samples, marks, RESULTS / "rollout.png")
    print(json.dumps(out, indent=2))


def plot(samples, marks, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t_start = samples[0][0] if samples else 0
    fig, ax = plt.subplots(figsize=(10, 4))
    ok = [(t - t_start, lat) for t, lat, good in samples if good]
    bad = [(t - t_start, lat) for t, lat, good in samples if not good]
    if ok:
        ax.scatter(*zip(*ok), s=2, alpha=0.4, label="ok")
    if bad:
        ax.scatter(*zip(*bad), s=8, color="red", label="failed")
    for (strategy, windows), color in zip(marks, ("tab:orange", "tab:green")):
        for i, (t1, t2) in enumerate(windows):
            ax.axvspan(t1 - t_start, t2 - t_start, alpha=0.3, color=color,
                       label=f"{strategy} rollouts" if i == 0 else None)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("predict latency under load during rollouts")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
