"""The production stack (docker-compose.yaml, Dockerfile, docker/): validated offline against the
compose spec, and checked for consistency with what the DAGs, hooks and the rollout need.

No Docker engine is needed: the compose file is read with its ``${...}`` values taken from
``.env.example`` (as ``docker compose --env-file .env.example`` would), and the TF Serving
connections are read back through the project's own ``TFServingHook``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yaml"
SOCKET_OVERRIDE = ROOT / "docker" / "compose.docker-socket.yaml"
STAND_INS_OVERRIDE = ROOT / "docker" / "compose.stand-ins.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker", "airflow-init")
TF_SERVING_PREFIX = "tf_serving_"


# ----------------------------------------------------------------------------------- helpers
def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().strip("'\"")
    return values


_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def outside_the_image_context(path: str) -> bool:
    """Whether the Airflow image's build context leaves ``path`` out (.dockerignore, as docker-py
    applies it when it sends the context and scripts/docker_engine.context_digest when it hashes it)."""
    from docker.utils.build import PatternMatcher

    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return PatternMatcher([p for p in lines if p.strip() and not p.startswith("#")]).matches(path)


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ``$$``, ``${V}``, ``${V:-default}``, ``${V-default}``,
    ``${V:?error}``, ``${V?error}`` and ``$V``."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        present = name in env and (env[name] != "" or (op or ":")[0] != ":")
        if op and op.endswith("-"):
            return env[name] if present else arg
        if op and op.endswith("?"):
            if not present:
                raise KeyError(f"${{{name}}} is required: {arg}")
            return env[name]
        return env.get(name, "")

    return _VAR.sub(sub, value)


def _resolve(node, env):
    if isinstance(node, dict):
        return {k: _resolve(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, env) for v in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def load_compose(path: Path = COMPOSE, env: dict | None = None) -> dict:
    return _resolve(yaml.safe_load(path.read_text()), env_example() if env is None else env)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of every short-syntax volume of a service."""
    out = []
    for spec in service.get("volumes") or []:
        parts = spec.split(":")
        out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def volume_of(service: dict, path: str, compose: dict) -> tuple[str, str, bool]:
    """The named volume and the path inside it that ``path`` is, in ``service``'s file system."""
    best = None
    for source, target, ro in mounts(service):
        target_p, path_p = PurePosixPath(target), PurePosixPath(path)
        if path_p == target_p or target_p in path_p.parents:
            if best is None or len(target) > len(best[1]):
                best = (source, target, ro)
    assert best is not None, f"{path} is on no volume of the service"
    source, target, ro = best
    assert source in (compose.get("volumes") or {}), f"{path} is on {source}, not a named volume"
    return source, str(PurePosixPath(path).relative_to(target)), ro


def command_flags(service: dict) -> dict[str, str]:
    cmd = service.get("command") or []
    if isinstance(cmd, str):
        cmd = cmd.split()
    return dict(arg.removeprefix("--").split("=", 1) for arg in cmd if arg.startswith("--") and "=" in arg)


def init_jobs(services: dict) -> set[str]:
    """Services others wait for with ``service_completed_successfully``: one-shot jobs."""
    return {name for svc in services.values() for name, dep in (svc.get("depends_on") or {}).items()
            if isinstance(dep, dict) and dep.get("condition") == "service_completed_successfully"}


def needed_connection_ids() -> set[str]:
    """Every connection id that the hooks, operators and DAGs use by default."""
    ids = set()
    for path in [*(ROOT / "plugins" / "tfmlops_airflow").rglob("*.py"), *(ROOT / "dags").glob("*.py")]:
        text = path.read_text()
        ids |= set(re.findall(r"conn_id: str = \"(\w+)\"", text))
        ids |= set(re.findall(r"default_conn_name = \"(\w+)\"", text))
        ids |= set(re.findall(r"aws_conn_id=\"(\w+)\"", text))
        for targets in re.findall(r"\"targets\": Param\(\[([^\]]*)\]", text):
            ids |= set(re.findall(r"\"(\w+)\"", targets))
    return ids


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;#]+)", line.strip())
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


