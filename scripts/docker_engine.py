"""The project's own Docker engine on this machine, and the local images that stand in for hub images.

Development tooling (``make docker-up`` / ``make docker-down``, the test fixture ``docker_engine``),
not part of the library. It needs root on Debian (or a Debian derivative); anywhere else it says
why it cannot, and the tests that need it skip with that reason.

- **Engine**: Debian's ``docker.io`` (dockerd 20.10, its own containerd) started with its data,
  exec root, socket and PID file under ``<dir>`` (default ``var/docker``; ``TFMLOPS_DOCKER_DIR``)
  and without touching the machine's network: no bridge, no iptables rules, no IP forwarding or
  masquerading, no userland proxy. Containers therefore use ``network_mode="host"`` (or none);
  ``-p`` port publishing does nothing on this engine. Clients reach it with
  ``DOCKER_HOST=unix://<dir>/docker.sock``. ``up`` reuses an engine that answers and cleans up
  after one that died; ``down`` removes every container of *this* engine (it only ever runs what
  this project started), stops the daemon by its PID and unmounts what it left under ``<dir>``.
  Images stay in ``<dir>/data`` for the next run (``down --purge`` removes them too).
- **Isolated engine** (``up --isolated``, under ``<dir>-isolated``): a second dockerd in a network
  namespace of its own (``unshare --net``, loopback only), with Docker's default networking —
  the bridge, published ports, user-defined networks and their DNS, iptables rules — all of it
  inside that namespace, which has no way out. Images are built on the first engine and copied
  (``copy_image``: ``docker save | docker load``); clients of its containers run in its
  namespace (``nsenter --net=<Engine.netns>``). Never send test traffic to private-range
  addresses from the machine's own namespace: inside this one it stays there.
- **Base image** ``local/debian:bookworm``: no image registry is reachable from here, so
  ``FROM debian:bookworm`` cannot be pulled. ``debootstrap --variant=minbase`` builds the root file
  system from the Debian mirror of the machine's own apt sources, with ``ca-certificates`` and the
  machine's local CA certificates (the ``.crt`` files of ``/usr/local/share/ca-certificates``,
  copied at build time, never committed: without them TLS to the package registries fails inside
  builds), then ``docker import`` makes it an image.
- **tf-serving-local image** (``docker/tf-serving-local/Dockerfile``): stands in for
  ``tensorflow/serving``, built ``FROM`` the local base with ``--network host`` (the only network
  a build has on this engine).
- **Stand-ins of the production stack** (``up --stand-ins``, ``STAND_INS``): the other hub images
  of docker-compose.yaml, each from ``docker/stand-ins/<name>/Dockerfile`` FROM the same base,
  named by ``docker/compose.stand-ins.yaml`` (scripts/prod_stack.py runs the stack with it).

Each image carries a label with a hash of its inputs; an image whose label matches is reused,
so a second run builds nothing. A stand-in that installs Python packages with the lock as
constraints hashes only the lock's pins of the packages its last build installed (``pip list`` in
the built image, recorded beside the image archives as ``<tag>.packages.json``; the image is then
re-labelled): a new or changed pin rebuilds exactly the images that install that package.

- **A rebuild starts from the earlier build** (``--cache-from``): the engine's image of the tag,
  else its archive of other inputs loaded from the image cache, so a changed source file rebuilds
  the layers from its ``COPY`` on and reuses the package installs before it.

- **Image archives outside the clone** (``scripts/image_cache.py``): the engine's images live in
  ``<dir>/data``, which a fresh clone or ``down --purge`` loses. Every image built here (the base
  after ``docker import``, the stand-ins, tf-serving-local, and the project's images that
  ``prod_stack.py`` builds through ``build_image``) is ``docker save``d to
  ``$TFMLOPS_IMAGE_CACHE`` (default ``${XDG_CACHE_HOME:-~/.cache}/tfmlops/images``; ``off``
  disables it) as ``<tag>-<inputs hash>.tar``; an image missing from the engine is ``docker load``ed
  from the archive of its current hash instead of built. Capped at ``TFMLOPS_IMAGE_CACHE_MAX_GB``
  (default 20; least recently used archives deleted first); a tag's archives of older hashes are
  deleted when a new one is saved.
- **A week-old base is rebuilt**: the base carries its build time (label ``tfmlops.built``) and is
  debootstrapped again (Debian's security updates) once it is over ``BASE_MAX_AGE_S`` old, in the
  engine or in the cache; the images FROM it hash its id, so they are rebuilt after it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import image_cache as ic

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / "var" / "docker"
BASE_IMAGE = "local/debian:bookworm"
SERVING_DOCKERFILE = "docker/tf-serving-local/Dockerfile"
INPUTS_LABEL = ic.INPUTS_LABEL
# Debian's security updates reach the images through the base: debootstrapped again once a week
BASE_MAX_AGE_S = 7 * 86400
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
# Debian packages and the file each one provides (installed only when missing)
PACKAGES = {"docker.io": "/usr/sbin/dockerd", "debootstrap": "/usr/sbin/debootstrap"}
# the flags measured to start dockerd without changing anything in the machine's network
DOCKERD_FLAGS = ["--iptables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none",
                 "--userland-proxy=false", "--storage-driver=overlay2"]
# in a network namespace of its own, Docker's default networking changes that namespace only
ISOLATED_FLAGS = ["--storage-driver=overlay2"]
UNIX_PATH_MAX = 107  # sun_path: 108 bytes with the terminating NUL


class EngineUnavailable(RuntimeError):
    """A Docker engine cannot be set up on this machine; the message says why and what would fix it."""


class ImageBuildError(RuntimeError):
    """A Dockerfile of the project did not build (the build's last lines in the message)."""


class NotCached(LookupError):
    """Under :func:`cache_only`: an image is neither in the engine nor in the image cache."""


_builds = {"allowed": True}


@contextlib.contextmanager
def cache_only():
    """Images only from the engine or the image cache: where one would be built, :class:`NotCached`
    (the isolated engine cannot build — no network — but can load every archive itself)."""
    _builds["allowed"] = False
    try:
        yield
    finally:
        _builds["allowed"] = True


def log(msg: str) -> None:
    print(f"[docker-engine] {msg}", file=sys.stderr, flush=True)


def engine_dir(isolated: bool = False) -> Path:
    d = Path(os.environ.get("TFMLOPS_DOCKER_DIR") or DEFAULT_DIR).resolve()
    return d.with_name(d.name + "-isolated") if isolated else d


def unavailable_reason() -> str:
    """Why the engine cannot be set up here ("" when it can, perhaps after installing packages)."""
    if platform.system() != "Linux":
        return f"the Docker engine set-up runs on Linux only (this is {platform.system()})"
    if os.geteuid() != 0:
        return ("starting dockerd needs root (run `sudo make docker-up` once, or export DOCKER_HOST for an "
                "engine you already run)")
    if not Path("/etc/debian_version").exists() or not shutil.which("apt-get"):
        return "the set-up installs Debian's docker.io and debootstrap with apt-get: not a Debian machine"
    sock = engine_dir(isolated=True) / "exec/containerd/containerd.sock.ttrpc"  # the longest socket path
    if len(str(sock)) > UNIX_PATH_MAX:
        return f"the socket path {sock} is longer than {UNIX_PATH_MAX} bytes: set TFMLOPS_DOCKER_DIR to a shorter path"
    return ""


def ensure_packages(names: list[str]) -> None:
    missing = [n for n in names if not Path(PACKAGES[n]).exists()]
    if not missing:
        return
    log(f"installing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise EngineUnavailable(f"apt-get install {' '.join(missing)} failed: {exc}") from exc


# ---------------------------------------------------------------------------------------------- engine
@dataclass
class Engine:
    dir: Path
    started: bool  # True when this call started the daemon (the caller then owns its tear-down)
    isolated: bool = False

    @property
    def host(self) -> str:
        return f"unix://{self.dir / 'docker.sock'}"

    @property
    def netns(self) -> str:
        """The daemon's network namespace (``nsenter --net=<this>``): where its containers' ports are."""
        pid = _pid(self.dir)
        if not pid:
            raise EngineUnavailable(f"no dockerd runs for {self.dir}")
        return f"/proc/{pid}/ns/net"

    def client(self, timeout: int = 600):
        import docker

        return docker.DockerClient(base_url=self.host, timeout=timeout)


def _answers(d: Path) -> bool:
    if not (d / "docker.sock").exists():
        return False
    import docker

    try:
        client = docker.DockerClient(base_url=f"unix://{d / 'docker.sock'}", timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - docker.errors.DockerException, connection refused/reset: it does not answer
        return False


def _pid(d: Path) -> int | None:
    try:
        pid = int((d / "docker.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    # a PID reused by another process after a crash is not ours: it must be dockerd on our socket
    ours = (Path(cmdline[0].decode(errors="replace")).name == "dockerd"
            and f"unix://{d / 'docker.sock'}".encode() in b" ".join(cmdline))
    return pid if ours else None


def _mounts_under(d: Path) -> list[str]:
    """Mount points at or below ``d`` (deepest first), from /proc/self/mountinfo."""
    prefix = str(d).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix) or point == str(d):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def _unmount_all(d: Path) -> None:
    for point in _mounts_under(d):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


def up(d: Path | None = None, timeout_s: float = 60, isolated: bool = False) -> Engine:
    """The engine under ``d``: reused when it answers, else started (after cleaning up a dead one);
    ``isolated``: in a network namespace of its own, with Docker's default networking there."""
    d = d or engine_dir(isolated)
    why = unavailable_reason()
    if why:
        raise EngineUnavailable(why)
    if _answers(d):
        return Engine(d, started=False, isolated=isolated)
    ensure_packages(["docker.io"])
    if _pid(d):  # alive but not answering: a daemon still starting, or a stuck one
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _pid(d) and not _answers(d):
            time.sleep(0.5)
        if _answers(d):
            return Engine(d, started=False, isolated=isolated)
        _stop_daemon(d)
    _unmount_all(d / "exec")  # what a daemon that died left behind (its netns mount, overlays)
    for name in ("docker.sock", "docker.pid"):
        (d / name).unlink(missing_ok=True)
    for sub in ("data", "exec"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    argv = ["dockerd", *(ISOLATED_FLAGS if isolated else DOCKERD_FLAGS), f"--data-root={d / 'data'}",
            f"--exec-root={d / 'exec'}", f"-H=unix://{d / 'docker.sock'}", f"--pidfile={d / 'docker.pid'}"]
    if isolated:  # a new network namespace with its loopback up; the socket stays a file we reach
        argv = ["unshare", "--net", "--fork", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]
    with open(d / "dockerd.log", "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    t0 = time.monotonic()
    while not _answers(d):
        if proc.poll() is not None:
            raise EngineUnavailable(f"dockerd exited with status {proc.returncode}; see {d / 'dockerd.log'}:\n"
                                    + _tail(d / "dockerd.log"))
        if time.monotonic() - t0 > timeout_s:
            proc.terminate()
            raise EngineUnavailable(f"dockerd did not answer within {timeout_s:.0f}s; see {d / 'dockerd.log'}")
        time.sleep(0.2)
    log(f"dockerd (PID {_pid(d)}{', own network namespace' if isolated else ''}) answers at "
        f"unix://{d / 'docker.sock'} after {time.monotonic() - t0:.1f}s")
    return Engine(d, started=True, isolated=isolated)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop_daemon(d: Path, timeout_s: float = 30) -> None:
    pid = _pid(d)
    if not pid:
        return
    os.kill(pid, signal.SIGTERM)  # dockerd stops its containers and its own containerd
    deadline = time.monotonic() + timeout_s
    while _pid(d) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _pid(d):
        log(f"dockerd (PID {pid}) still runs after {timeout_s:.0f}s: SIGKILL")
        os.killpg(os.getpgid(pid), signal.SIGKILL)  # its group: dockerd, its containerd and shims (and unshare)
        time.sleep(1)


def down(d: Path | None = None, purge: bool = False) -> None:
    """Remove every container of this engine, stop the daemon, unmount what it left under ``d``;
    ``purge`` also removes its data (images, layers)."""
    d = d or engine_dir()
    if not d.exists():
        return
    if _answers(d):
        client = Engine(d, started=False).client(timeout=60)
        for c in client.containers.list(all=True):
            log(f"removing container {c.name}")
            c.remove(force=True)
        client.close()
    _stop_daemon(d)
    _unmount_all(d)
    for name in ("docker.sock", "docker.pid"):
        (d / name).unlink(missing_ok=True)
    if purge:
        shutil.rmtree(d)
        log(f"removed {d}")


# ---------------------------------------------------------------------------------------------- images
def _image_label(client, tag: str) -> str | None:
    state = ic.image_state(client, tag)
    return None if state is None else state[0].get(INPUTS_LABEL)


def _reusable(client, tag: str, inputs: str, max_age_s: float | None = None) -> bool:
    """The engine holds ``tag`` built from ``inputs`` (no older than ``max_age_s``), or it was just
    loaded from the image cache's archive of them: nothing to build. Under :func:`cache_only`,
    :class:`NotCached` instead of False (the caller would build)."""
    if ic.is_current(client, tag, inputs, max_age_s):
        return True
    cache = ic.ImageCache.from_env(log)
    if cache is not None and cache.load(client, tag, inputs, max_age_s):
        return True
    if not _builds["allowed"]:
        age = f", under {max_age_s / 86400:.0f} days old" if max_age_s else ""
        raise NotCached(f"{tag} ({INPUTS_LABEL}={inputs}{age}) is not in the image cache")
    return False


def _archive(client, tag: str, inputs: str) -> None:
    """A freshly built image into the image cache (for the next clone, or after ``down --purge``)."""
    cache = ic.ImageCache.from_env(log)
    if cache is not None:
        cache.save(client, tag, inputs)


def _digest(parts: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, data in parts:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


def apt_mirror(suite: str = "bookworm", apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror of the machine's apt sources (deb822 ``*.sources`` or one-line ``*.list``)."""
    candidates = []
    parts = apt_dir / "sources.list.d"
    for f in sorted(parts.glob("*.sources")):
        for stanza in f.read_text().split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if line.strip() and not line.startswith(("#", " ")) and ":" in line:
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.split()
            if "deb" in fields.get("types", []) and suite in fields.get("suites", []) and fields.get("uris"):
                candidates.append(fields["uris"][0])
    for f in [apt_dir / "sources.list", *sorted(parts.glob("*.list"))]:
        if f.is_file():
            for line in f.read_text().splitlines():
                words = re.sub(r"\[[^\]]*\]", " ", line.split("#")[0]).split()  # without [options]
                if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                    candidates.append(words[1])
    if not candidates:
        raise EngineUnavailable(f"no Debian mirror for {suite} in the apt sources under {apt_dir}")
    return candidates[0]


def local_ca_certs() -> list[Path]:
    return sorted(LOCAL_CA_DIR.glob("**/*.crt")) if LOCAL_CA_DIR.is_dir() else []


def ensure_base_image(client, tag: str = BASE_IMAGE, suite: str = "bookworm") -> str:
    """``local/debian:<suite>`` from debootstrap (minbase + ca-certificates + the local CA certificates)."""
    mirror = apt_mirror(suite)
    certs = local_ca_certs()
    inputs = _digest([("suite", suite.encode()), ("mirror", mirror.encode()), ("variant", b"minbase"),
                      ("include", b"ca-certificates")] + [(f"ca/{c.name}", c.read_bytes()) for c in certs])
    if _reusable(client, tag, inputs, BASE_MAX_AGE_S):
        return tag
    ensure_packages(["debootstrap"])
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=engine_dir()))
    rootfs = work / "rootfs"
    t0 = time.monotonic()
    try:
        log(f"debootstrap --variant=minbase {suite} from {mirror} (about a minute)")
        subprocess.run(["debootstrap", "--variant=minbase", "--include=ca-certificates", suite, str(rootfs), mirror],
                       check=True, stdout=subprocess.DEVNULL)
        for c in certs:  # the machine's CA certificates: TLS to the registries goes through them here
            shutil.copy2(c, rootfs / "usr/local/share/ca-certificates" / c.name)
        subprocess.run(["chroot", str(rootfs), "update-ca-certificates"], check=True, stdout=subprocess.DEVNULL)
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
        for p in (rootfs / "var/lib/apt/lists").glob("*_*"):
            p.unlink()
        log(f"docker import -> {tag}")
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        client.api.import_image_from_stream(tar.stdout, repository=tag.split(":")[0], tag=tag.split(":")[1],
                                            changes=[f'LABEL {INPUTS_LABEL}="{inputs}"',
                                                     f'LABEL {ic.BUILT_LABEL}="{ic.built_label()}"', 'CMD ["bash"]'])
        if tar.wait() != 0:
            raise EngineUnavailable(f"tar of {rootfs} failed with status {tar.returncode}")
    finally:
        _unmount_all(work)  # debootstrap mounts /proc and /sys in the chroot; they are gone by now normally
        shutil.rmtree(work, ignore_errors=True)
    if _image_label(client, tag) != inputs:
        raise EngineUnavailable(f"docker import did not produce {tag} with label {INPUTS_LABEL}={inputs}")
    client.images.prune(filters={"dangling": True})  # the week-old base this one replaced
    log(f"{tag} built in {time.monotonic() - t0:.0f}s")
    _archive(client, tag, inputs)
    return tag


LOCK = "requirements-lock.txt"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock_pins() -> dict[str, str]:
    """{canonical name: the lock's line} of every pin in requirements-lock.txt."""
    pins = {}
    for line in (ROOT / LOCK).read_text().splitlines():
        name, sep, _ = line.split("#")[0].strip().partition("==")
        if sep:
            pins[_canonical(name.split("[")[0])] = line.strip()
    return pins


def _lock_pin(package: str) -> str:
    line = _lock_pins().get(_canonical(package))
    if line is None:
        raise EngineUnavailable(f"{package} is not pinned in {LOCK}")
    return line.partition("==")[2].strip()


def serving_image_tag() -> str:
    return f"local/tf-serving-local:{_lock_pin('tensorflow-serving-api')}"


@dataclass(frozen=True)
class StandIn:
    """A local image standing in for a hub image (docker/stand-ins/README.md), built FROM the base."""

    tag: str
    dockerfile: str  # relative to the repository root; its folder's files are in the build context
    extra: tuple[str, ...] = (LOCK,)  # more context files (repository-relative)
    python: str | None = None  # the interpreter of the environment it installs with the lock as constraints

    def files(self) -> list[str]:
        folder = ROOT / self.dockerfile.rsplit("/", 1)[0]
        files = [self.dockerfile, *self.extra]
        files += [str(p.relative_to(ROOT)) for p in sorted(folder.iterdir()) if p.is_file()]
        return sorted(set(files))


# what docker/compose.stand-ins.yaml names (a test checks the two agree); tf-serving-local first:
# the fleet tests need it alone
STAND_INS = {
    "tf-serving-local": StandIn(serving_image_tag(), SERVING_DOCKERFILE, (LOCK,) + tuple(
        str(p.relative_to(ROOT)) for p in [ROOT / "include/tfmlops/__init__.py",
                                            *sorted((ROOT / "include/tfmlops/serving").rglob("*.py"))]),
                                "/opt/tf-serving-local/bin/python"),
    "airflow": StandIn("local/airflow:3.3.2-python3.11", "docker/stand-ins/airflow/Dockerfile",
                       python="/home/airflow/.local/bin/python"),
    "node": StandIn("local/node:20.19.5-bookworm-slim", "docker/stand-ins/node/Dockerfile", ()),
    "postgres": StandIn("local/postgres:15-bookworm", "docker/stand-ins/postgres/Dockerfile", ()),
    "redis": StandIn("local/redis:7.0-bookworm", "docker/stand-ins/redis/Dockerfile", ()),
    "s3": StandIn("local/s3:moto-5.2.5", "docker/stand-ins/s3/Dockerfile", python="/opt/s3/venv/bin/python"),
    "mlflow": StandIn("local/mlflow:v3.17.2", "docker/stand-ins/mlflow/Dockerfile",
                      python="/opt/mlflow/venv/bin/python"),
    "haproxy": StandIn("local/haproxy:2.6-bookworm", "docker/stand-ins/haproxy/Dockerfile", ()),
    "prometheus": StandIn("local/prometheus:2.42-bookworm", "docker/stand-ins/prometheus/Dockerfile", ()),
}


def _serving_context_files() -> list[str]:
    """The build context of docker/tf-serving-local/Dockerfile (paths relative to the repository root)."""
    return STAND_INS["tf-serving-local"].files()


def build_image(client, tag: str, dockerfile: str, inputs: str, *, context: Path | None = None,
                files: list[str] | None = None, buildargs: dict | None = None, finish=None) -> str:
    """``tag`` built with ``--network host`` (the only network a build has on this engine) and labelled
    with ``inputs``; skipped when an image with that label exists. The context is ``context`` (a
    folder, its .dockerignore applied) or only ``files`` (repository-relative) copied at their paths.
    A missing image is loaded from the image cache when it holds one of these inputs, and saved there
    once built. ``finish(inputs)``, run after the build, may re-label the image: it returns the
    inputs the image is archived under."""
    if _reusable(client, tag, inputs):
        return tag
    t0 = time.monotonic()
    cache_from = _earlier_build(client, tag)
    with tempfile.TemporaryDirectory(prefix="context-", dir=engine_dir()) as ctx:
        if context is None:
            for f in files or []:  # only what the Dockerfile copies, at the paths it names
                (Path(ctx) / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, Path(ctx) / f)
        log(f"building {tag} from {dockerfile} (a few minutes when it installs Python packages)")
        out = client.api.build(path=str(context or ctx), dockerfile=dockerfile, tag=tag, network_mode="host",
                               rm=True, forcerm=True, decode=True, buildargs=buildargs or {}, cache_from=cache_from,
                               labels={INPUTS_LABEL: inputs, ic.BUILT_LABEL: ic.built_label()})
        tail: list[str] = []
        reused = 0
        for chunk in out:
            if "error" in chunk:
                raise ImageBuildError(f"building {tag} failed: {chunk['error'].strip()}\n" + "".join(tail[-20:]))
            text = chunk.get("stream", "")
            if text:
                tail.append(text)
                reused += "Using cache" in text
                if text.startswith("Step "):
                    log(text.strip())
    if _image_label(client, tag) != inputs:
        raise ImageBuildError(f"the build did not produce {tag} with label {INPUTS_LABEL}={inputs}")
    client.images.prune(filters={"dangling": True})  # the image this one replaced (the engine holds only ours)
    if finish is not None:
        inputs = finish(inputs)
    log(f"{tag} built in {time.monotonic() - t0:.0f}s ({reused} steps from its earlier build)")
    _archive(client, tag, inputs)
    return tag


def _earlier_build(client, tag: str) -> list[str]:
    """``--cache-from`` for a build of ``tag``: its earlier build (in the engine, else loaded from the
    image cache), whose layers are reused up to the first step whose inputs changed — a code change
    rebuilds the layers from its ``COPY`` on, not the package installs before it. A fresh clone's
    engine has no intermediate images, so without it every rebuild starts from scratch."""
    if ic.image_state(client, tag) is None:
        cache = ic.ImageCache.from_env(log)
        if cache is None or not cache.load_earlier(client, tag):
            return []
    return [tag]


def _packages_record(tag: str) -> Path:
    """Where the names of the packages ``tag``'s last build installed are kept: beside the image
    cache's archives (shared by the user's clones), else in the engine's folder."""
    folder = ic.cache_dir() or engine_dir()
    return folder / f"{ic.sanitize(tag)}.packages.json"


def stand_in_inputs(client, name: str, base: str = BASE_IMAGE, packages: list[str] | None = None) -> str:
    """The inputs hash of a stand-in: the base's id, its context files, and of the lock only the
    pins of the packages it installs (``packages``, default: those its last build installed, from
    :func:`_packages_record`; none known yet: the whole lock). So a new or changed pin rebuilds the
    images that install that package and no other."""
    spec = STAND_INS[name]
    parts = [("base", client.images.get(base).id.encode())]
    for f in spec.files():
        if f == LOCK and spec.python:
            if packages is None:
                record = _packages_record(spec.tag)
                packages = json.loads(record.read_text()) if record.is_file() else None
            if packages is not None:
                pins = _lock_pins()
                parts.append((f, "\n".join(pins[p] for p in sorted({_canonical(x) for x in packages})
                                            if p in pins).encode()))
                continue
        parts.append((f, (ROOT / f).read_bytes()))
    return _digest(parts)


def installed_packages(client, tag: str, python: str) -> list[str]:
    """The names of the packages installed in ``tag``'s environment (``pip list`` in a container
    without network)."""
    out = client.containers.run(tag, entrypoint=[python, "-m", "pip", "list", "--format=freeze",
                                                 "--disable-pip-version-check"], user="0", network_mode="none",
                                remove=True, stdout=True, stderr=False)
    names = sorted({_canonical(line.split("==")[0]) for line in out.decode().splitlines() if "==" in line})
    if not names:
        raise ImageBuildError(f"no packages listed by {python} -m pip list in {tag}")
    return names


def ensure_stand_in(client, name: str, base: str = BASE_IMAGE) -> str:
    """A stand-in image (``STAND_INS``), rebuilt only when its inputs (base, context files, the lock's
    pins of what it installs) changed. After a build, the packages it installed are recorded and
    the image labelled with the inputs computed from them (what the next look computes)."""
    spec = STAND_INS[name]
    files = spec.files()

    def pins_of_what_it_installed(inputs: str) -> str:
        packages = installed_packages(client, spec.tag, spec.python)
        final = stand_in_inputs(client, name, base, packages)
        record = _packages_record(spec.tag)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(packages))
        if final != inputs:  # a label is fixed at build time: a one-line build on top re-labels it
            relabel(client, spec.tag, final)
        return final

    return build_image(client, spec.tag, spec.dockerfile, stand_in_inputs(client, name, base), files=files,
                       buildargs={"BASE_IMAGE": base}, finish=pins_of_what_it_installed if spec.python else None)


def relabel(client, tag: str, inputs: str) -> None:
    """``tag`` labelled with ``inputs`` (a metadata-only build ``FROM`` it, same time of build)."""
    built = (ic.image_state(client, tag) or ({}, ""))[0].get(ic.BUILT_LABEL, ic.built_label())
    dockerfile = io.BytesIO(f"FROM {tag}\n".encode())
    for _ in client.api.build(fileobj=dockerfile, tag=tag, rm=True, forcerm=True, decode=True,
                              labels={INPUTS_LABEL: inputs, ic.BUILT_LABEL: built}):
        pass
    if _image_label(client, tag) != inputs:
        raise ImageBuildError(f"re-labelling {tag} with {INPUTS_LABEL}={inputs} failed")
    client.images.prune(filters={"dangling": True})


def ensure_serving_image(client, base: str = BASE_IMAGE) -> str:
    """The tf-serving-local image (stand-in for tensorflow/serving), rebuilt only when its inputs changed."""
    return ensure_stand_in(client, "tf-serving-local", base)


def context_digest(context: Path, parents: list[str], buildargs: dict) -> str:
    """The inputs of a build from a whole folder: its files (minus .dockerignore), the ids of the
    images it builds on and the build arguments."""
    from docker.utils.build import exclude_paths

    ignore = context / ".dockerignore"
    patterns = [p for p in (ignore.read_text().splitlines() if ignore.exists() else []) if p.strip()
                and not p.startswith("#")]
    paths = sorted(p for p in exclude_paths(str(context), patterns) if (context / p).is_file())
    return _digest([(f"parent/{i}", p.encode()) for i, p in enumerate(parents)]
                   + [(f"arg/{k}", str(v).encode()) for k, v in sorted(buildargs.items())]
                   + [(p, (context / p).read_bytes()) for p in paths])


def copy_image(src, dst, tag: str) -> str:
    """``docker save | docker load`` of ``tag`` from engine ``src`` to ``dst`` (the isolated engine
    has no way out to build or pull); nothing is copied when ``dst`` has the same image."""
    import docker

    image = src.images.get(tag)
    try:
        if dst.images.get(tag).id == image.id:
            return tag
    except docker.errors.ImageNotFound:
        pass
    t0 = time.monotonic()
    dst.images.load(image.save(chunk_size=8 << 20, named=tag))  # named: the tarball carries the tag
    if dst.images.get(tag).id != image.id:
        raise ImageBuildError(f"docker load of {tag} gave another image than {image.id}")
    log(f"copied {tag} in {time.monotonic() - t0:.0f}s")
    return tag


def ensure_images(client, stand_ins: bool = False) -> dict:
    """The base and tf-serving-local images; ``stand_ins``: every stand-in of ``STAND_INS``."""
    images = {"base": ensure_base_image(client)}
    for name in STAND_INS if stand_ins else ["tf-serving-local"]:
        images[name] = ensure_stand_in(client, name)
    return images


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start the engine (reusing one that answers)")
    p_up.add_argument("--images", action="store_true", help="also build the local images (reused when unchanged)")
    p_up.add_argument("--stand-ins", action="store_true",
                      help="also build every stand-in image of docker/compose.stand-ins.yaml (docker/stand-ins/)")
    p_up.add_argument("--isolated", action="store_true",
                      help=f"also the engine in its own network namespace ({engine_dir(True)}), with the images")
    p_down = sub.add_parser("down", help="remove their containers, stop both engines, unmount what they left")
    p_down.add_argument("--purge", action="store_true",
                        help=f"also remove {engine_dir()} and {engine_dir(True)} (images and layers)")
    sub.add_parser("status", help="say whether they answer")
    args = parser.parse_args(argv)

    if args.cmd == "down":
        for isolated in (True, False):
            down(engine_dir(isolated), purge=args.purge)
        log("stopped" + (" and purged" if args.purge else ""))
        return 0
    if args.cmd == "status":
        for isolated in (False, True):
            d = engine_dir(isolated)
            print(f"the engine at unix://{d / 'docker.sock'} {'answers' if _answers(d) else 'is not running'}")
        cache = ic.ImageCache.from_env(log)
        print(f"image cache: {cache.describe() if cache else 'off (TFMLOPS_IMAGE_CACHE=off)'}")
        return 0 if _answers(engine_dir()) else 1
    try:
        t0 = time.monotonic()
        engine = up()
        if args.images or args.isolated or args.stand_ins:
            client = engine.client()
            images = ensure_images(client, stand_ins=args.stand_ins)
            for kind, tag in images.items():
                log(f"{kind}: {tag}")
            if args.isolated:
                iso = up(isolated=True)
                iso_client = iso.client()
                copy_image(client, iso_client, images["tf-serving-local"])
                iso_client.close()
                log(f"isolated engine: export DOCKER_HOST={iso.host}; its network: nsenter --net={iso.netns}")
            client.close()
    except EngineUnavailable as exc:
        log(f"no Docker engine here: {exc}")
        return 3
    except ImageBuildError as exc:
        log(str(exc))
        return 1
    log(f"ready in {time.monotonic() - t0:.1f}s; use it with:  export DOCKER_HOST={engine.host}")
    print(f"DOCKER_HOST={engine.host}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
