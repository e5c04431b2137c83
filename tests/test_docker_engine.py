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


def test_every_locked_pin_installs_on_the_stand_in_images_python():
    """The stand-in images run Debian bookworm's Python (3.11.2) and install with pip, which honours
    Requires-Python: a pin that needs a newer 3.11 (soupsieve 3+/4+ wants >= 3.11.5) breaks the
    Airflow image's build after a long backtrack. Checked on the installed distributions' metadata."""
    import importlib.metadata as md

    from packaging.specifiers import SpecifierSet

    bookworm = "3.11.2"
    pins = {}
    for line in (de.ROOT / "requirements-lock.txt").read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version
    refused = []
    for dist in md.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"].lower())
        needs = dist.metadata.get("Requires-Python")
        if pins.get(name) == dist.version and needs and not SpecifierSet(needs).contains(bookworm):
            refused.append(f"{name}=={dist.version} (Requires-Python {needs})")
    assert not refused, f"pins pip refuses on Python {bookworm}: {refused}"


def test_prod_stack_refuses_a_worker_count_it_cannot_mean(capsys):
    import prod_stack

    for bad in ("0", "-1", "17"):
        try:
            prod_stack.main(["up", "--workers", bad])
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError(f"--workers {bad} was accepted")
        assert f"--workers must be between 1 and 16, got {bad}" in capsys.readouterr().err