# ----------------------------------------------------------------------------------- validation
def test_compose_files_validate_against_the_compose_spec():
    exe = shutil.which("check-jsonschema") or shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema==0.39.0)")
    out = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE), str(SOCKET_OVERRIDE),
                          str(STAND_INS_OVERRIDE)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, SOCKET_OVERRIDE], [COMPOSE, STAND_INS_OVERRIDE]],
                         ids=["stack", "with-docker-socket", "with-stand-ins"])
def test_docker_compose_config(files, tmp_path):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed "
                    "(Debian: apt-get install -y docker-compose); no engine is needed for `config -q`")
    argv = [*cli, "--env-file", str(ENV_EXAMPLE), "--project-directory", str(ROOT)]
    for f in files:
        argv += ["-f", str(f)]
    out = subprocess.run([*argv, "config", "-q"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_required_variables_are_in_env_example_and_secrets_are_not_committed():
    raw = COMPOSE.read_text()
    required = set(re.findall(r"(?<!\$)\$\{(\w+):?\?", raw))
    env = env_example()
    missing = sorted(v for v in required if v not in env)
    assert not missing, f"required variables of docker-compose.yaml not set in .env.example: {missing}"
    documented = ENV_EXAMPLE.read_text()
    undocumented = sorted(v for v in set(re.findall(r"(?<!\$)\$\{(\w+)", raw)) if v not in documented)
    assert not undocumented, f"variables of docker-compose.yaml not in .env.example: {undocumented}"
    with pytest.raises(KeyError):  # without a .env, the secrets are refused, never defaulted
        load_compose(env={})
    secret = re.compile(r"PASSWORD|SECRET|FERNET")
    for key, value in env.items():
        if secret.search(key):
            assert value == "" or value.startswith("change-me"), f".env.example sets a real-looking {key}"
    for line in raw.splitlines():  # no literal credential in the compose file
        m = re.match(r"\s*(\w*(?:PASSWORD|SECRET|SECRET_KEY|SECRET_ACCESS_KEY)):\s*(.+)$", line)
        if m:
            assert "${" in m.group(2), line
    assert all(outside_the_image_context(f) for f in (".env", ".env.production", "docker/.env"))
    gitignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT).returncode == 0
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", ".env"], cwd=ROOT,
                             capture_output=True).returncode == 0
    assert not tracked, ".env is committed"
    if not gitignored:
        pytest.skip("add `.env` to .gitignore (not part of this change)")


