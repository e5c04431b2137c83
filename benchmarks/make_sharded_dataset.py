"""Write a large synthetic sharded dataset for the data-scale benchmarks: the MNIST rows repeated
``--times`` times, each copy with Gaussian pixel noise (seeded) so no two rows are equal, as
``train/`` and ``test/`` shards of the MNIST example's spec (``pixels`` float32 [784], ``label``).

    .venv/bin/python benchmarks/make_sharded_dataset.py --out var/bench/mnist-x10 --times 10
    .venv/bin/python benchmarks/make_sharded_dataset.py --out var/bench/mnist-x10-pq --times 10 --format parquet

Memory: one copy of MNIST (~200 MB as float32) plus one shard's rows; disk: ~3.2 kB a row as
TFRecord (1× = 70 000 rows ≈ 220 MB), about the same as Parquet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))


def copies(x: np.ndarray, y: np.ndarray, times: int, noise: float, seed: int, chunk: int = 10_000):
    """``times`` noisy copies of (x, y), ``chunk`` rows at a time."""
    rng = np.random.default_rng(seed)
    for _ in range(times):
        for start in range(0, len(y), chunk):
            block = x[start:start + chunk]
            noisy = np.clip(block + rng.normal(0.0, noise, block.shape).astype(np.float32), 0.0, 1.0)
            yield {"pixels": noisy}, y[start:start + chunk]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write (train/ and test/ under it)")
    parser.add_argument("--times", type=int, default=10, help="copies of MNIST (1 = 60 000 train + 10 000 test rows)")
    parser.add_argument("--format", choices=["tfrecord", "parquet"], default="tfrecord")
    parser.add_argument("--rows-per-shard", type=int, default=20_000)
    parser.add_argument("--noise", type=float, default=0.05, help="std of the pixel noise (pixels in [0, 1])")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N rows of each split (tests)")
    args = parser.parse_args(argv)

    from tfmlops import modelspec, shards
    from tfmlops.data import load_mnist

    spec = modelspec.read_spec(modelspec.DEFAULT_MODULE)
    mnist = load_mnist()
    t0, written = time.monotonic(), {}
    for split, x, y in (("train", mnist.x_train, mnist.y_train), ("test", mnist.x_test, mnist.y_test)):
        x = x.reshape(len(x), -1).astype(np.float32) / 255.0
        if args.limit:
            x, y = x[:args.limit], y[:args.limit]
        paths = shards.write_shards(spec, args.out, split, copies(x, y.astype(np.int64), args.times, args.noise,
                                                                  args.seed + (split == "test")),
                                    fmt=args.format, rows_per_shard=args.rows_per_shard)
        written[split] = {"shards": len(paths), "rows": len(y) * args.times,
                          "bytes": sum(p.stat().st_size for p in paths)}
    print(json.dumps({"out": args.out, "format": args.format, "times": args.times, "splits": written,
                      "seconds": round(time.monotonic() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
