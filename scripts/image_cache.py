"""Archives of the project's local images outside the clone, so that each image is built once per content.

Development tooling used by ``scripts/docker_engine.py`` (and through it ``scripts/prod_stack.py``),
not part of the library. An engine keeps its images under the clone (``var/docker``), which a fresh
clone or ``make docker-purge`` loses; building them again takes minutes each (the base from
debootstrap, TensorFlow's pip installs). So after an image is built, ``docker save`` writes it to
``<folder>/<sanitized tag>-<inputs hash>.tar``, and before building, an archive with the hash of
the current inputs is ``docker load``ed instead (then checked: a corrupt or wrong archive is
deleted and the image is built).

- **Folder**: ``TFMLOPS_IMAGE_CACHE`` (default ``${XDG_CACHE_HOME:-~/.cache}/tfmlops/images``;
  ``off`` disables the cache). Shared by every clone of the user; written to a temporary name and
  renamed, so a reader never sees half an archive.
- **Size cap**: ``TFMLOPS_IMAGE_CACHE_MAX_GB`` (default 20). After each save the least recently used
  archives (by mtime; a load touches its archive) are deleted until the folder is under the cap;
  the archive just written is kept even alone over it.
- **Superseded archives**: saving a tag's archive deletes that tag's archives of other hashes (a
  changed Dockerfile rebuilds that image only, and its old archive would never be read again).
- **Age**: images carry the time they were built (``BUILT_LABEL``); with a ``max_age_s`` (the
  debootstrapped base: a week, for Debian's security updates) an older image counts as absent, in
  the engine and in the cache. Images built FROM the base hash the base's id, so they follow it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

INPUTS_LABEL = "tfmlops.inputs"
BUILT_LABEL = "tfmlops.built"
CACHE_ENV = "TFMLOPS_IMAGE_CACHE"
MAX_GB_ENV = "TFMLOPS_IMAGE_CACHE_MAX_GB"
DEFAULT_MAX_GB = 20.0
HASH_LEN = 16
# a save killed half-way leaves its temporary file; one this old is no save in progress any more
PARTIAL_MAX_AGE_S = 6 * 3600
_ARCHIVE = re.compile(rf"^(?P<tag>.+)-(?P<hash>[0-9a-f]{{{HASH_LEN}}})\.tar$")


# ---------------------------------------------------------------------------------------------- pure logic
def cache_dir(env: dict | None = None) -> Path | None:
    """The archive folder from the environment; None when the cache is off."""
    env = os.environ if env is None else env
    value = env.get(CACHE_ENV, "").strip()
    if value.lower() == "off":
        return None
    if value:
        return Path(value).expanduser()
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "tfmlops" / "images"


def max_bytes(env: dict | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get(MAX_GB_ENV, "").strip() or str(DEFAULT_MAX_GB)
    try:
        gb = float(raw)
    except ValueError:
        raise ValueError(f"{MAX_GB_ENV} must be a number of GB, got {raw!r}") from None
    if gb < 0:
        raise ValueError(f"{MAX_GB_ENV} must not be negative, got {raw!r}")
    return int(gb * 1e9)


def sanitize(tag: str) -> str:
    """A file-name form of an image tag (``local/debian:bookworm`` -> ``local_debian_bookworm``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)


def archive_name(tag: str, inputs: str) -> str:
    return f"{sanitize(tag)}-{inputs[:HASH_LEN]}.tar"


def superseded(names: Iterable[str], tag: str, inputs: str) -> list[str]:
    """The archives among ``names`` of the same tag with another inputs hash."""
    keep, prefix = archive_name(tag, inputs), sanitize(tag)
    out = []
    for name in names:
        m = _ARCHIVE.match(name)
        if m and m["tag"] == prefix and name != keep:
            out.append(name)
    return sorted(out)


@dataclass(frozen=True)
class Entry:
    name: str
    size: int
    mtime: float


def over_cap(entries: Iterable[Entry], cap: int, keep: frozenset[str] = frozenset()) -> list[str]:
    """The least recently used archives to delete for the rest to fit ``cap`` bytes (never ``keep``)."""
    entries = list(entries)
    total = sum(e.size for e in entries)
    doomed = []
    for e in sorted(entries, key=lambda e: (e.mtime, e.name)):
        if total <= cap:
            break
        if e.name not in keep:
            doomed.append(e.name)
            total -= e.size
    return doomed


def built_at(labels: dict | None, created: str | None = None) -> float | None:
    """When an image was built (epoch seconds): its ``BUILT_LABEL``, else Docker's ``Created`` (images
    built before the label existed), None when neither parses."""
    for value in ((labels or {}).get(BUILT_LABEL), created):
        try:
            # seconds precision: Docker's Created has nanoseconds, which datetime does not parse
            return datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
        except (TypeError, ValueError):
            continue
    return None


def built_label(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))


def current(labels: dict | None, inputs: str, max_age_s: float | None = None, created: str | None = None,
            now: float | None = None) -> bool:
    """Whether an image with these ``labels`` is the one ``inputs`` describe, young enough (with ``max_age_s``)."""
    if labels is None or labels.get(INPUTS_LABEL) != inputs:
        return False
    if max_age_s is None:
        return True
    built = built_at(labels, created)
    return built is not None and (time.time() if now is None else now) - built <= max_age_s


# ---------------------------------------------------------------------------------------------- the folder
def image_state(client, tag: str) -> tuple[dict, str] | None:
    """``(labels, created)`` of the engine's image ``tag``; None when it has none."""
    import docker

    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    return image.labels or {}, image.attrs.get("Created", "")