# ----------------------------------------------------------------------------------- structure
def test_the_stack_has_every_component(services):
    expected = {"postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler",
                "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "mlflow", "minio", "minio-init",
                "serving-init"}
    assert expected <= set(services)
    assert [s for s in services if s.startswith("tf-serving-")], "no TensorFlow Serving service"
    assert environment(services["airflow-worker"])["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_every_service_has_a_healthcheck_or_is_a_one_shot_job(services):
    jobs = init_jobs(services)
    assert {"airflow-init", "serving-init", "minio-init"} <= jobs
    for name, svc in services.items():
        if name in jobs:
            assert svc.get("restart") == "no" and not svc.get("ports"), name
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert svc.get("restart") == "always", name


def test_depends_on_always_uses_conditions(services):
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on must use the long syntax with conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert spec.get("condition") in ("service_healthy", "service_completed_successfully"), (name, dep)
            if spec["condition"] == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy: it has no check"
    for name in AIRFLOW_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == deps["redis"]["condition"] == "service_healthy", name
        if name != "airflow-init":
            assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
    for name in (s for s in services if s.startswith("tf-serving-")):
        assert services[name]["depends_on"]["serving-init"]["condition"] == "service_completed_successfully"


def test_images_are_pinned(services):
    for name, svc in services.items():
        image = svc.get("image")
        assert image, f"{name} has no image name"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "/" not in tag, f"{name}: image {image!r} is not pinned"
    serving_images = {svc["image"] for n, svc in services.items() if n.startswith("tf-serving-")}
    assert len(serving_images) == 1 and next(iter(serving_images)).startswith("tensorflow/serving:")
    assert env_example()["TF_SERVING_IMAGE"] in serving_images
    for dockerfile in (DOCKERFILE, ROOT / "docker" / "mlflow" / "Dockerfile", ROOT / "docker" / "tf-serving-local" /
                       "Dockerfile"):
        for ref in re.findall(r"^(?:FROM|ARG \w+_IMAGE=)\s*(\S+)", dockerfile.read_text(), re.M):
            if not ref.startswith("$"):
                assert re.search(r":[\w.\-]+$", ref) and not ref.endswith(":latest"), f"{dockerfile.name}: {ref}"


def test_images_match_the_project_pins():
    pins = requirement_pins()
    text = DOCKERFILE.read_text()
    assert f"apache/airflow:{pins['apache-airflow']}-python3.11" in text
    mlflow = (ROOT / "docker" / "mlflow" / "Dockerfile").read_text()
    assert f"ghcr.io/mlflow/mlflow:v{pins['mlflow']}" in mlflow
    assert f"boto3=={pins['boto3']}" in mlflow and "psycopg2-binary==" in mlflow


# ----------------------------------------------------------------------------------- Airflow
def test_airflow_services_share_tf_keras_postgres_and_connections(services):
    needed = needed_connection_ids()
    assert {"mlflow_default", "tf_serving_default", "aws_default"} <= needed
    for name in AIRFLOW_SERVICES:
        env = environment(services[name])
        assert env.get("TF_USE_LEGACY_KERAS") == "1", f"{name}: TF_USE_LEGACY_KERAS"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert "@postgres:5432/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://") and "@redis:6379" in \
            env["AIRFLOW__CELERY__BROKER_URL"], name
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"], f"{name}: components must share the JWT secret"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        # users and roles: FAB (the simple auth manager is for development), no self-approval by default
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("fab_auth_manager.FabAuthManager"), name
        assert env["AIRFLOW__TFMLOPS__ALLOW_SELF_APPROVAL"] == "false", name
        for conn_id in needed:
            assert f"AIRFLOW_CONN_{conn_id.upper()}" in env, f"{name}: no connection {conn_id}"
        assert services[name]["user"].startswith("0:") if name == "airflow-init" else \
            not services[name]["user"].startswith("0:"), f"{name}: user {services[name]['user']}"
    assert "TF_USE_LEGACY_KERAS=1" in DOCKERFILE.read_text()


def test_mlflow_and_s3_connections_point_at_the_stack(services, monkeypatch):
    from tfmlops_airflow.hooks import MLflowHook

    env = environment(services["airflow-worker"])
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", env["AIRFLOW_CONN_MLFLOW_DEFAULT"])
    uri = MLflowHook().tracking_uri
    flags = command_flags(services["mlflow"])
    assert uri == f"http://mlflow:{flags['port']}"
    backend = flags["backend-store-uri"]
    assert backend.startswith("postgresql+psycopg2://") and "@postgres:5432/mlflow" in backend
    assert flags["artifacts-destination"].startswith("s3://")
    mlflow_env = environment(services["mlflow"])
    assert mlflow_env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "mlflow:5000" in mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert mlflow_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"  # the job runner's idle CPU: devservers.py
    bucket = flags["artifacts-destination"].removeprefix("s3://").split("/")[0]
    assert bucket in environment(services["minio-init"])["MINIO_BUCKETS"].split()

    aws = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert aws["conn_type"] == "aws" and aws["login"] and aws["password"]
    assert aws["extra"]["endpoint_url"] == "http://minio:9000"


