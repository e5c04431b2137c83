"""scripts/image_cache.py without a Docker engine: where archives go and how they are named, which
ones pruning deletes (superseded hashes, least recently used over the cap), when the base counts as
too old, and save/load against a fake client (corrupt, wrong and week-old archives deleted).
The real engine's path (build, save, ``docker rmi``, load) is what ``make docker-up`` runs."""

from __future__ import annotations

import json
import os
import time

import docker
import pytest

import docker_engine as de
import image_cache as ic

DAY = 86400.0
NOW = 1_800_000_000.0  # 2027-01-15


class FakeImage:
    def __init__(self, tag: str, labels: dict, image_id: str, created: str = ""):
        self.tags, self.labels, self.id, self.attrs = [tag], labels, image_id, {"Created": created}

    def save(self, chunk_size: int, named: str):
        assert named in self.tags  # the archive carries the tag, for `docker load` to set it
        data = json.dumps({"tag": named, "labels": self.labels, "id": self.id, "created": self.attrs["Created"]})
        for i in range(0, len(data), 7):  # in several chunks, as the engine streams it
            yield data[i:i + 7].encode()


class FakeImages:
    def __init__(self):
        self.store: dict[str, FakeImage] = {}
        self.loads = 0

    def get(self, tag: str) -> FakeImage:
        try:
            return self.store[tag]
        except KeyError:
            raise docker.errors.ImageNotFound(tag) from None

    def load(self, f):
        self.loads += 1
        try:
            d = json.loads(f.read())
        except ValueError as exc:
            raise docker.errors.ImageLoadError(f"unexpected EOF: {exc}") from None
        self.store[d["tag"]] = FakeImage(d["tag"], d["labels"], d["id"], d["created"])

    def prune(self, filters):
        pass


class FakeClient:
    def __init__(self):
        self.images = FakeImages()

    def add(self, tag: str, inputs: str, built: float | None = None, image_id: str = "sha256:1") -> None:
        labels = {ic.INPUTS_LABEL: inputs}
        if built is not None:
            labels[ic.BUILT_LABEL] = ic.built_label(built)
        self.images.store[tag] = FakeImage(tag, labels, image_id)


def cache(tmp_path, cap_gb: float = 20) -> ic.ImageCache:
    return ic.ImageCache(tmp_path / "images", int(cap_gb * 1e9), log=lambda msg: None)


# ---------------------------------------------------------------------------------------------- pure logic
def test_cache_folder_from_the_environment(tmp_path):
    assert ic.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "tfmlops" / "images"
    assert ic.cache_dir({}) == ic.Path.home() / ".cache" / "tfmlops" / "images"
    assert ic.cache_dir({ic.CACHE_ENV: str(tmp_path / "c"), "XDG_CACHE_HOME": "/x"}) == tmp_path / "c"
    assert ic.cache_dir({ic.CACHE_ENV: "off"}) is None
    assert ic.cache_dir({ic.CACHE_ENV: "OFF"}) is None
    assert ic.ImageCache.from_env(env={ic.CACHE_ENV: "off"}) is None


def test_size_cap_from_the_environment():
    assert ic.max_bytes({}) == 20 * 10**9
    assert ic.max_bytes({ic.MAX_GB_ENV: "2.5"}) == 2_500_000_000
    for bad in ("lots", "-1"):
        with pytest.raises(ValueError, match=ic.MAX_GB_ENV):
            ic.max_bytes({ic.MAX_GB_ENV: bad})


def test_archive_names_and_superseded_hashes():
    inputs = "0123456789abcdef"
    assert ic.archive_name("local/tf-serving-local:2.21.0", inputs + "ffff") == \
        "local_tf-serving-local_2.21.0-0123456789abcdef.tar"
    names = ["local_debian_bookworm-0123456789abcdef.tar", "local_debian_bookworm-fedcba9876543210.tar",
             "local_debian_bookworm-extra-fedcba9876543210.tar",  # another tag that starts alike
             "local_debian_trixie-fedcba9876543210.tar", ".local_debian_bookworm-0000000000000000.tar.1.partial"]
    assert ic.superseded(names, "local/debian:bookworm", inputs) == ["local_debian_bookworm-fedcba9876543210.tar"]


