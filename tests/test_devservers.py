"""The embedded stack's process handling (scripts/devservers.py): a killed model server comes back by
itself, and a PID file never makes ``make stop`` signal a process that is not the service's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import devservers


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_killed_model_server_is_restarted_within_seconds(tmp_path):
    rest, grpc = devservers.free_port(), devservers.free_port()
    argv = devservers.serving_argv(tmp_path / "models.config", rest, grpc)
    supervisor, started = devservers.start("tf-serving-local", argv, tmp_path, supervise=True)
    url = f"http://127.0.0.1:{rest}/v1/models/none"
    try:
        assert started
        devservers.wait_http(url, 120, "tf-serving-local", tmp_path, any_status=True)
        (server,) = children(supervisor)
        assert devservers.restarts("tf-serving-local", tmp_path) is None
        os.kill(server, signal.SIGKILL)
        killed_at = time.monotonic()
        devservers.wait_http(url, 120, "tf-serving-local", tmp_path, any_status=True)
        back_after = time.monotonic() - killed_at
        (restarted,) = children(supervisor)
        record = devservers.restarts("tf-serving-local", tmp_path)
        assert restarted != server and record["count"] == 1 and record["last_exit"] == -signal.SIGKILL
        assert back_after < 60, f"the model server took {back_after:.0f} s to come back"
        print(f"model server back {back_after:.1f} s after SIGKILL", file=sys.stderr)
        assert devservers.running_pid("tf-serving-local", tmp_path) == supervisor
    finally:
        assert devservers.stop("tf-serving-local", tmp_path)
    for pid in (supervisor, restarted):
        assert not devservers._alive(pid)


def test_the_mlflow_server_runs_without_mlflows_job_runner(mlflow_server):
    """The session's ``mlflow server`` (started as ``make run`` starts it) has no huey consumers of
    MLflow's job runner among its processes: ~38 s of CPU at each start and ~0.14 of a core idle."""
    port = mlflow_server.rsplit(":", 1)[1]
    listing = subprocess.run(["ps", "-eww", "-o", "pid=,ppid=,args="], capture_output=True, text=True, check=True)
    table = [line.split(None, 2) for line in listing.stdout.splitlines()]
    children: dict[str, list] = {}
    for pid, ppid, args in (row for row in table if len(row) == 3):
        children.setdefault(ppid, []).append((pid, args))
    (server,) = [pid for pid, _, args in (row for row in table if len(row) == 3)
                 if "mlflow server" in args and f"--port {port}" in args]
    tree, todo = [], [server]
    while todo:
        for pid, args in children.get(todo.pop(), []):
            tree.append(args)
            todo.append(pid)
    assert tree and not [args for args in tree if "huey" in args], tree  # uvicorn's worker, no job consumers


def test_a_reused_pid_is_never_signalled(tmp_path):
    """A PID file outlives its process after a crash; the PID may then belong to anything."""
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (tmp_path / "svc.pid").write_text(json.dumps({"pid": other.pid, "start_time": "1", "argv": ["x"]}))
        assert devservers.running_pid("svc", tmp_path) is None
        assert devservers.stop("svc", tmp_path) is False
        assert other.poll() is None and not (tmp_path / "svc.pid").exists()
        (tmp_path / "svc.pid").write_text(str(other.pid))  # an old-style bare PID cannot be verified either
        assert devservers.running_pid("svc", tmp_path) is None and other.poll() is None
        pid, started = devservers.start("svc", ["sleep", "60"], tmp_path)
        assert started and devservers.running_pid("svc", tmp_path) == pid
        assert devservers.stop("svc", tmp_path) and not devservers._alive(pid)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_stack_secrets_are_owner_only(tmp_path):
    """The embedded stack's UI password and JWT secret files: created 0600, and a file an earlier
    version left world-readable is tightened; the secret is made once, then reused."""
    import stack

    fresh = tmp_path / "jwt_secret"
    assert stack.secret_file(fresh, lambda: "s3cret") == "s3cret"
    assert fresh.stat().st_mode & 0o777 == 0o600
    assert stack.secret_file(fresh, lambda: "other") == "s3cret"
    old = tmp_path / "passwords.json"
    old.write_text('{"admin": "pw"}')
    old.chmod(0o644)
    stack.secret_file(old, lambda: "unused")
    assert old.stat().st_mode & 0o777 == 0o600 and old.read_text() == '{"admin": "pw"}'

