"""scripts/docker_engine.py without an engine: what it refuses and why, the apt mirror it reads, and
the build context of the tf-serving-local image (what its Dockerfile copies, what its hash covers)."""

from __future__ import annotations

import re

import docker_engine as de


def test_not_root_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(de.os, "geteuid", lambda: 1000)
    assert "needs root" in de.unavailable_reason()


def test_a_socket_path_too_long_is_refused(monkeypatch, tmp_path):
    if de.platform.system() != "Linux" or de.os.geteuid() != 0:
        return  # refused earlier, for another reason
    monkeypatch.setenv("TFMLOPS_DOCKER_DIR", str(tmp_path / ("x" * 120)))
    assert "TFMLOPS_DOCKER_DIR" in de.unavailable_reason()


def test_apt_mirror_from_deb822_and_one_line_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n")
    assert de.apt_mirror("bookworm", tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64 signed-by=/k.gpg] http://other.example/debian bookworm main\n")
    assert de.apt_mirror("bookworm", tmp_path) == "http://other.example/debian"


def test_serving_context_holds_everything_the_dockerfile_copies():
    files = set(de._serving_context_files())
    text = (de.ROOT / de.SERVING_DOCKERFILE).read_text()
    for copied in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for src in copied.split():
            if (de.ROOT / src).is_dir():
                assert any(f.startswith(src + "/") for f in files), src
            else:
                assert src in files, src
    assert "include/tfmlops/serving/model_servers/main.py" in files
    assert de.serving_image_tag() == f"local/tf-serving-local:{de._lock_pin('tensorflow-serving-api')}"
    for name in ("tensorflow", "tensorflow-serving-api", "grpcio", "numpy", "protobuf"):
        assert de._lock_pin(name)  # installed with the lock as constraints
        assert re.search(rf"\s{re.escape(name)}(\s|$)", text), name
