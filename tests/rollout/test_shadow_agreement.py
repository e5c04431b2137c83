"""Shadow's comparison of challenger and champion answers, by kind of output: top-1 classes for
probabilities, values within a relative tolerance for a regression's one value per row."""

from __future__ import annotations

import numpy as np

from tfmlops.deploy.shadow import Agreement


def test_classes_agree_on_the_top_1():
    agreement = Agreement()
    champion = {"probabilities": np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]], np.float32)}
    challenger = {"probabilities": np.array([[0.7, 0.3], [0.6, 0.4], [0.1, 0.9]], np.float32)}
    agreement.add(champion, challenger)
    report = agreement.to_dict()
    assert (report["rows"], report["agree_rows"]) == (3, 2)
    assert abs(report["max_abs_diff"] - 0.2) < 1e-6


def test_regressed_values_agree_within_the_relative_tolerance():
    agreement = Agreement(value_tolerance=0.01)
    champion = {"outputs": np.array([200.0, 0.5, -80.0, 10.0], np.float32)}
    # 200 -> 201.5 is within 1 % of 200; 0.5 -> 0.505 within 0.01 absolute (|value| < 1);
    # -80 -> -82 is 2.5 % off; 10 -> 10.05 within
    challenger = {"outputs": np.array([201.5, 0.505, -82.0, 10.05], np.float32)}
    agreement.add(champion, challenger)
    report = agreement.to_dict()
    assert (report["rows"], report["agree_rows"], report["agreement"]) == (4, 3, 0.75)
    agreement.add({"outputs": np.array([[3.0]], np.float32)}, {"outputs": np.array([[3.0]], np.float32)})
    assert agreement.to_dict()["rows"] == 5 and agreement.to_dict()["agree_rows"] == 4