def test_least_recently_used_archives_go_first_never_the_kept_one():
    entries = [ic.Entry("a.tar", 4, 10.0), ic.Entry("b.tar", 4, 30.0), ic.Entry("c.tar", 4, 20.0),
               ic.Entry("new.tar", 4, 5.0)]
    assert ic.over_cap(entries, 16) == []
    assert ic.over_cap(entries, 12, frozenset({"new.tar"})) == ["a.tar"]
    assert ic.over_cap(entries, 5, frozenset({"new.tar"})) == ["a.tar", "c.tar", "b.tar"]
    assert ic.over_cap(entries, 5) == ["new.tar", "a.tar", "c.tar"]


def test_a_week_old_base_is_stale():
    labels = {ic.INPUTS_LABEL: "h", ic.BUILT_LABEL: ic.built_label(NOW - 6 * DAY)}
    assert ic.current(labels, "h", 7 * DAY, now=NOW)
    assert not ic.current(labels, "h", 5 * DAY, now=NOW)
    assert not ic.current(labels, "other", 7 * DAY, now=NOW)
    assert not ic.current(None, "h", now=NOW)
    old = {ic.INPUTS_LABEL: "h", ic.BUILT_LABEL: ic.built_label(NOW - 8 * DAY)}
    assert not ic.current(old, "h", 7 * DAY, now=NOW)
    assert ic.current(old, "h", now=NOW)  # the images FROM the base have no age limit of their own
    # images from before the label: Docker's Created (nanoseconds), else stale
    unlabelled = {ic.INPUTS_LABEL: "h"}
    assert ic.current(unlabelled, "h", 7 * DAY, created=ic.built_label(NOW - DAY)[:-1] + ".123456789Z", now=NOW)
    assert not ic.current(unlabelled, "h", 7 * DAY, created="", now=NOW)
    assert ic.built_at({ic.BUILT_LABEL: ic.built_label(NOW)}) == NOW


# ---------------------------------------------------------------------------------------------- save / load
def test_saved_archive_loads_into_an_engine_without_the_image(tmp_path):
    c = cache(tmp_path)
    built = FakeClient()
    built.add("local/x:1", "aaaaaaaaaaaaaaaa", NOW, image_id="sha256:x1")
    path = c.save(built, "local/x:1", "aaaaaaaaaaaaaaaa")
    assert path == tmp_path / "images" / "local_x_1-aaaaaaaaaaaaaaaa.tar"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    os.utime(path, (1, 1))
    fresh = FakeClient()  # another clone's engine
    assert c.load(fresh, "local/x:1", "aaaaaaaaaaaaaaaa")
    assert fresh.images.get("local/x:1").id == "sha256:x1"  # the same id: images FROM it keep their hash
    assert path.stat().st_mtime > time.time() - 60  # used now: last in line for the cap
    assert not c.load(FakeClient(), "local/x:1", "bbbbbbbbbbbbbbbb")  # no archive of other inputs


def test_saving_a_new_hash_removes_the_tags_older_archives_and_keeps_others(tmp_path):
    c = cache(tmp_path)
    client = FakeClient()
    client.add("local/x:1", "aaaaaaaaaaaaaaaa")
    client.add("local/y:1", "cccccccccccccccc")
    c.save(client, "local/x:1", "aaaaaaaaaaaaaaaa")
    c.save(client, "local/y:1", "cccccccccccccccc")
    client.add("local/x:1", "bbbbbbbbbbbbbbbb")  # its Dockerfile changed
    c.save(client, "local/x:1", "bbbbbbbbbbbbbbbb")
    assert sorted(p.name for p in c.folder.iterdir()) == ["local_x_1-bbbbbbbbbbbbbbbb.tar",
                                                         "local_y_1-cccccccccccccccc.tar"]


