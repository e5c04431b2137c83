"""Two rollouts never interleave on an endpoint: an exclusive ``flock`` on
``<model_config_file>.lock`` of every endpoint, held for a rollout's whole run, so DAGs that roll
out and scripts on hosts that share the file wait for each other, whatever pool or executor they
run in."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Callable

from .endpoint import Endpoint
from .errors import RolloutBusy


@contextlib.contextmanager
def endpoints_locked(endpoints: list[Endpoint], timeout_s: float, on_wait: Callable[[str], None] | None = None):
    """Hold ``<model_config_file>.lock`` of every endpoint (sorted, so two holders cannot
    deadlock); waits at most ``timeout_s`` for another rollout to finish, then raises
    :class:`RolloutBusy`. Endpoints without a config file (config kept in memory by this
    process) need no lock."""
    paths = sorted({os.path.abspath(f"{ep.model_config_file}.lock") for ep in endpoints if ep.model_config_file})
    with contextlib.ExitStack() as stack:
        for path in paths:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            handle = stack.enter_context(open(path, "a"))
            deadline, told = time.monotonic() + timeout_s, False
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RolloutBusy(f"another rollout has held {path} for more than {timeout_s:g} s") from None
                    if not told and on_wait is not None:
                        on_wait(f"waiting for another rollout to release {path}")
                        told = True
                    time.sleep(0.2)
            stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)
        yield
