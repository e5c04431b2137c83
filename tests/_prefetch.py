"""The production stack's images prepared in the background while the rest of the suite runs.

Getting every image of the production stack into the isolated engine takes 1.5 minutes when the
image cache holds them all (loaded from its archives) and about 16 when they are built, mostly
waiting on the package mirrors, the disk and ``docker load``; the stack test comes about 15
minutes into ``make test``. When that test is
selected, :func:`start` (from ``pytest_collection_finish``) runs ``scripts/prod_stack.py images``
as a subprocess (output in ``var/test-output/prod-stack-images.log``); :func:`wait` — called by
the ``docker_engine`` fixture before it touches an engine, so nothing else uses the engines
meanwhile — waits for it and returns its report: the phases' times and which engines it started
(they are stopped by whoever would have stopped them had they started them). A failed prefetch
only costs its time: the stack test builds what is missing itself and fails with the real error.
``TFMLOPS_PREFETCH_STACK=0`` turns it off.

With pytest-xdist (``make test`` runs two workers) the prefetch is started once, by the controller
(``start`` from ``pytest_xdist_node_collection_finished``), and the worker that runs the stack tests
waits on it through ``STATE`` (its pid and which engines answered before), a file both can read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "var" / "test-output"
REPORT = OUT / "prod-stack-images.json"
LOG = OUT / "prod-stack-images.log"
STATE = OUT / "prod-stack-images.state.json"

_state: dict = {"proc": None, "report": None, "waited_s": None, "running_before": {}}


def _de():
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    import docker_engine as de

    return de


def start(nodeids: list[str]) -> bool:
    """Start the prefetch when the production stack test is among ``nodeids`` (and root can run the
    engine); returns whether it started."""
    if os.environ.get("TFMLOPS_PREFETCH_STACK", "1") == "0" or _state["proc"] is not None:
        return False
    if not any(n.startswith("tests/production/") for n in nodeids):
        return False
    de = _de()
    if de.unavailable_reason():
        return False
    _state["running_before"] = {iso: de._answers(de.engine_dir(isolated=iso)) for iso in (False, True)}
    OUT.mkdir(parents=True, exist_ok=True)
    REPORT.unlink(missing_ok=True)
    with open(LOG, "wb") as log:
        command = [sys.executable, str(ROOT / "scripts" / "prod_stack.py"), "images", "--first-engine",
                   "--report", str(REPORT)]
        _state["proc"] = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
    _state["started_at"] = time.monotonic()
    STATE.write_text(json.dumps({"pid": _state["proc"].pid, "running_before": _state["running_before"]}))
    return True


def _shared() -> dict:
    """In a process that did not start the prefetch (an xdist worker): what the starter recorded."""
    try:
        state = json.loads(STATE.read_text())
    except (OSError, ValueError):
        return {}
    state["running_before"] = {k == "true": v for k, v in state["running_before"].items()}  # JSON keys are text
    return state


def _running(pid: int) -> bool:
    """Whether the prefetch ``pid`` still runs (a zombie, ended but not yet reaped by its parent, does
    not; nor does another process that got the number since)."""
    try:
        proc = Path(f"/proc/{pid}")
        return (b"prod_stack.py" in (proc / "cmdline").read_bytes()
                and (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z")
    except (OSError, IndexError):
        return False


def forget() -> None:
    """At a test session's start (the controller's, under xdist): a state left by an interrupted
    session is not this session's prefetch."""
    STATE.unlink(missing_ok=True)


def wait() -> dict:
    """The prefetch's report once it has ended (``{}`` when none ran or it failed)."""
    proc = _state["proc"]
    shared = _shared() if proc is None else {}
    if proc is None and not shared:
        return {}
    if _state["report"] is None:
        t0 = time.monotonic()
        if proc is not None:
            rc = proc.wait()
        else:  # started by the xdist controller: its exit status is not ours to read
            while _running(shared["pid"]):
                time.sleep(2)
            rc = None
        _state["waited_s"] = round(time.monotonic() - t0, 1)
        ended = {"waited_s": _state["waited_s"], **({"rc": rc} if rc is not None else {})}
        try:
            _state["report"] = {**json.loads(REPORT.read_text()), **ended}
        except (OSError, ValueError):
            _state["report"] = ended
    return _state["report"]


def started(isolated: bool) -> bool:
    """Whether the prefetch started this engine (it did not answer before): its user stops it."""
    if _state["proc"] is not None:
        return not _state["running_before"].get(isolated, True)
    shared = _shared()
    return bool(shared) and not shared["running_before"].get(isolated, True)


def stop() -> None:
    """At the session's end: a prefetch still running (the stack test was not reached) is ended,
    and an engine it started that still runs is stopped."""
    proc = _state["proc"]
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    de = _de()
    for isolated in (True, False):
        if started(isolated) and de._answers(de.engine_dir(isolated=isolated)):
            de.down(de.engine_dir(isolated=isolated))
    STATE.unlink(missing_ok=True)
