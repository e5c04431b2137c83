"""Run the embedded default's servers as background processes: start, health-wait, stop by PID.

Development tooling, not part of the library: used by ``scripts/stack.py`` (``make run`` /
``make stop``), the test fixtures and the benchmarks. Each
service runs in its own session (process group), so stopping it stops its workers too; its PID
is kept in ``<run_dir>/<name>.pid`` and its output in ``<run_dir>/<name>.log``. Starting a
service whose recorded process is alive reuses it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited child not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): with the PID,
    it identifies one process, so a PID reused after a crash is never mistaken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]


def _record(name: str, run_dir: Path) -> dict | None:
    try:
        record = json.loads((Path(run_dir) / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def running_pid(name: str, run_dir: Path) -> int | None:
    """The PID of the service when the process recorded at its start still runs (same PID *and*
    same start time); None otherwise, e.g. when the PID now belongs to another process."""
    record = _record(name, run_dir)
    if record is None or not _alive(record["pid"]) or _start_time(record["pid"]) != record.get("start_time"):
        return None
    return record["pid"]


def start(name: str, argv: list[str], run_dir: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None, supervise: bool = False) -> tuple[int, bool]:
    """Start ``argv`` in the background unless it already runs; returns ``(pid, started)``. With
    ``supervise``, a supervisor process (:func:`supervise`) runs it and restarts it when it dies."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pid = running_pid(name, run_dir)
    if pid:
        return pid, False
    if supervise:
        (run_dir / f"{name}.restarts").unlink(missing_ok=True)
        argv = [sys.executable, str(Path(__file__).resolve()), "supervise", name, str(run_dir), "--", *argv]
    with open(run_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
    record = {"pid": proc.pid, "start_time": _start_time(proc.pid), "argv": argv}
    (run_dir / f"{name}.pid").write_text(json.dumps(record))
    return proc.pid, True


def stop(name: str, run_dir: Path, timeout: float = 30.0) -> bool:
    """SIGTERM the service's process group, then SIGKILL after ``timeout``. True if it was running.
    A PID file whose process is gone, or whose PID now belongs to another process, is only removed."""
    pid_file = Path(run_dir) / f"{name}.pid"
    pid = running_pid(name, run_dir)
    if pid:
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.2)
        _signal_group(pid, signal.SIGKILL)  # stragglers in the group, if any
        _reap(pid)
        deadline = time.monotonic() + 10  # a SIGKILLed process takes a moment to be gone
        while _group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    pid_file.unlink(missing_ok=True)
    return pid is not None


