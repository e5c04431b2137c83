"""Publishing version directories: atomic, never reusing a number, idempotent."""

import pytest

from tfmlops.deploy.publish import PublishError, ensure_model_config, publish_version, published_versions


@pytest.fixture
def saved_model(tmp_path):
    src = tmp_path / "src"
    (src / "variables").mkdir(parents=True)
    (src / "saved_model.pb").write_bytes(b"graph")
    (src / "variables" / "variables.index").write_bytes(b"index")
    return src


def test_publish_is_atomic_and_idempotent(tmp_path, saved_model):
    root = tmp_path / "models"
    first = publish_version(saved_model, root, "m", 1)
    assert first["published"] and (root / "m" / "1" / "variables" / "variables.index").read_bytes() == b"index"
    assert [p.name for p in (root / "m").iterdir()] == ["1"]  # no staging directory left behind
    again = publish_version(saved_model, root, "m", 1)
    assert not again["published"] and again["content_hash"] == first["content_hash"]
    assert published_versions(root, "m") == [1]


def test_version_numbers_are_never_reused(tmp_path, saved_model):
    root = tmp_path / "models"
    publish_version(saved_model, root, "m", 3)
    (saved_model / "saved_model.pb").write_bytes(b"other graph")
    with pytest.raises(PublishError, match="already holds other content"):
        publish_version(saved_model, root, "m", 3)
    assert (root / "m" / "3" / "saved_model.pb").read_bytes() == b"graph"


def test_incomplete_saved_model_is_refused(tmp_path, saved_model):
    (saved_model / "saved_model.pb").unlink()
    with pytest.raises(PublishError, match="no saved_model.pb"):
        publish_version(saved_model, tmp_path / "models", "m", 1)
    assert not (tmp_path / "models" / "m" / "1").exists()


def test_ensure_model_config_keeps_other_models(tmp_path):
    config_file = tmp_path / "models.config"
    config_file.write_text('model_config_list { config { name: "other" base_path: "/x/other" '
                           'model_platform: "tensorflow" } }')
    config, changed = ensure_model_config(config_file, "m", "/srv/models/m")
    assert changed and [c.name for c in config.model_config_list.config] == ["other", "m"]
    _, changed_again = ensure_model_config(config_file, "m", "/srv/models/m")
    assert not changed_again
    assert 'base_path: "/srv/models/m"' in config_file.read_text()
