"""``tf_data_simulator`` with ``dag.test()``: writes a drifted partition and announces it on the
``tfmlops_new_partitions`` asset that schedules ``tf_online_update``."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

from tfmlops import partitions, simulate

from .conftest import load_dag, states

pytestmark = pytest.mark.e2e


def test_simulator_writes_partition_and_emits_asset_event(airflow_db, tmp_path):
    run = load_dag("tf_data_simulator").test(run_conf={"root": str(tmp_path), "dataset": "sim", "size": 40,
                                                      "drift": "noise", "amount": 0.5, "seed": 7})
    assert str(run.state) == "success", states(run)
    (pid, uri), = partitions.list_partitions(str(tmp_path), "sim").items()
    with np.load(uri) as npz:
        assert len(npz["y_train"]) + len(npz["y_test"]) == 40

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = {e.partition_key: e.extra for e in session.query(AssetEvent)
                  .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                  .filter(AssetModel.name == "tfmlops_new_partitions")}
    assert events[f"sim|{pid}"] == {"dataset": "sim", "partition_id": pid, "uri": uri, "drift": "noise",
                                    "amount": 0.5, "root": str(tmp_path)}
    from airflow.models.dag import DagModel

    with create_session() as session:  # tf_online_update is scheduled on that asset
        assert session.get(DagModel, "tf_online_update") is not None


def test_ingest_takes_the_partition_of_a_partitioned_run(tmp_path):
    """A run created for one partition of the asset (its ``partition_key``) ingests that one only."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from tfmlops_airflow.assets import NEW_PARTITIONS
    from tfmlops_airflow.operators.online import IngestPartitionsOperator

    x, y = simulate.pool()
    for pid in ("p1", "p2"):
        simulate.write_partition(str(tmp_path), "sim", pid, simulate.make_partition(x, y, 30, seed=3))
    op = IngestPartitionsOperator(task_id="ingest", root=str(tmp_path), dataset="sim")
    result = op.execute({"partition_key": "sim|p2"})
    assert result["valid_ids"] == ["p2"] and result["consumed"] == [] and result["missing"] == []
    assert result["root"] == str(tmp_path)
    # the partition's event says where it was written: that root wins over the DAG's
    elsewhere = tmp_path / "elsewhere"
    simulate.write_partition(str(elsewhere), "sim", "p3", simulate.make_partition(x, y, 30, seed=5))
    event = SimpleNamespace(extra={"dataset": "sim", "partition_id": "p3", "root": str(elsewhere)})
    op = IngestPartitionsOperator(task_id="ingest", root=str(tmp_path), dataset="sim")
    result = op.execute({"partition_key": "sim|p3", "triggering_asset_events": {NEW_PARTITIONS: [event]}})
    assert result["valid_ids"] == ["p3"] and result["root"] == str(elsewhere)
    with pytest.raises(AirflowSkipException, match="belongs to dataset 'other'"):
        op.execute({"partition_key": "other|p1"})
    with pytest.raises(AirflowFailException, match=re.escape("is not '<dataset>|<partition-id>'")):
        op.execute({"partition_key": "p1"})