def test_rollout_pool_is_created_by_the_init_job(services):
    from tfmlops_airflow.params import ROLLOUT_POOL

    init = services["airflow-init"]
    script = init["entrypoint"][-1]
    assert script.startswith("/opt/tfmlops/docker/")
    text = (ROOT / "docker" / PurePosixPath(script).relative_to("/opt/tfmlops/docker")).read_text()
    assert re.search(rf"airflow pools set --include-deferred {ROLLOUT_POOL} 1 ", text)  # an approval holds it
    assert "airflow db migrate" in text
    assert "COPY --chown=airflow:0 docker /opt/tfmlops/docker" in DOCKERFILE.read_text()


# ----------------------------------------------------------------------------------- serving
def serving_connections(services) -> dict[str, str]:
    """The TF Serving replicas' connections (the router's, tf_serving_router, is not a replica)."""
    env = environment(services["airflow-worker"])
    return {k.removeprefix("AIRFLOW_CONN_").lower(): v for k, v in env.items()
            if k.startswith(f"AIRFLOW_CONN_{TF_SERVING_PREFIX.upper()}")
            and k != "AIRFLOW_CONN_TF_SERVING_ROUTER"}


def test_every_serving_replica_has_a_connection(services):
    hosts = set()
    for uri in serving_connections(services).values():
        hosts.add(uri.split("://", 1)[1].split(":", 1)[0].split("/", 1)[0])
    replicas = {n for n in services if n.startswith("tf-serving-")}
    assert hosts == replicas
    assert set(environment(services["serving-init"])["TF_SERVING_REPLICAS"].split()) == replicas


@pytest.mark.parametrize("worker", ["airflow-worker", "airflow-scheduler"])
def test_the_config_file_the_rollout_writes_is_the_one_tf_serving_reads(services, compose, worker, monkeypatch):
    """Each tf_serving_* connection, read through TFServingHook as the operators do: its
    models_root and model_config_file (worker side) must be the same volume files that its TF
    Serving replica reads at server_models_root and --model_config_file, and its ports the
    replica's."""
    from tfmlops_airflow.hooks import TFServingHook

    for conn_id, uri in serving_connections(services).items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", uri)
        hook = TFServingHook(conn_id)
        conn = hook.endpoint()
        server = services[conn.host]
        flags = command_flags(server)
        assert int(conn.rest_port) == int(flags["rest_api_port"]) and int(conn.grpc_port) == int(flags["port"])

        worker_svc = services[worker]
        models_vol, models_sub, models_ro = volume_of(worker_svc, conn.models_root, compose)
        server_vol, server_sub, _ = volume_of(server, conn.server_models_root, compose)
        assert (models_vol, models_sub) == (server_vol, server_sub), conn_id
        assert not models_ro, f"{worker} must be able to publish versions into {conn.models_root}"
        assert conn.server_models_root != conn.models_root  # the base paths written are the server's

        written = volume_of(worker_svc, conn.model_config_file, compose)
        read = volume_of(server, flags["model_config_file"], compose)
        assert written[:2] == read[:2], f"{conn_id}: writes {conn.model_config_file}, server reads " \
                                        f"{flags['model_config_file']}"
        assert not written[2], f"{worker} must be able to rewrite {conn.model_config_file}"
        assert PurePosixPath(written[1]).parts[0] == conn.host  # one config file per replica
        assert int(flags["model_config_file_poll_wait_seconds"]) > 0


def test_serving_init_seeds_the_config_files_the_replicas_read(services, compose):
    init = services["serving-init"]
    env = environment(init)
    assert init["user"].startswith("0:")
    for name in env["TF_SERVING_REPLICAS"].split():
        seeded = f"{env['SERVING_CONFIG_ROOT']}/{name}/models.config"
        read = command_flags(services[name])["model_config_file"]
        assert volume_of(init, seeded, compose)[:2] == volume_of(services[name], read, compose)[:2]
    script = (ROOT / "docker" / "serving" / "init.sh").read_text()
    assert "model_config_list {" in script and "chown -R" in script


