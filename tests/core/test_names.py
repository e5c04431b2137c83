"""Names that become a path segment (model, dataset, partition id) cannot climb or nest directories,
in the library and in the trigger forms."""

from __future__ import annotations

import re

import pytest

from tfmlops import partitions, simulate
from tfmlops.deploy.publish import publish_version, published_versions, remove_version

BAD = ["..", ".", ".hidden", "a/b", "../x", "", "a b", "x" * 201]


@pytest.mark.parametrize("name", BAD)
def test_bad_model_and_dataset_names_are_rejected_with_the_reason(tmp_path, name):
    (tmp_path / "victim").mkdir()
    with pytest.raises(ValueError, match=r"model name .* is not a valid name: .*not '\.' or '\.\.'"):
        publish_version(tmp_path / "missing", tmp_path / "models", name, 1)
    with pytest.raises(ValueError, match="model name"):
        published_versions(tmp_path / "models", name)
    with pytest.raises(ValueError, match="model name"):
        remove_version(tmp_path / "models", name, 1)
    with pytest.raises(ValueError, match="dataset"):
        partitions.list_partitions(str(tmp_path), name)
    with pytest.raises(ValueError, match="dataset"):
        partitions.write_ledger(str(tmp_path), name, {"partitions": {}})
    with pytest.raises(ValueError, match="partition id"):
        partitions.quarantine(str(tmp_path), "ds", name, "bad")
    with pytest.raises(ValueError, match="partition id"):
        simulate.partition_uri(str(tmp_path), "ds", name)
    assert (tmp_path / "victim").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["victim"]


def test_good_names_pass_and_the_form_pattern_agrees():
    from tfmlops.storage import NAME_RE
    from tfmlops_airflow.params import NAME_PATTERN

    for name in ("mnist_mlp", "v2.1", "A-b_c", "3"):
        assert NAME_RE.fullmatch(name) and re.fullmatch(NAME_PATTERN, name)
    for name in BAD[:-1]:
        assert not NAME_RE.fullmatch(name) and not re.fullmatch(NAME_PATTERN, name), name
