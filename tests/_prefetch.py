"""The production stack's images prepared in the background while the rest of the suite runs.

Building (or loading from the image cache) every image of the production stack and copying them
into the isolated engine takes 10-20 minutes, mostly waiting on the package mirrors, the disk and
``docker load``; the stack test comes about 20 minutes into ``make test``. When that test is
selected, :func:`start` (from ``pytest_collection_finish``) runs ``scripts/prod_stack.py images``
as a subprocess (output in ``var/test-output/prod-stack-images.log``); :func:`wait` — called by
the ``docker_engine`` fixture before it touches an engine, so nothing else uses the engines
meanwhile — waits for it and returns its report: the phases' times and which engines it started
(they are stopped by whoever would have stopped them had they started them). A failed prefetch
only costs its time: the stack test builds what is missing itself and fails with the real error.
``TFMLOPS_PREFETCH_STACK=0`` turns it off.
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
        _state["proc"] = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "prod_stack.py"), "images",
                                           "--report", str(REPORT)], cwd=ROOT, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _state["started_at"] = time.monotonic()
    return True


def wait() -> dict:
    """The prefetch's report once it has ended (``{}`` when none ran or it failed)."""
    proc = _state["proc"]
    if proc is None:
        return {}
    if _state["report"] is None:
        t0 = time.monotonic()
        rc = proc.wait()
        _state["waited_s"] = round(time.monotonic() - t0, 1)
        try:
            _state["report"] = {**json.loads(REPORT.read_text()), "rc": rc, "waited_s": _state["waited_s"]}
        except (OSError, ValueError):
            _state["report"] = {"rc": rc, "waited_s": _state["waited_s"]}
    return _state["report"]


def started(isolated: bool) -> bool:
    """Whether the prefetch started this engine (it did not answer before): its user stops it."""
    return _state["proc"] is not None and not _state["running_before"].get(isolated, True)


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
