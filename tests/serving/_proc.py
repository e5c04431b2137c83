"""Start/stop tf-serving-local as a real subprocess on free loopback ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import contextlib
import threading
import time
from pathlib import Path

from devservers import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin" / "tf-serving-local"


def server_cmd() -> list[str]:
    if BIN.exists():
        return [str(BIN)]
    return [sys.executable, "-m", "tfmlops.serving.model_servers.main"]


class ServerProcess:
    @classmethod
    @contextlib.contextmanager
    def running(cls, args: list[str], rest: bool = True):
        """A ready server for the ``with`` block, stopped (SIGTERM) after it."""
        srv = cls(args, rest)
        try:
            yield srv.wait_ready()
        finally:
            srv.terminate()

    @contextlib.contextmanager
    def client(self, timeout: float = 60):
        """A REST + gRPC client of this server for the ``with`` block."""
        from tfmlops.deploy.client import ServingClient

        with ServingClient("127.0.0.1", self.rest_port, self.grpc_port, timeout=timeout) as c:
            yield c

    def __init__(self, args: list[str], rest: bool = True):
        self.grpc_port = free_port()
        self.rest_port = free_port() if rest else None
        argv = server_cmd() + [f"--port={self.grpc_port}"]
        if rest:
            argv.append(f"--rest_api_port={self.rest_port}")
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
        self.argv = argv + list(args)
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                     text=True, bufsize=1)
        self.lines: list[str] = []
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self):
        for line in self.proc.stdout:
            with self._cv:
                self.lines.append(line.rstrip("\n"))
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    @property
    def log(self) -> str:
        with self._cv:
            return "\n".join(self.lines)

    def wait_for_line(self, needle: str, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                if any(needle in line for line in self.lines):
                    return True
                if self.proc.poll() is not None and not self._reader.is_alive():
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.5))

    def wait_ready(self, timeout: float = 90.0) -> "ServerProcess":
        needle = "Exporting HTTP/REST API at:" if self.rest_port else "Running gRPC ModelServer at"
        if not self.wait_for_line(needle, timeout):
            self.kill()
            raise RuntimeError(f"server did not become ready (rc={self.proc.poll()}):\n{self.log[-5000:]}")
        return self

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def wait_exit(self, timeout: float = 120.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc
