"""New labeled data partitions for the demo, drawn from the MNIST test pool, optionally drifted.

A partition is ``<root>/<dataset>/incoming/<partition-id>/data.npz`` (local path or ``s3://``)
with the arrays of any ``.npz`` dataset (``x_train``, ``y_train``, ``x_test``, ``y_test``; uint8
28×28 images), so ingestion validates it exactly as training data (:func:`tfmlops.data.validate`).

The pool is the MNIST test set *after* its first :data:`tfmlops.data.MNIST_HOLDOUT_ROWS` rows: those rows are the
fixed holdout of the online update gate (``holdout_uri = "mnist"``), never seen in a partition.

Drift kinds (``amount`` in [0, 1] is the strength):
- ``rotation``: every image turned by ``amount × 60°`` (one direction: a consistent shift);
- ``noise``: Gaussian pixel noise, σ = ``amount × 128`` grey levels, clipped to [0, 255];
- ``imbalance``: classes 5–9 drawn with weight ``1 − amount`` (classes 0–4 keep weight 1);
- ``label_noise``: a share ``amount`` of the labels replaced by another class.

Command: ``python -m tfmlops.simulate --root var/partitions --dataset mnist_stream --size 500
--drift rotation --amount 0.5``. No TensorFlow import.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from tfmlops import data
from tfmlops.partitions import new_partition_id, partition_uri, write_partition  # noqa: F401 - used by callers

DRIFTS = ("none", "rotation", "noise", "imbalance", "label_noise")
MAX_ROTATION_DEG = 60.0
MAX_NOISE_SIGMA = 128.0


def rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate (N, H, W) uint8 images about their centre (nearest neighbour, zeros outside)."""
    n, h, w = images.shape
    theta = np.deg2rad(degrees)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.mgrid[0:h, 0:w]
    # inverse mapping: for each output pixel, the source pixel
    src_x = np.cos(theta) * (xx - cx) + np.sin(theta) * (yy - cy) + cx
    src_y = -np.sin(theta) * (xx - cx) + np.cos(theta) * (yy - cy) + cy
    sx, sy = np.rint(src_x).astype(int), np.rint(src_y).astype(int)
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    out = np.zeros_like(images)
    out[:, inside] = images[:, sy[inside], sx[inside]]
    return out


def pool() -> tuple[np.ndarray, np.ndarray]:
    """The MNIST test images (uint8, N×28×28) and labels after the holdout rows."""
    mnist = data.load_mnist()
    return mnist.x_test[data.MNIST_HOLDOUT_ROWS:], mnist.y_test[data.MNIST_HOLDOUT_ROWS:].astype(np.int64)


def make_partition(x_pool: np.ndarray, y_pool: np.ndarray, size: int, drift: str = "none", amount: float = 0.0,
                   seed: int = 0, test_fraction: float = 0.3, num_classes: int = 10) -> dict[str, np.ndarray]:
    """Draw ``size`` distinct rows, apply the drift, split into train/test (the npz arrays)."""
    if drift not in DRIFTS:
        raise ValueError(f"unknown drift {drift!r}; one of {DRIFTS}")
    if not 0 <= amount <= 1:
        raise ValueError(f"drift amount must be in [0, 1], got {amount}")
    if not 2 <= size <= len(x_pool):
        raise ValueError(f"partition size must be in [2, {len(x_pool)}], got {size}")
    rng = np.random.default_rng(seed)
    weights = np.ones(len(y_pool))
    if drift == "imbalance":
        weights[y_pool >= num_classes // 2] = max(1.0 - amount, 1e-3)
    rows = rng.choice(len(x_pool), size=size, replace=False, p=weights / weights.sum())
    x, y = x_pool[rows].copy(), y_pool[rows].copy()
    if drift == "rotation" and amount > 0:
        x = rotate(x, amount * MAX_ROTATION_DEG)
    elif drift == "noise" and amount > 0:
        noisy = x.astype(np.float32) + rng.normal(0.0, amount * MAX_NOISE_SIGMA, size=x.shape)
        x = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    elif drift == "label_noise" and amount > 0:
        flip = rng.random(size) < amount
        y[flip] = (y[flip] + rng.integers(1, num_classes, size=int(flip.sum()))) % num_classes
    n_test = max(1, int(round(size * test_fraction)))
    return {"x_train": x[n_test:], "y_train": y[n_test:], "x_test": x[:n_test], "y_test": y[:n_test]}


def simulate(root: str, dataset: str, size: int = 500, drift: str = "none", amount: float = 0.0,
             seed: int | None = None, partition_id: str | None = None, s3_client=None) -> dict:
    """Write one partition; returns its id, URI, drift and row counts."""
    seed = int(np.random.default_rng().integers(1_000_000)) if seed is None else int(seed)
    partition_id = partition_id or new_partition_id(seed)
    x_pool, y_pool = pool()
    arrays = make_partition(x_pool, y_pool, size, drift, amount, seed)
    uri = write_partition(root, dataset, partition_id, arrays, s3_client=s3_client)
    return {"dataset": dataset, "partition_id": partition_id, "uri": uri, "drift": drift, "amount": amount,
            "seed": seed, "train_rows": len(arrays["y_train"]), "test_rows": len(arrays["y_test"])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="partitions root: local folder or s3://bucket/prefix")
    parser.add_argument("--dataset", default="mnist_stream")
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--drift", choices=DRIFTS, default="none")
    parser.add_argument("--amount", type=float, default=0.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--count", type=int, default=1, help="how many partitions")
    args = parser.parse_args(argv)
    for i in range(args.count):
        seed = None if args.seed is None else args.seed + i
        print(json.dumps(simulate(args.root, args.dataset, args.size, args.drift, args.amount, seed)))


if __name__ == "__main__":
    main()
