"""tf-serving-local before vs after a change, in one run: the same model served by the server of a
baseline commit (a git worktree of ``--baseline``) and by the current tree, measured alternately
with the same load generator as ``bench_serving.py`` (batch-1 predicts, closed-loop clients in
separate processes), REST and gRPC at 1 and 8 clients. Goal: the current server's throughput is
not lower and its p99 not higher than the baseline's beyond the run-to-run noise (ratios printed
and stored; this 2-vCPU machine varies by up to ~40 % between runs, less within one run, which is
why both are measured side by side, point by point).

Writes benchmarks/results/serving_before_after.json and .png.

    .venv/bin/python benchmarks/bench_serving_before_after.py --baseline 1a74956
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # devservers
sys.path.insert(0, str(ROOT / "benchmarks"))  # bench_serving's load generator
CONCURRENCY = (1, 8)
ENTRY_POINTS = ("tfmlops.serving.model_servers.main", "tfmlops.serving.cli")  # after / before the restructure


def server_argv(source: Path | None, config_file: Path, rest: int, grpc_port: int) -> list[str]:
    """tf-serving-local from ``source`` (a checkout) or from this tree, with the same flags."""
    import devservers

    flags = devservers.serving_argv(config_file, rest, grpc_port)[1:]
    if source is None:
        return [str(devservers.BIN / "tf-serving-local"), *flags]
    module = next(m for m in ENTRY_POINTS if (source / "include" / Path(*m.split("."))).with_suffix(".py").exists())
    code = (f"import sys; sys.path.insert(0, {str(source / 'include')!r}); "
            f"from {module} import main; sys.exit(main())")
    return [sys.executable, "-c", code, *flags]


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"{api} x{c}" for api in ("rest", "grpc") for c in CONCURRENCY]
    for ax, key, title in ((axes[0], "throughput_rps", "throughput (req/s)"), (axes[1], "p99_ms", "p99 latency (ms)")):
        for offset, side in ((-0.2, "before"), (0.2, "after")):
            values = [report["points"][label][side][key] for label in labels]
            ax.bar([i + offset for i in range(len(labels))], values, width=0.4, label=side)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"tf-serving-local: {report['baseline']} (before) vs the current tree (after)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="1a74956", help="commit whose server is 'before'")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2, help="alternations per point (before, after, ...)")
    args = parser.parse_args()
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import devservers
    import numpy as np
    from bench_serving import GRPC_PREDICT, MODEL_NAME, SERVER_ENV, _payloads, run_load, save_results, seed_model

    from tfmlops.deploy.publish import ensure_model_config, publish_version

    work = Path(tempfile.mkdtemp(prefix="bench-before-after-"))
    baseline = work / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline), args.baseline], check=True,
                   capture_output=True)
    run_dir, services = work / "run", []
    try:
        dataset, model, exported = seed_model(work)
        models_root = work / "models"
        publish_version(Path(exported["path"]) / "saved_model", models_root, MODEL_NAME, 1)
        ports = {}
        for side, source in (("before", baseline), ("after", None)):
            config_file = work / f"{side}.config"
            ensure_model_config(config_file, MODEL_NAME, str(models_root / MODEL_NAME))
            rest, grpc_port = devservers.free_port(), devservers.free_port()
            devservers.start(side, server_argv(source, config_file, rest, grpc_port), run_dir, env=SERVER_ENV)
            services.append(side)
            ports[side] = (rest, grpc_port)
        for side, (rest, _) in ports.items():
            devservers.wait_http(f"http://127.0.0.1:{rest}/v1/models/{MODEL_NAME}/versions/1", 300, side, run_dir)
        payloads = _payloads(np.ascontiguousarray(dataset.x_test[:1], dtype=np.float32))
        points: dict = {}
        for api in ("rest", "grpc"):
            for c in CONCURRENCY:
                label = f"{api} x{c}"
                runs: dict = {"before": [], "after": []}
                for _ in range(args.rounds):
                    for side in ("before", "after"):
                        rest, grpc_port = ports[side]
                        spec = {"kind": "http", "body": payloads["rest"],
                                "url": f"http://127.0.0.1:{rest}/v1/models/{MODEL_NAME}:predict"} if api == "rest" \
                            else {"kind": "grpc", "body": payloads["grpc"], "method": GRPC_PREDICT,
                                  "target": f"127.0.0.1:{grpc_port}"}
                        spec.update(warmup_s=args.warmup, duration_s=args.duration)
                        runs[side].append(run_load(spec, c, os.cpu_count() or 1, 200_000,
                                                   devservers.running_pid(side, run_dir)))
                points[label] = {side: {"throughput_rps": round(float(np.median([r["throughput_rps"] for r in rs])), 1),
                                        "p99_ms": round(float(np.median([r["p99_ms"] for r in rs])), 3),
                                        "errors": sum(r["errors"] for r in rs)} for side, rs in runs.items()}
                p = points[label]
                p["throughput_after_vs_before"] = round(p["after"]["throughput_rps"] / p["before"]["throughput_rps"], 3)
                p["p99_after_vs_before"] = round(p["after"]["p99_ms"] / p["before"]["p99_ms"], 3)
                print(f"{label:>8}: {p['before']['throughput_rps']:>7.1f} -> {p['after']['throughput_rps']:>7.1f} "
                      f"req/s ({p['throughput_after_vs_before']}x), p99 {p['before']['p99_ms']} -> "
                      f"{p['after']['p99_ms']} ms", flush=True)
        report = {"baseline": args.baseline, "current": subprocess.run(
                      ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                      text=True).stdout.strip() + " + working tree",
                  "cpu_count": os.cpu_count(), "duration_s": args.duration, "rounds": args.rounds, "points": points,
                  "note": "medians of the rounds; before and after alternate within each point"}
        save_results("serving_before_after", report, plot)
        return 0
    finally:
        for side in services:
            devservers.stop(side, run_dir)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], capture_output=True)
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
