"""``tf_data_simulator`` with ``dag.test()``: writes a drifted partition and announces it on the
``tfmlops_new_partitions`` asset that schedules ``tf_online_update``."""

from __future__ import annotations

import numpy as np
import pytest

from tfmlops import online

from .conftest import load_dag, states

pytestmark = pytest.mark.e2e


def test_simulator_writes_partition_and_emits_asset_event(airflow_db, tmp_path):
    run = load_dag("tf_data_simulator").test(run_conf={"root": str(tmp_path), "dataset": "sim", "size": 40,
                                                      "drift": "noise", "amount": 0.5, "seed": 7})
    assert str(run.state) == "success", states(run)
    (pid, uri), = online.list_partitions(str(tmp_path), "sim").items()
    with np.load(uri) as npz:
        assert len(npz["y_train"]) + len(npz["y_test"]) == 40

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        extras = [e.extra for e in session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                  .filter(AssetModel.name == "tfmlops_new_partitions")]
    assert {"dataset": "sim", "partition_id": pid, "uri": uri, "drift": "noise", "amount": 0.5,
            "root": str(tmp_path)} in extras
    from airflow.models.dag import DagModel

    with create_session() as session:  # tf_online_update is scheduled on that asset
        assert session.get(DagModel, "tf_online_update") is not None
