"""The server package stands alone: no module under ``tfmlops.serving`` pulls in another part of
``tfmlops``, MLflow or Airflow (checked in a fresh interpreter, one import at a time, and in the
source for imports inside functions, which importing the module does not run)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

SERVING = Path(__file__).resolve().parents[2] / "include" / "tfmlops" / "serving"


def _outside(module: str) -> bool:
    """MLflow, Airflow, or a part of tfmlops other than the package itself (``tfmlops`` is its parent)."""
    top = module.split(".", 1)[0]
    if top in ("mlflow", "airflow"):
        return True
    return top == "tfmlops" and module != "tfmlops" and not (module + ".").startswith("tfmlops.serving.")


# Runs in a fresh interpreter: walks tfmlops.serving, imports every module in turn and reports, per
# module, the tfmlops/mlflow/airflow modules that appeared in sys.modules with its import.
_CHILD = r"""
import importlib, json, pkgutil, sys

def watched():
    return {name for name in sys.modules if name.split(".", 1)[0] in ("tfmlops", "mlflow", "airflow")}

report = {"<startup>": sorted(watched())}
seen = set(report["<startup>"])
import tfmlops.serving as pkg
names = ["tfmlops.serving"] + [m.name for m in pkgutil.walk_packages(pkg.__path__, "tfmlops.serving.")]
for name in names:
    importlib.import_module(name)
    now = watched()
    report[name] = sorted(now - seen)
    seen |= now
print(json.dumps(report))
"""


def test_serving_modules_import_nothing_outside_the_package():
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for expected in ("tfmlops.serving.model_servers.main", "tfmlops.serving.model_servers.server_core",
                     "tfmlops.serving.core.aspired_versions_manager", "tfmlops.serving.sources.s3_cache",
                     "tfmlops.serving.servables.saved_model_bundle"):
        assert expected in report  # the walk found the subpackages
    offending = {module: [m for m in pulled if _outside(m)] for module, pulled in report.items()}
    assert {module: pulled for module, pulled in offending.items() if pulled} == {}


def test_no_import_statement_reaches_outside_the_package():
    offending = []
    for path in sorted(SERVING.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offending += [f"{path.relative_to(SERVING)}:{node.lineno} {n}" for n in names if _outside(n)]
    assert offending == []