def test_seeded_config_is_a_valid_empty_model_server_config(tmp_path):
    env = {**os.environ, "AIRFLOW_UID": str(os.getuid()), "SERVING_MODELS_ROOT": str(tmp_path / "models"),
           "SERVING_CONFIG_ROOT": str(tmp_path / "config"), "TF_SERVING_REPLICAS": "tf-serving-0 tf-serving-1"}
    out = subprocess.run(["bash", str(ROOT / "docker" / "serving" / "init.sh")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    from tfmlops.serving.config import load_config

    for name in ("tf-serving-0", "tf-serving-1"):
        cfg = load_config(str(tmp_path / "config" / name / "models.config"))
        assert len(cfg.model_config_list.config) == 0
    (tmp_path / "config" / "tf-serving-0" / "models.config").write_text(
        'model_config_list {\n  config {\n    name: "m"\n    base_path: "/models/m"\n  }\n}\n')
    assert subprocess.run(["bash", str(ROOT / "docker" / "serving" / "init.sh")], env=env, timeout=60).returncode == 0
    kept = load_config(str(tmp_path / "config" / "tf-serving-0" / "models.config"))
    assert [c.name for c in kept.model_config_list.config] == ["m"], "the init job must keep the serving state"


# ----------------------------------------------------------------------------------- image
def test_dockerfile_installs_the_pinned_project():
    text = DOCKERFILE.read_text()
    assert re.search(r"-r /opt/tfmlops/requirements\.txt -c /opt/tfmlops/requirements-lock\.txt", text)
    assert re.search(r"--no-deps -r /opt/tfmlops/requirements-nodeps\.txt", text)
    assert re.search(r"pip install --no-cache-dir --no-deps /opt/tfmlops/src", text)
    assert "npm ci --prefix /opt/tfmlops/web" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] == "airflow", "the image must end as the non-root airflow user"
    for copied in re.findall(r"^COPY (?!--from)(?:--chown=\S+ )?(.+) \S+$", text, re.M):
        for src in copied.split():
            if not src.startswith("--"):
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
                assert not outside_the_image_context(src), f".dockerignore leaves out {src}: it is copied"
    # what the image does not hold stays out of its context, and so out of its inputs hash: editing it
    # neither rebuilds the image nor misses its image-cache archive
    for other in ("web/node_modules/x/index.js", ".venv/bin/python", "tests/conftest.py", "var/docker/docker.pid",
                  ".ruff_cache/CACHEDIR.TAG", "README.md", "scripts/stack.py", "Makefile", ".git/HEAD"):
        assert outside_the_image_context(other), other


def test_docker_socket_is_optional(services):
    for name, svc in services.items():
        assert not any("docker.sock" in src for src, _, _ in mounts(svc)), f"{name} mounts the docker socket"
    override = load_compose(SOCKET_OVERRIDE)
    worker = override["services"]["airflow-worker"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in worker["volumes"]
    assert worker["environment"]["DOCKER_HOST"] == "unix:///var/run/docker.sock"


# ----------------------------------------------------------------------------------- secrets
def good_secrets() -> dict[str, str]:
    """The .env.example values with every change-me secret replaced, as a user's .env would be."""
    import secrets as pysecrets

    from cryptography.fernet import Fernet

    env = {k: (pysecrets.token_urlsafe(16) if v.startswith("change-me") else v) for k, v in env_example().items()}
    for key in ("AIRFLOW_FERNET_KEY", "MLFLOW_WEBHOOK_FERNET_KEY"):
        env[key] = Fernet.generate_key().decode()
    return env


def run_config_check(env: dict[str, str], **override: str) -> subprocess.CompletedProcess:
    """docker/check-config.sh with the environment compose gives the config-check service
    (``override``: values compose itself would refuse, e.g. an empty required one)."""
    check = load_compose(env=env)["services"]["config-check"]
    return subprocess.run(["sh", str(ROOT / "docker" / "check-config.sh")], env={**environment(check), **override},
                          capture_output=True, text=True, timeout=60)


def test_every_service_waits_for_the_config_check(services):
    """Nothing starts before config-check has passed: each service depends on it, directly or
    through a service that does."""
    def waits(name: str, seen=()) -> bool:
        deps = services[name].get("depends_on") or {}
        return "config-check" in deps or any(waits(d, (*seen, name)) for d in deps if d not in seen)

    assert {n for n in services if n != "config-check" and not waits(n)} == set()
    assert services["config-check"]["volumes"] == ["./docker/check-config.sh:/check-config.sh:ro"]


def test_an_unedited_env_example_is_refused_naming_each_secret():
    out = run_config_check(env_example())
    assert out.returncode == 1
    for name in ("AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_FERNET_KEY", "MLFLOW_ADMIN_PASSWORD", "MINIO_ROOT_PASSWORD",
                 "S3_SECRET_ACCESS_KEY", "REDIS_PASSWORD", "MLFLOW_WEBHOOK_SECRET", "MLFLOW_WEBHOOK_FERNET_KEY"):
        assert f"  {name} is still the placeholder of .env.example" in out.stderr, out.stderr
    assert run_config_check(good_secrets()).returncode == 0


@pytest.mark.parametrize("change, message", [
    ({"AIRFLOW_FERNET_KEY": "not-a-fernet-key"}, "AIRFLOW_FERNET_KEY is not a Fernet key"),
    ({"MLFLOW_WEBHOOK_FERNET_KEY": "not-a-fernet-key"}, "MLFLOW_WEBHOOK_FERNET_KEY is not a Fernet key"),
    ({"MLFLOW_WEBHOOK_SECRET": ""}, "MLFLOW_WEBHOOK_SECRET is empty"),
    ({"REDIS_PASSWORD": ""}, "REDIS_PASSWORD is empty"),
    ({"MLFLOW_FLASK_SECRET_KEY": "change-me-too"}, "MLFLOW_FLASK_SECRET_KEY is still the placeholder"),
    ({"S3_ACCESS_KEY_ID": "tfmlops"}, "S3_ACCESS_KEY_ID is MINIO_ROOT_USER"),
])
def test_each_bad_setting_is_refused_by_name(change, message):
    out = run_config_check(good_secrets(), **change)
    assert out.returncode == 1 and message in out.stderr, out.stderr


def test_compose_refuses_an_empty_fernet_key(tmp_path):
    env = {**good_secrets(), "AIRFLOW_FERNET_KEY": ""}
    with pytest.raises(KeyError, match="AIRFLOW_FERNET_KEY"):
        load_compose(env=env)
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    out = subprocess.run([*cli, "--env-file", str(env_file), "--project-directory", str(ROOT), "-f", str(COMPOSE),
                          "config", "-q"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode != 0 and "AIRFLOW_FERNET_KEY" in out.stdout + out.stderr


def test_redis_and_mlflow_require_credentials(services):
    redis = services["redis"]
    assert redis["command"][:2] == ["redis-server", "--requirepass"] and redis["command"][2]
    broker = environment(services["airflow-worker"])["AIRFLOW__CELERY__BROKER_URL"]
    assert broker == f"redis://:{redis['command'][2]}@redis:6379/0"
    mlflow, worker = services["mlflow"], environment(services["airflow-worker"])
    assert "--app-name=basic-auth" in mlflow["command"]
    assert environment(mlflow)["MLFLOW_AUTH_ADMIN_PASSWORD"] == worker["MLFLOW_TRACKING_PASSWORD"]
    ini = (ROOT / "docker" / "mlflow" / "basic_auth.ini").read_text()
    assert f"admin_username = {worker['MLFLOW_TRACKING_USERNAME'].split()[0]}" in ini
    assert worker["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    minio_init = environment(services["minio-init"])
    assert minio_init["APP_ACCESS_KEY_ID"] == worker_s3_login(services) != environment(services["minio"])[
        "MINIO_ROOT_USER"]


def worker_s3_login(services) -> str:
    return json.loads(environment(services["airflow-worker"])["AIRFLOW_CONN_AWS_DEFAULT"])["login"]


# ----------------------------------------------------------------------------------- metrics
def prometheus_config() -> dict:
    return yaml.safe_load((ROOT / "docker" / "prometheus" / "prometheus.yml").read_text())


def mounted_file(service: dict, target: str) -> tuple[Path, bool]:
    """The project file bind-mounted at ``target`` in ``service`` and whether it is read-only."""
    for source, mount_target, ro in mounts(service):
        if mount_target == target:
            assert source.startswith("./"), f"{target} is not a file of the project"
            return ROOT / source, ro
    raise AssertionError(f"nothing is mounted at {target}")


def test_every_replica_exports_metrics_where_prometheus_scrapes_them(services):
    from tfmlops.serving.config import load_monitoring_config

    replicas = sorted(n for n in services if n.startswith("tf-serving-"))
    scrape = {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}
    job = scrape["tf-serving"]
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    expected = set()
    for name in replicas:
        flags = command_flags(services[name])
        config_file, read_only = mounted_file(services[name], flags["monitoring_config_file"])
        assert read_only, f"{name}: the monitoring config must be mounted read-only"
        monitoring = load_monitoring_config(str(config_file))
        assert monitoring.prometheus_config.enable, f"{name}: {config_file.name} does not enable Prometheus"
        assert monitoring.prometheus_config.path == job["metrics_path"], name
        expected.add(f"{name}:{flags['rest_api_port']}")  # metrics are on the REST port
    assert targets == expected


def test_prometheus_service_is_pinned_loopback_and_persistent(services, compose):
    prom = services["prometheus"]
    assert prom["image"].startswith("prom/prometheus:v")
    flags = command_flags(prom)
    config, ro = mounted_file(prom, flags["config.file"])
    assert ro and config == ROOT / "docker" / "prometheus" / "prometheus.yml"
    for rule_file in prometheus_config()["rule_files"]:  # relative to the config file, as Prometheus reads it
        target = str(PurePosixPath(flags["config.file"]).parent / rule_file)
        source, ro = mounted_file(prom, target)
        assert ro and source.exists(), target
    assert volume_of(prom, flags["storage.tsdb.path"], compose)[1] == "."
    assert prom["ports"] == [f"127.0.0.1:{env_example()['PROMETHEUS_PORT']}:9090"]
    assert flags["web.listen-address"].endswith(":9090")
    conn = environment(services["airflow-worker"])["AIRFLOW_CONN_PROMETHEUS_DEFAULT"]
    assert conn == "http://prometheus:9090"


def test_published_ports_bind_loopback_only(services):
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name} publishes {port!r}"


def test_router_routes_to_both_replica_groups_and_is_generated(services):
    """docker/router/haproxy.cfg is what RouterConfig renders for the compose replicas (regenerate it
    with the call below when the router changes); the router's admin socket is shared with the
    Airflow workers, whose router connection names the replicas' connections as its groups."""
    from tfmlops.deploy.router import Replica, RouterConfig

    expected = RouterConfig([Replica("tf_serving_default", "stable", "tf-serving-0", 8501, 8500),
                             Replica("tf_serving_replica_1", "canary", "tf-serving-1", 8501, 8500)],
                            rest_port=8501, grpc_port=8500, metrics_port=8405,
                            admin_socket="/var/run/haproxy/admin.sock", bind="0.0.0.0",
                            nameserver="127.0.0.11:53", mirror_rate=0.1,
                            mirror_sink="http://mirror-sink:8650/v1/mirror",
                            mirror_lua="/usr/local/etc/haproxy/mirror.lua").render()
    text = (ROOT / "docker" / "router" / "haproxy.cfg").read_text()
    assert text.rstrip().endswith(expected.rstrip())
    router = services["router"]
    assert router["image"].startswith("haproxy:") and router["image"] == env_example()["ROUTER_IMAGE"]
    assert any(v.startswith("router-run:/var/run/haproxy") for v in router["volumes"])
    # the request mirror: mirror.lua from the package, the sink running the package's module
    assert "./include/tfmlops/deploy/mirror.lua:/usr/local/etc/haproxy/mirror.lua:ro" in router["volumes"]
    sink = services["mirror-sink"]
    assert sink["image"] == services["airflow-worker"]["image"]
    assert sink["command"][:3] == ["python", "-m", "tfmlops.deploy.mirror_sink"]
    assert "8650" in sink["command"] and any(v.startswith("airflow-var:") for v in sink["volumes"])
    worker = services["airflow-worker"]
    assert "router-run:/var/run/haproxy" in [v.split(" ")[0] for v in worker["volumes"]]
    conn = json.loads(environment(worker)["AIRFLOW_CONN_TF_SERVING_ROUTER"])
    assert conn["extra"]["admin_socket"] == "/var/run/haproxy/admin.sock"
    assert (conn["extra"]["stable"], conn["extra"]["canary"]) == (["tf_serving_default"], ["tf_serving_replica_1"])
    assert conn["extra"]["mirror_sink"] == "http://mirror-sink:8650"  # shadow releases read its records
    # gray's distribution check and A/B tests read the logs the sink writes
    assert conn["extra"]["mirror_log_prefix"] == sink["command"][sink["command"].index("--log_prefix") + 1]
    for conn_id, host in (("TF_SERVING_DEFAULT", "tf-serving-0"), ("TF_SERVING_REPLICA_1", "tf-serving-1")):
        assert f"//{host}:8501/" in environment(worker)[f"AIRFLOW_CONN_{conn_id}"]
    scrape = {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}
    assert scrape["tf-serving-router"]["static_configs"][0]["targets"] == ["router:8405"]


def test_the_stand_ins_override_swaps_images_and_build_arguments_only(compose):
    """docker/compose.stand-ins.yaml changes nothing but images and build arguments; each image it
    names is one scripts/docker_engine.py builds, each build argument names a stand-in, and the
    project's Dockerfiles keep the official images as their defaults."""
    import docker_engine as de

    override = yaml.safe_load(STAND_INS_OVERRIDE.read_text())
    built = {s.tag for s in de.STAND_INS.values()}
    for name, svc in override["services"].items():
        assert name in compose["services"], name
        assert set(svc) <= {"image", "build"}, (name, set(svc))
        if "image" in svc:
            assert svc["image"] in built, (name, svc["image"])
        if "build" in svc:
            base = compose["services"][name]["build"]
            assert svc["build"].get("dockerfile", "Dockerfile") == base.get("dockerfile", "Dockerfile"), name
            assert set(svc["build"]) <= {"context", "dockerfile", "args"}, name
            assert all(v in built for v in svc["build"]["args"].values()), (name, svc["build"]["args"])
    built_by_compose = {n for n, svc in compose["services"].items() if "build" in svc}
    assert built_by_compose <= {n for n, svc in override["services"].items() if "build" in svc}
    hub = {"config-check", "postgres", "redis", "minio", "minio-init", "tf-serving-0", "tf-serving-1", "router",
           "prometheus"}
    assert hub <= set(override["services"]), hub - set(override["services"])
    assert "ARG AIRFLOW_IMAGE=apache/airflow:" in DOCKERFILE.read_text()
    assert "ARG MLFLOW_BASE_IMAGE=ghcr.io/mlflow/mlflow:" in (ROOT / "docker/mlflow/Dockerfile").read_text()
    for spec in de.STAND_INS.values():  # each says it is a stand-in, and its context holds what it copies
        text = (ROOT / spec.dockerfile).read_text()
        assert "STAND-IN" in text, spec.dockerfile
        for copied in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
            for src in copied.split():
                assert src in spec.files() or any(f.startswith(src + "/") for f in spec.files()), (spec.dockerfile, src)