def _group_alive(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` that are still running (zombies excluded)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def restarts(name: str, run_dir: Path) -> dict | None:
    """A supervised service's restart record: ``count``, ``last_exit``, ``last_restart`` (epoch s)."""
    try:
        return json.loads((Path(run_dir) / f"{name}.restarts").read_text())
    except (OSError, ValueError):
        return None


def supervise(name: str, run_dir: Path, argv: list[str], max_backoff_s: float = 30.0) -> int:
    """Run ``argv`` and start it again whenever it exits (back-off 1 s, doubling up to
    ``max_backoff_s``; reset after a minute of uptime), recording each restart in
    ``<run_dir>/<name>.restarts``. SIGTERM/SIGINT stop the child and the supervisor."""
    stopping = False
    child: subprocess.Popen | None = None

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    backoff, count = 1.0, 0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(argv)
        code = child.wait()
        if stopping:
            return 0
        crashed_soon = count and time.monotonic() - started <= 60
        backoff = min(backoff * 2, max_backoff_s) if crashed_soon else 1.0
        count += 1
        print(f"[supervisor] {name} exited with {code}; restart {count} in {backoff:.0f} s", flush=True)
        record = {"count": count, "last_exit": code, "last_restart": time.time() + backoff}
        (Path(run_dir) / f"{name}.restarts").write_text(json.dumps(record))
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        if stopping:
            return 0


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_http(url: str, timeout: float, name: str = "", run_dir: Path | None = None,
              any_status: bool = False) -> None:
    """Wait until ``url`` answers HTTP 200 (any HTTP answer with ``any_status``); fail early,
    with the log's tail, if the service died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError:
            if any_status:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if name and run_dir and not running_pid(name, run_dir):
            raise RuntimeError(f"{name} exited before {url} answered:\n{log_tail(name, run_dir)}")
        time.sleep(0.5)
    raise TimeoutError(f"{name or url} did not answer within {timeout:.0f} s\n"
                       f"{log_tail(name, run_dir) if name and run_dir else ''}")


def wait_for(check, timeout: float, what: str, interval: float = 0.25):
    """Poll ``check()`` until it returns something truthy; that value, or TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not within {timeout:.0f} s")


def log_tail(name: str, run_dir: Path, lines: int = 30) -> str:
    path = Path(run_dir) / f"{name}.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def mlflow_server_argv(root: Path, port: int, backend_store_uri: str | None = None) -> list[str]:
    """A real MLflow tracking + registry server: SQLite backend under ``root`` (or
    ``backend_store_uri``, e.g. PostgreSQL), local artifact store served by it."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]


# MLflow 3's job runner (huey consumers for its GenAI evaluation and trace-rollup jobs, which this
# project does not use) costs ~38 s of CPU at each server's start and ~0.14 of a core while idle
# (measured on this machine: 49 s and 4.1 s per idle 30 s with it, 11 s and 0.04 s without)
MLFLOW_WITHOUT_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def mlflow_server_env(encryption_key: str | None = None, cache_ttl_s: int = 5) -> dict[str, str]:
    """The environment of the project's ``mlflow server``: without MLflow's job runner (above); with
    ``encryption_key`` (a Fernet key), what it needs to deliver registry webhooks to a receiver on
    this machine too: MLflow refuses private addresses and plain http unless told (a single-host
    deployment's deviation, in the README), keeps webhook secrets encrypted with that key (without
    one it makes a new key per process and cannot read them after a restart), and caches its
    webhook list (60 s by default; shorter here so a new webhook takes effect quickly)."""
    if encryption_key is None:
        return dict(MLFLOW_WITHOUT_JOBS)
    return {**MLFLOW_WITHOUT_JOBS, "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": encryption_key,
            "MLFLOW_WEBHOOK_CACHE_TTL": str(cache_ttl_s)}


def prometheus_config(path: Path, targets: list[str], metrics_path: str, scrape_interval: str = "15s",
                      rule_files: tuple = ()) -> Path:
    """A Prometheus config scraping ``targets`` (``host:port``) at ``metrics_path`` as the job
    ``tf-serving`` (the production stack's job name, which the alert rules select)."""
    config = {"global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
              "rule_files": [str(Path(f).resolve()) for f in rule_files],
              "scrape_configs": [{"job_name": "tf-serving", "metrics_path": metrics_path,
                                  "static_configs": [{"targets": list(targets)}]}]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def prometheus_binary() -> str | None:
    """Debian's ``prometheus`` (package ``prometheus``), or None when it is not installed."""
    return shutil.which("prometheus")


def prometheus_argv(config_file: Path, data_dir: Path, port: int) -> list[str] | None:
    """Prometheus on 127.0.0.1:``port``, its data under ``data_dir``; None when the binary is not
    installed."""
    exe = prometheus_binary()
    if exe is None:
        return None
    return [exe, f"--config.file={Path(config_file).resolve()}", f"--storage.tsdb.path={Path(data_dir).resolve()}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=7d"]


def serving_argv(config_file: Path, rest_port: int, grpc_port: int, poll_s: int = 1) -> list[str]:
    """The TF Serving-compatible local server on a model config file (created empty if missing).
    Labels are allowed on versions not loaded yet: after a restart the config file still holds the
    rollouts' labels (``stable``), and TF Serving applies labels before loading, so without the
    flag it refuses to start on that file."""
    config_file = Path(config_file).resolve()
    if not config_file.exists():
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text("model_config_list {\n}\n")
    return [str(BIN / "tf-serving-local"), f"--port={grpc_port}", f"--rest_api_port={rest_port}",
            f"--model_config_file={config_file}", f"--model_config_file_poll_wait_seconds={poll_s}",
            f"--file_system_poll_wait_seconds={poll_s}", "--allow_version_labels_for_unavailable_models"]


if __name__ == "__main__":  # python devservers.py supervise NAME RUN_DIR -- ARGV...
    if len(sys.argv) < 5 or sys.argv[1] != "supervise" or sys.argv[4] != "--":
        sys.exit("usage: devservers.py supervise NAME RUN_DIR -- ARGV...")
    sys.exit(supervise(sys.argv[2], Path(sys.argv[3]), sys.argv[5:]))
