"""What observability costs in tf-serving-local, and what warmup records buy, measured side by side
in one run with the load generator of ``bench_serving.py`` (batch-1 predicts, closed-loop
clients in separate processes):

* **metrics**: the same model on a server without a monitoring config and on one with it, its
  Prometheus page scraped every second during the load (goal: throughput ≥ 0.95×). The metrics
  are recorded either way, as in TF Serving; the difference is the page and its scrapes.
* **request logging** (``logging_config``) at 10 % and 100 % sampling vs none (goal at 10 %:
  ≥ 0.9×); the logged share of all requests (goal: 10 % ± 1 pp over ≥ 5,000 requests); no record
  lost: every logged request (``request_log_count``) is in the log files after rotation
  (1 MiB files) and SIGTERM.
* **warmup records**: a fresh server on a version with / without
  ``assets.extra/tf_serving_warmup_requests``: p99 of the first 100 requests vs the steady p99
  (goal with them: ≤ 1.5×).

Writes benchmarks/results/observability.json and .png.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))
SIDES = ("off", "metrics", "log10", "log100")


def _config(path: Path, base: Path, model: str, rate: float | None, prefix: Path | None) -> None:
    logging = ("" if rate is None else
               f'logging_config {{ log_collector_config {{ filename_prefix: "{prefix}" }} '
               f'sampling_config {{ sampling_rate: {rate} }} }}')
    path.write_text(f'model_config_list {{ config {{ name: "{model}" base_path: "{base}" '
                    f'model_platform: "tensorflow" {logging} }} }}\n')


def _page(rest: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{rest}/monitoring/prometheus/metrics", timeout=10) as r:
        return r.read().decode()


def _counter(page: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$", page, re.M)
    return float(m.group(1)) if m else 0.0


def _scraper(rest: int, stop: threading.Event, counts: list) -> None:
    while not stop.wait(1.0):
        _page(rest)
        counts[0] += 1


def _latencies(url: str, body: bytes, n: int) -> list[float]:
    import http.client

    host, port = url.split("/")[2].split(":")
    path = "/" + url.split("/", 3)[3]
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}")
        out.append(time.perf_counter() - t)
    conn.close()
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels = list(report["throughput"])
    for i, api in enumerate(("rest", "grpc")):
        values = [report["throughput"][s][api]["throughput_rps"] for s in labels]
        axes[0].bar([j + (i - 0.5) * 0.4 for j in range(len(labels))], values, width=0.4, label=api)
    axes[0].set_xticks(range(len(labels)), labels)
    axes[0].set_title("throughput (req/s), batch-1 predicts")
    axes[0].legend()
    w = report["warmup"]
    names = ["without warmup records", "with warmup records"]
    first = [w["without"]["first100_p99_ms"], w["with"]["first100_p99_ms"]]
    steady = [w["without"]["steady_p99_ms"], w["with"]["steady_p99_ms"]]
    axes[1].bar([0 - 0.2, 1 - 0.2], first, width=0.4, label="p99, first 100 requests")
    axes[1].bar([0 + 0.2, 1 + 0.2], steady, width=0.4, label="p99, steady")
    axes[1].set_xticks([0, 1], names)
    axes[1].set_title("after a new version loads (ms)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import devservers
    import numpy as np
    from bench_serving import (GRPC_PREDICT, MODEL_NAME, SERVER_ENV, _payloads, _percentiles, run_load, save_results,
                               seed_model)

    from tfmlops.export import WARMUP_FILE
    from tfmlops.serving.servables.warmup import read_tfrecords

    work = Path(tempfile.mkdtemp(prefix="bench-observability-"))
    run_dir, services = work / "run", []
    try:
        dataset, model, exported = seed_model(work)
        base = work / "models" / MODEL_NAME
        shutil.copytree(Path(exported["path"]) / "saved_model", base / "1")
        monitoring = work / "monitoring.config"
        monitoring.write_text("prometheus_config { enable: true }\n")
        ports = {}
        for side in SIDES:
            rate = {"log10": 0.1, "log100": 1.0}.get(side)
            cfg = work / f"{side}.config"
            _config(cfg, base, MODEL_NAME, rate, work / "logs" / side / "requests")
            rest, grpc_port = devservers.free_port(), devservers.free_port()
            argv = [str(devservers.BIN / "tf-serving-local"), f"--port={grpc_port}", f"--rest_api_port={rest}",
                    f"--model_config_file={cfg}", "--request_log_max_file_bytes=1048576"]
            if side != "off":
                argv.append(f"--monitoring_config_file={monitoring}")
            devservers.start(side, argv, run_dir, env=SERVER_ENV)
            services.append(side)
            ports[side] = (rest, grpc_port)
        for side, (rest, _) in ports.items():
            devservers.wait_http(f"http://127.0.0.1:{rest}/v1/models/{MODEL_NAME}/versions/1", 300, side, run_dir)
        payloads = _payloads(np.ascontiguousarray(dataset.x_test[:1], dtype=np.float32))
        runs: dict = {s: {"rest": [], "grpc": []} for s in SIDES}
        scrapes = [0]
        for _ in range(args.rounds):
            for api in ("rest", "grpc"):
                for side in SIDES:
                    rest, grpc_port = ports[side]
                    spec = {"kind": "http", "body": payloads["rest"],
                            "url": f"http://127.0.0.1:{rest}/v1/models/{MODEL_NAME}:predict"} if api == "rest" \
                        else {"kind": "grpc", "body": payloads["grpc"], "method": GRPC_PREDICT,
                              "target": f"127.0.0.1:{grpc_port}"}
                    spec.update(warmup_s=0.5, duration_s=args.duration)
                    stop = threading.Event()
                    scraper = threading.Thread(target=_scraper, args=(rest, stop, scrapes), daemon=True)
                    if side == "metrics":
                        scraper.start()
                    runs[side][api].append(run_load(spec, args.concurrency, os.cpu_count() or 1, 500_000,
                                                    devservers.running_pid(side, run_dir)))
                    stop.set()
                    if side == "metrics":
                        scraper.join()
        throughput = {s: {api: {"throughput_rps": round(float(np.median([r["throughput_rps"] for r in rs])), 1),
                                "p99_ms": round(float(np.median([r["p99_ms"] for r in rs])), 3),
                                "errors": sum(r["errors"] for r in rs)} for api, rs in apis.items()}
                      for s, apis in runs.items()}
        ratios = {s: {api: round(throughput[s][api]["throughput_rps"] / throughput["off"][api]["throughput_rps"], 3)
                      for api in ("rest", "grpc")} for s in SIDES if s != "off"}
        # logged share and completeness, from the servers' own counters, then the files after SIGTERM
        logging: dict = {}
        for side in ("log10", "log100"):
            page = _page(ports[side][0])
            requests = _counter(page, ":tensorflow:serving:request_count", model_name=MODEL_NAME, status="OK")
            logged = _counter(page, ":tensorflow:serving:request_log_count", model_name=MODEL_NAME, status_code="OK")
            devservers.stop(side, run_dir)
            services.remove(side)
            files = glob.glob(str(work / "logs" / side / "requests-*.tfrecord"))
            records = sum(1 for f in files for _ in read_tfrecords(f))
            partial = glob.glob(str(work / "logs" / side / "*.partial"))
            logging[side] = {"requests": int(requests), "logged": int(logged),
                             "share": round(logged / requests, 4) if requests else None,
                             "files": len(files), "records_in_files": records, "partial_files": len(partial),
                             "lost": int(logged - records)}
        # warmup: fresh servers on a version with and without the warmup file
        no_warm = work / "models_nowarm" / MODEL_NAME
        shutil.copytree(base / "1", no_warm / "1")
        os.remove(no_warm / "1" / WARMUP_FILE)
        warm: dict = {"with": [], "without": []}
        for _ in range(args.rounds):
            for label, b in (("with", base), ("without", no_warm)):
                cfg = work / f"warm-{label}.config"
                _config(cfg, b, MODEL_NAME, None, None)
                rest, grpc_port = devservers.free_port(), devservers.free_port()
                name = f"warm-{label}"
                devservers.start(name, [str(devservers.BIN / "tf-serving-local"), f"--port={grpc_port}",
                                        f"--rest_api_port={rest}", f"--model_config_file={cfg}"], run_dir,
                                 env=SERVER_ENV)
                services.append(name)
                devservers.wait_http(f"http://127.0.0.1:{rest}/v1/models/{MODEL_NAME}/versions/1", 300, name,
                                     run_dir)
                url = f"http://127.0.0.1:{rest}/v1/models/{MODEL_NAME}:predict"
                first = _latencies(url, payloads["rest"], 100)
                steady = _latencies(url, payloads["rest"], 400)
                warm[label].append({"first100_p99_ms": _percentiles(np.array(first))["p99_ms"],
                                    "steady_p99_ms": _percentiles(np.array(steady))["p99_ms"],
                                    "first_request_ms": round(first[0] * 1e3, 3)})
                devservers.stop(name, run_dir)
                services.remove(name)
        warmup = {label: {k: round(float(np.median([r[k] for r in rs])), 3) for k in rs[0]}
                  for label, rs in warm.items()}
        for w in warmup.values():
            w["first100_vs_steady_p99"] = round(w["first100_p99_ms"] / w["steady_p99_ms"], 3)
        report = {
            "cpu_count": os.cpu_count(), "duration_s": args.duration, "rounds": args.rounds,
            "concurrency": args.concurrency, "throughput": throughput, "throughput_vs_off": ratios,
            "metrics_page_scrapes": scrapes[0], "logging": logging, "warmup": warmup,
            "goals": {
                "metrics_throughput_ge_0.95x": all(v >= 0.95 for v in ratios["metrics"].values()),
                "log10_throughput_ge_0.9x": all(v >= 0.9 for v in ratios["log10"].values()),
                "log10_share_within_1pp": logging["log10"]["requests"] >= 5000
                and abs(logging["log10"]["share"] - 0.1) <= 0.01,
                "no_record_lost": all(v["lost"] == 0 and v["partial_files"] == 0 for v in logging.values()),
                "warmup_first100_le_1.5x_steady": warmup["with"]["first100_vs_steady_p99"] <= 1.5},
            "note": "medians of the rounds; all sides alternate within each round on the same machine"}
        print(json.dumps(report, indent=2))
        save_results("observability", report, plot)
        return 0
    finally:
        for side in services:
            devservers.stop(side, run_dir)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
