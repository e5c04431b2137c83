"""The traffic router (HAProxy) in front of two tf-serving-local replica groups, measured in one run:

* **overhead**: p50/p99 of batch-1 predicts through the router vs straight to a replica, REST and
  gRPC, same load generator and machine (goal: ≤ 1 ms more at p50);
* **share accuracy**: the share of requests that reached the canary group (the router's own
  per-server response counters) vs the configured share, over ≥ 2,000 requests per step
  (goal: within ±2 percentage points);
* **bad canary**: a gray release of a version that fails single-row requests (the kind of defect
  only live traffic meets) under client load: requests the bad version failed before the share
  went back to 0 %, and seconds from its first failure to 0 % (goals: at most the first step's
  share of one watch window of requests; ≤ 2 watch windows).

Writes benchmarks/results/router.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def failing_copy(model, path: Path, smoke_x) -> dict:
    """The model as a SavedModel whose single-row requests fail (INVALID_ARGUMENT), with its smoke
    batch (several rows, so it passes the rollout's smoke check)."""
    import tensorflow as tf

    from tfmlops.export import INPUT_NAME, OUTPUT_NAME, SIGNATURE

    @tf.function(input_signature=[tf.TensorSpec([None, smoke_x.shape[1]], tf.float32, name=INPUT_NAME)])
    def serve(pixels):
        check = tf.debugging.assert_greater(tf.shape(pixels)[0], 1, message="injected fault: single-row request")
        with tf.control_dependencies([check]):
            return {OUTPUT_NAME: tf.identity(model(pixels, training=False))}

    tf.saved_model.save(model, str(path), signatures={SIGNATURE: serve})
    expected = model(smoke_x, training=False).numpy()
    return {"signature_name": SIGNATURE, "input": INPUT_NAME, "output": OUTPUT_NAME, "instances": smoke_x.tolist(),
            "expected": expected.tolist(), "tolerance": 1e-5}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = list(report["overhead"])
    for i, side in enumerate(("direct", "router")):
        a1.bar([j + (i - 0.5) * 0.4 for j in range(len(labels))],
               [report["overhead"][k][side]["p50_ms"] for k in labels], width=0.4, label=side)
    a1.set_xticks(range(len(labels)), labels)
    a1.set_title("p50 latency (ms), batch-1 predicts")
    a1.legend()
    shares = report["share_accuracy"]["steps"]
    a2.plot([s["configured_pct"] for s in shares], [s["measured_pct"] for s in shares], "o-", label="measured")
    a2.plot([0, 100], [0, 100], "k--", lw=0.8, label="configured")
    a2.set_xlabel("configured canary share (%)")
    a2.set_ylabel("measured share (%)")
    a2.set_title("share of requests reaching the canary group")
    a2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--share-requests", type=int, default=2000)
    parser.add_argument("--window", type=float, default=5.0, help="gray watch window of the bad-canary run (s)")
    args = parser.parse_args()
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import devservers
    import numpy as np
    from bench_serving import GRPC_PREDICT, MODEL_NAME, SERVER_ENV, _payloads, run_load, save_results, seed_model

    from tfmlops.deploy.client import ServingClient
    from tfmlops.deploy.endpoint import Endpoint
    from tfmlops.deploy.progressive import GrayThresholds, gray_release
    from tfmlops.deploy.publish import ensure_model_config, publish_version
    from tfmlops.deploy.rollout import Candidate
    from tfmlops.deploy.router import Replica, Router, RouterConfig

    if shutil.which("haproxy") is None:
        sys.exit("needs HAProxy (apt-get install haproxy)")
    work = Path(tempfile.mkdtemp(prefix="bench-router-"))
    run_dir, services, router_proc = work / "run", [], None
    try:
        dataset, model, exported = seed_model(work)
        monitoring = work / "monitoring.config"
        monitoring.write_text("prometheus_config { enable: true }\n")
        endpoints, replicas = {}, []
        for group in ("stable", "canary"):
            models_root = work / group / "models"
            publish_version(Path(exported["path"]) / "saved_model", models_root, MODEL_NAME, 1)
            cfg = work / group / "models.config"
            ensure_model_config(cfg, MODEL_NAME, str(models_root / MODEL_NAME))
            rest, grpc_port = devservers.free_port(), devservers.free_port()
            devservers.start(group, [*devservers.serving_argv(cfg, rest, grpc_port),
                                     f"--monitoring_config_file={monitoring}"], run_dir, env=SERVER_ENV)
            services.append(group)
            endpoints[group] = Endpoint(group, rest_port=rest, grpc_port=grpc_port, models_root=str(models_root),
                                        model_config_file=str(cfg), timeout=60)
            replicas.append(Replica(group, group, "127.0.0.1", rest, grpc_port))
        for group, ep in endpoints.items():
            devservers.wait_http(f"http://127.0.0.1:{ep.rest_port}/v1/models/{MODEL_NAME}/versions/1", 300, group,
                                 run_dir)
        config = RouterConfig(replicas, rest_port=devservers.free_port(), grpc_port=devservers.free_port(),
                              metrics_port=devservers.free_port(), admin_socket=str(work / "haproxy.sock"))
        (work / "haproxy.cfg").write_text(config.render())
        router_proc = subprocess.Popen(["haproxy", "-db", "-f", str(work / "haproxy.cfg")],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        router = Router(config.admin_socket, replicas)
        deadline = time.monotonic() + 20
        while not os.path.exists(config.admin_socket) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # first health checks

        # 1. overhead: the same load straight to the stable replica and through the router (share 0)
        payloads = _payloads(np.ascontiguousarray(dataset.x_test[:1], dtype=np.float32))
        overhead: dict = {}
        for api in ("rest", "grpc"):
            sides = {}
            for side, (rest, grpc_port) in (("direct", (endpoints["stable"].rest_port, endpoints["stable"].grpc_port)),
                                            ("router", (config.rest_port, config.grpc_port))):
                spec = {"kind": "http", "body": payloads["rest"],
                        "url": f"http://127.0.0.1:{rest}/v1/models/{MODEL_NAME}:predict"} if api == "rest" \
                    else {"kind": "grpc", "body": payloads["grpc"], "method": GRPC_PREDICT,
                          "target": f"127.0.0.1:{grpc_port}"}
                spec.update(warmup_s=0.5, duration_s=args.duration)
                point = run_load(spec, args.concurrency, os.cpu_count() or 1, 500_000, None)
                sides[side] = {k: point[k] for k in ("throughput_rps", "p50_ms", "p99_ms", "errors")}
            sides["p50_added_ms"] = round(sides["router"]["p50_ms"] - sides["direct"]["p50_ms"], 3)
            overhead[f"{api} x{args.concurrency}"] = sides
            print(api, sides, flush=True)

        # 2. share accuracy: the router's own counts of responses per group
        client = ServingClient("127.0.0.1", config.rest_port, config.grpc_port, timeout=30)
        x = np.asarray(dataset.x_test[:1], np.float32)
        steps = []
        for share in (5, 25, 50):
            router.set_share(share)
            before = router.served()
            for _ in range(args.share_requests):
                client.predict_grpc(MODEL_NAME, x)
            after = router.served()
            got = {g: after[g] - before[g] for g in after}
            measured = 100 * got["canary"] / max(1, sum(got.values()))
            steps.append({"configured_pct": share, "measured_pct": round(measured, 2), "requests": sum(got.values()),
                          "error_pp": round(measured - share, 2)})
            print(steps[-1], flush=True)
        router.set_share(0)

        # 3. bad canary under load through the router
        bad_dir = work / "bad"
        smoke = failing_copy(model, bad_dir, np.asarray(dataset.x_test[:3], np.float32))
        failures: list[float] = []
        stop = threading.Event()

        def load():
            c = ServingClient("127.0.0.1", config.rest_port, config.grpc_port, timeout=30)
            while not stop.is_set():
                try:
                    c.predict_grpc(MODEL_NAME, x)
                except Exception:  # noqa: BLE001 - counted: the bad version's answers
                    failures.append(time.monotonic())
                time.sleep(0.002)
            c.close()

        threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        events: list[tuple[float, str]] = []
        res = gray_release(Candidate(MODEL_NAME, 2, str(bad_dir), smoke), router,
                           {g: [ep] for g, ep in endpoints.items()}, steps=(5, 25, 50, 100), window_s=args.window,
                           thresholds=GrayThresholds(min_requests=5),
                           on_event=lambda m: events.append((time.monotonic(), m)))
        back_to_zero = next((t for t, m in events if "share 0 %" in m), None)
        stop.set()
        for t in threads:
            t.join(10)
        first_failure = failures[0] if failures else None
        bad = {"outcome": res.outcome, "reason": res.reason, "failed_requests": len(failures),
               "window_s": args.window,
               "seconds_first_failure_to_0pct": round(back_to_zero - first_failure, 3)
               if back_to_zero and first_failure else None,
               "first_step_seconds": res.steps[0]["seconds"] if res.steps else None,
               "first_step_requests": res.steps[0]["stable"]["requests"] + res.steps[0]["canary"]["requests"]
               if res.steps and "stable" in res.steps[0] else None}
        # the load's request rate over the step, scaled to a whole window (the step may end early)
        bad["full_window_requests"] = round(bad["first_step_requests"] / bad["first_step_seconds"] * args.window) \
            if bad["first_step_requests"] and bad["first_step_seconds"] else 0
        print(bad, flush=True)
        client.close()
        report = {
            "cpu_count": os.cpu_count(), "concurrency": args.concurrency, "overhead": overhead,
            "share_accuracy": {"requests_per_step": args.share_requests, "steps": steps},
            "bad_canary": bad,
            "goals": {
                "router_p50_overhead_le_1ms": all(v["p50_added_ms"] <= 1.0 for v in overhead.values()),
                "share_within_2pp": all(abs(s["error_pp"]) <= 2 for s in steps),
                "bad_canary_rolled_back": bad["outcome"] == "rolled_back",
                # what the first step's 5 % of one full watch window would be, at the load measured
                "bad_requests_le_first_step_share": bad["failed_requests"] <= 0.05 * bad["full_window_requests"],
                "rollback_le_2_windows": bad["seconds_first_failure_to_0pct"] is not None
                and bad["seconds_first_failure_to_0pct"] <= 2 * args.window},
            "note": "one run, same machine; HAProxy 2.6 from Debian; the bad version fails single-row requests",
        }
        save_results("router", report, plot)
        print(json.dumps(report["goals"], indent=2))
        return 0
    finally:
        if router_proc is not None:
            router_proc.terminate()
            router_proc.wait(10)
        for name in services:
            devservers.stop(name, run_dir)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
