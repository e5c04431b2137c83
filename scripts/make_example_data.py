"""Make the shipped example models' small datasets under ``data/examples/`` (deterministic: the
same files every run; they are committed, this script says how they were made).

- ``churn.parquet`` — synthetic customers: numeric and string columns, ``churned`` 0/1, ``split``;
- ``diabetes/{train,test}-00000-of-00001.tfrecord`` — scikit-learn's diabetes data as ``tf.Example``;
- ``reviews.jsonl`` — synthetic short product reviews of three shop sections.

Usage: ``.venv/bin/python scripts/make_example_data.py [OUT_DIR]``
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def churn(out: Path, n: int = 2400) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    plans = np.array(["basic", "standard", "premium", "prepaid"])
    regions = np.array(["north", "south", "east", "west"])
    tenure = rng.uniform(1, 72, n).round(1)
    charges = rng.uniform(20, 120, n).round(2)
    calls = rng.poisson(1.5, n)
    plan = plans[rng.integers(0, len(plans), n)]
    region = regions[rng.integers(0, len(regions), n)]
    logit = (-0.6 - 0.05 * tenure + 0.02 * charges + 0.55 * calls
             + np.select([plan == "prepaid", plan == "premium"], [1.2, -0.8], 0.0) + 0.5 * (region == "west"))
    churned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    split = np.array(["train"] * n, dtype=object)
    order = rng.permutation(n)
    split[order[: n // 5]] = "test"
    split[order[n // 5: n // 5 + n // 10]] = "validation"
    table = pa.table({"tenure_months": tenure.astype(np.float32), "monthly_charges": charges.astype(np.float32),
                      "support_calls": calls.astype(np.int64), "plan": plan, "region": region, "churned": churned,
                      "split": split.astype(str)})
    pq.write_table(table, out / "churn.parquet", row_group_size=1000)


def diabetes(out: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    x, y = data.data.astype(np.float32), data.target.astype(np.float32)
    order = np.random.default_rng(3).permutation(len(y))
    n_test = len(y) // 5
    folder = out / "diabetes"
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("test", order[:n_test]), ("train", order[n_test:])):
        with tf.io.TFRecordWriter(str(folder / f"{split}-00000-of-00001.tfrecord")) as writer:
            for i in rows:
                feature = {name: tf.train.Feature(float_list=tf.train.FloatList(value=[x[i, j]]))
                           for j, name in enumerate(data.feature_names)}
                feature["progression"] = tf.train.Feature(float_list=tf.train.FloatList(value=[y[i]]))
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


SECTIONS = {
    0: ["pan", "knife", "kettle", "blender", "spatula", "oven", "mug", "toaster", "skillet", "whisk"],
    1: ["laptop", "charger", "headphones", "screen", "battery", "keyboard", "router", "camera", "speaker", "cable"],
    2: ["hose", "shovel", "seeds", "rake", "planter", "mower", "gloves", "soil", "sprinkler", "trowel"],
}
OPINIONS = ["great", "terrible", "solid", "flimsy", "excellent", "cheap", "reliable", "broken", "nice", "awful"]
FILLER = ["the", "this", "my", "works", "arrived", "after", "a", "week", "and", "is", "really", "very", "quite",
          "would", "buy", "again", "not", "for", "price", "quality"]


def reviews(out: Path, n: int = 1500) -> None:
    rng = np.random.default_rng(11)
    with open(out / "reviews.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            section = int(rng.integers(0, 3))
            words = list(rng.choice(FILLER, size=int(rng.integers(4, 9))))
            words += list(rng.choice(SECTIONS[section], size=int(rng.integers(1, 3))))
            words.append(str(rng.choice(OPINIONS)))
            if rng.random() < 0.15:  # a mention of another section's item: not every review is easy
                words.append(str(rng.choice(SECTIONS[(section + int(rng.integers(1, 3))) % 3])))
            rng.shuffle(words)
            text = " ".join(words).capitalize() + rng.choice([".", "!", "..."])
            f.write(json.dumps({"text": text, "section": section, "split": "test" if i % 5 == 0 else "train"}) + "\n")


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else ROOT / "data" / "examples"
    out.mkdir(parents=True, exist_ok=True)
    churn(out)
    diabetes(out)
    reviews(out)
    print(f"example datasets written under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