def test_over_the_cap_the_least_recently_used_archives_are_deleted(tmp_path):
    client = FakeClient()
    for name in "abc":
        client.add(f"local/{name}:1", name * 16)
    size = len(b"".join(client.images.get("local/a:1").save(1, "local/a:1")))
    c = cache(tmp_path, cap_gb=2.5 * size / 1e9)  # room for two archives
    a = c.save(client, "local/a:1", "a" * 16)
    b = c.save(client, "local/b:1", "b" * 16)
    os.utime(a, (NOW - 10, NOW - 10))
    os.utime(b, (NOW - 20, NOW - 20))  # b used longer ago than a
    c.save(client, "local/c:1", "c" * 16)
    assert sorted(p.name for p in c.folder.iterdir()) == ["local_a_1-aaaaaaaaaaaaaaaa.tar",
                                                         "local_c_1-cccccccccccccccc.tar"]


def test_a_corrupt_archive_is_deleted_and_reported_as_a_miss(tmp_path):
    c = cache(tmp_path)
    path = c.path("local/x:1", "aaaaaaaaaaaaaaaa")
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"tag": "local/x:1", "lab')  # a save cut short by hand
    client = FakeClient()
    assert not c.load(client, "local/x:1", "aaaaaaaaaaaaaaaa")
    assert not path.exists()


def test_an_archive_holding_other_inputs_or_a_week_old_base_is_deleted(tmp_path):
    c = cache(tmp_path)
    other = FakeClient()
    other.add("local/x:1", "ffffffffffffffff")
    c.folder.mkdir(parents=True)
    c.path("local/x:1", "aaaaaaaaaaaaaaaa").write_bytes(b"".join(other.images.get("local/x:1").save(1, "local/x:1")))
    assert not c.load(FakeClient(), "local/x:1", "aaaaaaaaaaaaaaaa")
    assert not c.path("local/x:1", "aaaaaaaaaaaaaaaa").exists()

    old = FakeClient()
    old.add(de.BASE_IMAGE, "aaaaaaaaaaaaaaaa", time.time() - 8 * DAY)
    c.save(old, de.BASE_IMAGE, "aaaaaaaaaaaaaaaa")
    assert not c.load(FakeClient(), de.BASE_IMAGE, "aaaaaaaaaaaaaaaa", de.BASE_MAX_AGE_S)
    assert not c.path(de.BASE_IMAGE, "aaaaaaaaaaaaaaaa").exists()


def test_a_failed_save_leaves_nothing_and_does_not_raise(tmp_path):
    c = cache(tmp_path)
    assert c.save(FakeClient(), "local/absent:1", "aaaaaaaaaaaaaaaa") is None
    assert list(c.folder.iterdir()) == []


def test_temporary_files_of_dead_saves_are_swept(tmp_path):
    c = cache(tmp_path)
    c.folder.mkdir(parents=True)
    dead, alive = c.folder / ".local_a_1-0.tar.1.partial", c.folder / ".local_b_1-0.tar.2.partial"
    dead.write_bytes(b"x")
    alive.write_bytes(b"x")
    os.utime(dead, (time.time() - ic.PARTIAL_MAX_AGE_S - 60,) * 2)
    client = FakeClient()
    client.add("local/c:1", "c" * 16)
    c.save(client, "local/c:1", "c" * 16)
    assert not dead.exists() and alive.exists()


