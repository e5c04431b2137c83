"""Where a test run's time went (pytest plugin, loaded by tests/conftest.py).

At the end of the terminal output: each test folder's total (setup + call + teardown of its tests,
the folder's sub-folders included), slowest first, and a total line; the same numbers, the 25
slowest tests and every test's time go to ``var/test-output/test-times.json``. pytest's own
``--durations=25`` (pyproject's addopts) lists the slowest phases above it. A session fixture's
set-up counts for the first test that uses it, so that test looks slow for the servers it starts.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

import pytest

SLOWEST = 25


def folder_of(nodeid: str) -> str:
    """``tests/rollout/test_gray.py::t`` -> ``tests/rollout`` (sub-folders count for their top folder);
    files directly in ``tests/`` -> ``tests/*.py``."""
    parts = nodeid.split("::", 1)[0].split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else f"{parts[0]}/*.py" if len(parts) == 2 else parts[0]


def summarize(durations: dict[str, float]) -> dict:
    folders: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for nodeid, seconds in durations.items():
        folders[folder_of(nodeid)][0] += seconds
        folders[folder_of(nodeid)][1] += 1
    by_time = sorted(durations.items(), key=lambda kv: kv[1], reverse=True)
    return {
        "total_s": round(sum(durations.values()), 1),
        "tests": len(durations),
        "folders": [{"folder": f, "seconds": round(s, 1), "tests": n}
                    for f, (s, n) in sorted(folders.items(), key=lambda kv: kv[1][0], reverse=True)],
        "slowest": [{"test": t, "seconds": round(s, 2)} for t, s in by_time[:SLOWEST]],
        "per_test": {t: round(s, 3) for t, s in by_time},
    }


class TimingPlugin:
    def __init__(self, config):
        self.config = config
        self.started = time.monotonic()
        self.durations: dict[str, float] = defaultdict(float)
        self.workers: dict[str, float] = defaultdict(float)  # xdist worker -> its tests' time

    def pytest_runtest_logreport(self, report):
        node = getattr(report, "node", None)  # set by xdist's controller on its workers' reports
        if node is not None:
            self.workers[node.gateway.id] += report.duration
        # under xdist's --dist loadgroup a node id ends with "@<group>" (tests/conftest.py)
        nodeid = report.nodeid.rsplit("@", 1)[0] if report.nodeid.rfind("@") > report.nodeid.rfind("]") \
            else report.nodeid
        self.durations[nodeid] += report.duration

    @pytest.hookimpl(trylast=True)  # after pytest's --durations list
    def pytest_terminal_summary(self, terminalreporter, exitstatus):
        if not self.durations:  # --collect-only, or nothing selected
            return
        data = summarize(self.durations)
        wall = time.monotonic() - self.started
        width = max(len(f["folder"]) for f in data["folders"]) + 2
        terminalreporter.write_sep("=", "test time per folder (setup + call + teardown)")
        for f in data["folders"]:
            terminalreporter.write_line(f"{f['folder']:<{width}}{f['seconds']:>9.1f} s  ({f['tests']} tests)")
        out = self.config.rootpath / "var" / "test-output" / "test-times.json"
        terminalreporter.write_line(f"{'total':<{width}}{data['total_s']:>9.1f} s  ({data['tests']} tests); "
                                    f"wall {wall:.1f} s; details in {out.relative_to(self.config.rootpath)}")
        if self.workers:
            terminalreporter.write_line("busy per worker: " + ", ".join(
                f"{w} {s:.1f} s" for w, s in sorted(self.workers.items())))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"args": list(self.config.invocation_params.args),
                                   "markexpr": self.config.option.markexpr, "exitstatus": int(exitstatus),
                                   "wall_s": round(wall, 1),
                                   "workers": {w: round(s, 1) for w, s in self.workers.items()}, **data}, indent=1))


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # an xdist worker's reports reach the controller, which sums them
        config.pluginmanager.register(TimingPlugin(config), "tfmlops-test-times")
