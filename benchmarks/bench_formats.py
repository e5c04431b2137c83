"""Size, accuracy and latency of every optimization variant and export format, each measured in
its own runtime (TensorFlow, tf_keras, LiteRT, onnxruntime, TF.js in Node and in Chromium).

Trains the seed MLP (5 epochs) on MNIST, builds every variant with the default
:class:`tfmlops.optimize.OptimizeConfig`, exports and verifies every artifact
(:func:`tfmlops.formats.pipeline.optimize_and_export_all`, no MLflow) and writes
benchmarks/results/formats.json, formats.md and formats.png (size vs accuracy, marker area ∝
latency). ``--sample-fraction`` trades fidelity for time (1.0 = all 60k/10k images, ~5 min
on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample-fraction", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    from tfmlops import data
    from tfmlops.formats import FLOAT_FORMATS
    from tfmlops.formats.pipeline import optimize_and_export_all
    from tfmlops.models import ModelConfig, TrainConfig, build_model, train
    from tfmlops.optimize import VARIANTS, OptimizeConfig

    start = time.perf_counter()
    dataset, _ = data.load_validated("mnist", 784, 10, sample_fraction=args.sample_fraction)
    model = build_model(ModelConfig())
    train(model, dataset.x_train, dataset.y_train, TrainConfig(epochs=args.epochs))
    trained = time.perf_counter() - start
    work = Path(tempfile.mkdtemp(prefix="bench-formats-"))
    try:
        result = optimize_and_export_all(model, dataset, work, VARIANTS, FLOAT_FORMATS, OptimizeConfig())
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(result["report"]["png"], RESULTS / "formats.png")
        shutil.copy(result["report"]["markdown"], RESULTS / "formats.md")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        "benchmark": "formats", "sample_fraction": args.sample_fraction, "epochs": args.epochs,
        "train_rows": len(dataset.y_train), "test_rows": len(dataset.y_test),
        "float_accuracy": result["float_accuracy"], "train_seconds": round(trained, 1),
        "total_seconds": round(time.perf_counter() - start, 1), "machine": platform.machine(),
        "python": sys.version.split()[0], "variants": result["variants"], "rows": result["report"]["rows"],
    }
    (RESULTS / "formats.json").write_text(json.dumps(summary, indent=2, default=str))
    print((RESULTS / "formats.md").read_text())
    print(f"float accuracy {summary['float_accuracy']:.4f}; total {summary['total_seconds']} s; "
          f"written {RESULTS / 'formats.json'}, formats.md, formats.png")


if __name__ == "__main__":
    main()