# ---------------------------------------------------------------------------------------------- docker_engine
def test_engine_reuses_its_image_else_loads_the_archive_else_builds(tmp_path, monkeypatch):
    monkeypatch.setenv(ic.CACHE_ENV, str(tmp_path / "images"))
    engine = FakeClient()
    engine.add(de.BASE_IMAGE, "aaaaaaaaaaaaaaaa", time.time() - DAY)
    assert de._reusable(engine, de.BASE_IMAGE, "aaaaaaaaaaaaaaaa", de.BASE_MAX_AGE_S)
    de._archive(engine, de.BASE_IMAGE, "aaaaaaaaaaaaaaaa")

    fresh = FakeClient()  # a fresh clone: the engine has nothing, the cache has the archive
    assert de._reusable(fresh, de.BASE_IMAGE, "aaaaaaaaaaaaaaaa", de.BASE_MAX_AGE_S)
    assert fresh.images.loads == 1
    assert not de._reusable(FakeClient(), de.BASE_IMAGE, "bbbbbbbbbbbbbbbb", de.BASE_MAX_AGE_S)  # other inputs

    stale = FakeClient()
    stale.add(de.BASE_IMAGE, "aaaaaaaaaaaaaaaa", time.time() - 8 * DAY)
    monkeypatch.setenv(ic.CACHE_ENV, "off")
    assert not de._reusable(stale, de.BASE_IMAGE, "aaaaaaaaaaaaaaaa", de.BASE_MAX_AGE_S)  # rebuilt
    assert de._reusable(stale, de.BASE_IMAGE, "aaaaaaaaaaaaaaaa")  # no age limit: kept
    de._archive(stale, de.BASE_IMAGE, "aaaaaaaaaaaaaaaa")  # off: writes nothing
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["local_debian_bookworm-aaaaaaaaaaaaaaaa.tar"]


def test_cache_only_loads_what_the_cache_holds_and_names_what_it_would_build(tmp_path, monkeypatch):
    """The production stack's isolated engine (no network: it cannot build) takes its images from
    the archives when the cache holds every one: under ``cache_only`` a missing image raises
    ``NotCached`` naming it, instead of building (scripts/prod_stack.py then builds on the first engine)."""
    monkeypatch.setenv(ic.CACHE_ENV, str(tmp_path / "images"))
    first = FakeClient()
    first.add("local/redis:7.0", "aaaaaaaaaaaaaaaa", time.time(), image_id="sha256:redis")
    de._archive(first, "local/redis:7.0", "aaaaaaaaaaaaaaaa")
    isolated = FakeClient()
    with de.cache_only():
        assert de.build_image(isolated, "local/redis:7.0", "Dockerfile", "aaaaaaaaaaaaaaaa") == "local/redis:7.0"
        assert isolated.images.get("local/redis:7.0").id == "sha256:redis"  # the same image as the first engine's
        with pytest.raises(de.NotCached, match=r"local/redis:7\.0 \(tfmlops.inputs=bbbbbbbbbbbbbbbb\)"):
            de.build_image(isolated, "local/redis:7.0", "Dockerfile", "bbbbbbbbbbbbbbbb")  # changed inputs
        with pytest.raises(de.NotCached, match="local/debian:bookworm"):
            de.ensure_base_image(FakeClient())  # not archived: would be debootstrapped
    assert de._builds["allowed"]  # outside, images are built again


def test_images_from_the_base_follow_its_id(monkeypatch):
    """A rebuilt (week-old) base has a new id: every stand-in's inputs change, so they are rebuilt too."""
    seen = []
    monkeypatch.setattr(de, "build_image", lambda client, tag, dockerfile, inputs, **kw: seen.append(inputs) or tag)
    for base_id in ("sha256:old", "sha256:new", "sha256:new"):
        client = FakeClient()
        client.add(de.BASE_IMAGE, "aaaaaaaaaaaaaaaa", image_id=base_id)
        de.ensure_stand_in(client, "redis")
    assert seen[0] != seen[1] == seen[2]