def is_current(client, tag: str, inputs: str, max_age_s: float | None = None) -> bool:
    state = image_state(client, tag)
    return state is not None and current(state[0], inputs, max_age_s, created=state[1])


class ImageCache:
    def __init__(self, folder: Path, cap: int, log: Callable[[str], None] = print):
        self.folder = folder
        self.cap = cap
        self.log = log

    @classmethod
    def from_env(cls, log: Callable[[str], None] = print, env: dict | None = None) -> ImageCache | None:
        folder = cache_dir(env)
        return None if folder is None else cls(folder, max_bytes(env), log)

    def path(self, tag: str, inputs: str) -> Path:
        return self.folder / archive_name(tag, inputs)

    def entries(self) -> list[Entry]:
        out = []
        for p in self.folder.glob("*.tar") if self.folder.is_dir() else []:
            try:
                st = p.stat()
            except FileNotFoundError:  # deleted meanwhile by another clone's pruning
                continue
            out.append(Entry(p.name, st.st_size, st.st_mtime))
        return out

    def load(self, client, tag: str, inputs: str, max_age_s: float | None = None) -> bool:
        """``tag`` loaded from its archive for ``inputs`` and checked; False (the caller builds) when
        there is none, and after deleting one that fails to load, holds another image, or is too old."""
        import docker

        path = self.path(tag, inputs)
        if not path.is_file():
            return False
        t0 = time.monotonic()
        try:
            with open(path, "rb") as f:
                client.images.load(f)
        except (OSError, docker.errors.DockerException) as exc:  # requests' errors are OSErrors
            return self._reject(path, f"does not load ({exc})")
        if not is_current(client, tag, inputs):
            return self._reject(path, f"does not hold {tag} with {INPUTS_LABEL}={inputs}")
        if not is_current(client, tag, inputs, max_age_s):
            return self._reject(path, f"holds {tag} built over {max_age_s / 86400:.0f} days ago")
        os.utime(path)  # the least recently *used* archives go first when over the cap
        client.images.prune(filters={"dangling": True})  # the image the load untagged
        self.log(f"{tag} loaded from {path} in {time.monotonic() - t0:.0f}s")
        return True

    def load_earlier(self, client, tag: str) -> bool:
        """The tag's archive of other inputs (the newest), loaded as a build cache only: ``docker
        build --cache-from`` reuses its layers up to the first step whose inputs changed. False when
        there is none or it does not load (nothing to reuse: the build starts from scratch)."""
        import docker

        pattern = re.compile(rf"^{re.escape(sanitize(tag))}-[0-9a-f]{{{HASH_LEN}}}\.tar$")
        earlier = sorted((e for e in self.entries() if pattern.match(e.name)), key=lambda e: e.mtime)
        if not earlier:
            return False
        path, t0 = self.folder / earlier[-1].name, time.monotonic()
        try:
            with open(path, "rb") as f:
                client.images.load(f)
        except (OSError, docker.errors.DockerException) as exc:
            self.log(f"image archive {path} does not load ({exc}); building {tag} without its layers")
            return False
        self.log(f"{tag}: earlier build loaded from {path} in {time.monotonic() - t0:.0f}s as the build's cache")
        return image_state(client, tag) is not None

    def _reject(self, path: Path, why: str) -> bool:
        self.log(f"image archive {path} {why}: deleted, building instead")
        path.unlink(missing_ok=True)
        return False

    def save(self, client, tag: str, inputs: str) -> Path | None:
        """``docker save`` of ``tag`` as its archive for ``inputs``, then the tag's superseded archives and
        the least recently used beyond the cap deleted. A failure is logged only: the image is built."""
        import docker

        path = self.path(tag, inputs)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        t0 = time.monotonic()
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(partial, "wb") as f:
                for chunk in client.images.get(tag).save(chunk_size=8 << 20, named=tag):
                    f.write(chunk)
            os.replace(partial, path)  # atomic: another clone loads the whole archive or none
        except (OSError, docker.errors.DockerException) as exc:
            partial.unlink(missing_ok=True)
            self.log(f"could not save {tag} to {path} ({exc}); it stays in the engine only")
            return None
        self.log(f"{tag} saved to {path} ({path.stat().st_size / 1e9:.1f} GB) in {time.monotonic() - t0:.0f}s")
        self.prune(tag, inputs)
        return path

    def prune(self, tag: str, inputs: str) -> list[str]:
        """Delete ``tag``'s superseded archives, then the least recently used ones over the cap (never
        the archive for ``inputs``), and temporary files of saves that died."""
        keep = archive_name(tag, inputs)
        doomed = superseded((e.name for e in self.entries()), tag, inputs)
        for name in doomed:
            (self.folder / name).unlink(missing_ok=True)
        lru = over_cap(self.entries(), self.cap, frozenset({keep}))
        for name in lru:
            (self.folder / name).unlink(missing_ok=True)
        if doomed or lru:
            self.log(f"image cache {self.folder}: deleted {', '.join(doomed + lru)} "
                     f"({len(doomed)} superseded, {len(lru)} over the {self.cap / 1e9:g} GB cap)")
        for p in self.folder.glob(".*.partial"):
            try:
                if time.time() - p.stat().st_mtime > PARTIAL_MAX_AGE_S:
                    p.unlink()
            except FileNotFoundError:
                pass
        return doomed + lru

    def describe(self) -> str:
        entries = self.entries()
        return (f"{self.folder} ({len(entries)} archives, {sum(e.size for e in entries) / 1e9:.1f} GB "
                f"of {self.cap / 1e9:g} GB)")
