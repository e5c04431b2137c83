"""Step of ``tf_data_simulator``: one demo partition written under a partitions root.

The generator (:mod:`tfmlops.simulate`: MNIST test pool, drift kinds) is demo code; nothing on
a production path (ingest, online update, monitoring) imports it.
"""

from __future__ import annotations

from tfmlops.simulate import DRIFTS, simulate

__all__ = ["DRIFTS", "simulate"]