def test_a_rebuild_starts_from_the_tags_earlier_build(tmp_path, monkeypatch):
    """A build whose inputs changed gets the tag's earlier build as ``--cache-from``: the engine's own
    image, else the cache's archive of other inputs (the newest) loaded; nothing when neither exists."""
    monkeypatch.setenv(ic.CACHE_ENV, str(tmp_path / "images"))
    assert de._earlier_build(FakeClient(), "local/x:1") == []  # nothing anywhere: from scratch
    older, newer = FakeClient(), FakeClient()
    older.add("local/x:1", "aaaaaaaaaaaaaaaa", NOW, image_id="sha256:old")
    newer.add("local/x:1", "bbbbbbbbbbbbbbbb", NOW, image_id="sha256:new")
    c = ic.ImageCache.from_env(log=lambda msg: None)
    c.save(older, "local/x:1", "aaaaaaaaaaaaaaaa")
    os.utime(c.path("local/x:1", "aaaaaaaaaaaaaaaa"), (1, 1))
    (tmp_path / "images" / ic.archive_name("local/x:1", "bbbbbbbbbbbbbbbb")).write_bytes(
        b"".join(newer.images.get("local/x:1").save(8, named="local/x:1")))  # as a second clone would leave it
    c.save(older, "local/other:1", "cccccccccccccccc")  # another tag's archive is never a cache for it
    fresh = FakeClient()
    assert de._earlier_build(fresh, "local/x:1") == ["local/x:1"]
    assert fresh.images.get("local/x:1").id == "sha256:new" and fresh.images.loads == 1
    assert de._earlier_build(fresh, "local/x:1") == ["local/x:1"] and fresh.images.loads == 1  # in the engine
    (tmp_path / "images" / ic.archive_name("local/x:1", "bbbbbbbbbbbbbbbb")).write_bytes(b"not an image")
    os.utime(c.path("local/x:1", "aaaaaaaaaaaaaaaa"), (1, 1))
    assert de._earlier_build(FakeClient(), "local/x:1") == []  # a broken archive: a build from scratch
    monkeypatch.setenv(ic.CACHE_ENV, "off")
    assert de._earlier_build(FakeClient(), "local/x:1") == []


def test_a_stand_in_is_keyed_on_the_lock_pins_of_what_it_installs(tmp_path, monkeypatch):
    """Of requirements-lock.txt, a stand-in's inputs hash only the pins of the packages its last build
    installed (recorded after the build, the image re-labelled): a changed pin of a package it does
    not install rebuilds nothing; before any record, the whole lock counts."""
    monkeypatch.setenv(ic.CACHE_ENV, str(tmp_path / "images"))
    client = FakeClient()
    client.add(de.BASE_IMAGE, "aaaaaaaaaaaaaaaa", image_id="sha256:base")
    spec = de.STAND_INS["s3"]
    whole = de.stand_in_inputs(client, "s3")
    assert whole == de._digest([("base", b"sha256:base")] + [(f, (de.ROOT / f).read_bytes()) for f in spec.files()])
    installed = ["moto", "Boto3", "botocore"]  # as pip lists them: names canonicalized
    keyed = de.stand_in_inputs(client, "s3", packages=installed)
    assert keyed != whole
    pins = de._lock_pins()
    with monkeypatch.context() as m:
        m.setattr(de, "_lock_pins", lambda: {**pins, "tensorflow": "tensorflow==0.0.1"})
        assert de.stand_in_inputs(client, "s3", packages=installed) == keyed  # not installed there
        m.setattr(de, "_lock_pins", lambda: {**pins, "boto3": "boto3==0.0.1"})
        assert de.stand_in_inputs(client, "s3", packages=installed) != keyed

    relabelled = []
    monkeypatch.setattr(de, "installed_packages", lambda c, tag, python: sorted(installed))
    monkeypatch.setattr(de, "relabel", lambda c, tag, inputs: relabelled.append((tag, inputs)))
    monkeypatch.setattr(de, "build_image", lambda c, tag, dockerfile, inputs, finish=None, **kw: finish(inputs))
    assert de.ensure_stand_in(client, "s3") == keyed  # built with the whole lock, archived as keyed
    assert relabelled == [(spec.tag, keyed)]
    assert json.loads(de._packages_record(spec.tag).read_text()) == sorted(installed)
    assert de.stand_in_inputs(client, "s3") == keyed  # what the next look computes, from the record
    assert de.STAND_INS["redis"].python is None  # installs nothing from the lock: no record, no pip list
