"""The layering the tree promises, checked in fresh interpreters (sys.modules shows what importing
really pulls in): the core library never imports Airflow; the deployment package never imports
MLflow or Airflow; operators reach the core library only through the steps layer; and Airflow's
plugin loader does not execute the provider package's files as top-level modules."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules_of(package: str) -> list[str]:
    """Every module of a package under include/, by its files."""
    root = ROOT / "include"
    return sorted(".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
                  for path in (root / Path(*package.split("."))).rglob("*.py"))


def imported_after(modules: list[str], watched: tuple[str, ...]) -> dict[str, list[str]]:
    """For each module, imported alone in a fresh interpreter: which watched top-level packages it pulled in."""
    code = ("import importlib, json, sys\n"
            "mod, watched = sys.argv[1], sys.argv[2].split(',')\n"
            "importlib.import_module(mod)\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(watched))))")
    out = {}
    for module in modules:
        run = subprocess.run([sys.executable, "-c", code, module, ",".join(watched)], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert run.returncode == 0, f"{module}: {run.stderr[-2000:]}"
        out[module] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


def test_deploy_imports_neither_mlflow_nor_airflow():
    found = imported_after(modules_of("tfmlops.deploy"), ("mlflow", "airflow"))
    assert {m: v for m, v in found.items() if v} == {}


def test_no_core_module_imports_airflow():
    """Statically (importing all of them would take minutes of TensorFlow): no ``airflow`` import
    anywhere under include/."""
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "include").rglob("*.py")
                 if re.search(r"^\s*(from|import)\s+airflow\b", path.read_text(), re.M)]
    assert offenders == []


def test_operators_reach_the_core_library_only_through_the_steps_layer():
    """Every ``tfmlops`` import of a plugin module is ``tfmlops.steps.*``, except the hooks (the
    API of their system: the serving hook builds a ``tfmlops.deploy`` endpoint)."""
    offenders = []
    for path in (ROOT / "plugins" / "tfmlops_airflow").rglob("*.py"):
        if path.parent.name == "hooks":
            continue
        for target in re.findall(r"^\s*(?:from|import)\s+(tfmlops(?:\.\w+)*)(?=[\s,])", path.read_text(), re.M):
            if not target.startswith("tfmlops.steps"):
                offenders.append(f"{path.relative_to(ROOT)}: {target}")
    assert offenders == []


def test_plugin_loader_does_not_execute_the_provider_package():
    """``plugins/.airflowignore`` keeps Airflow from importing ``tfmlops_airflow/hooks/mlflow.py`` as a
    module named ``mlflow`` (and every other file under its bare name) in every Airflow process: the
    loader imports only the project's plugin (``plugins/tfmlops_plugin.py``, the webhook receiver)."""
    code = ("import sys\n"
            "from airflow import plugins_manager\n"
            "plugins_manager.ensure_plugins_loaded()\n"
            "plugins = str(__import__('pathlib').Path(sys.argv[1]).resolve())\n"
            "print(sorted(n for n, m in list(sys.modules.items()) if (getattr(m, '__file__', '') or '')"
            ".startswith(plugins) and not n.startswith('tfmlops_airflow')),"
            " [a['url_prefix'] for a in plugins_manager.get_fastapi_plugins()[0]])")
    run = subprocess.run([sys.executable, "-c", code, str(ROOT / "plugins")], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins")})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "['tfmlops_plugin'] ['/tfmlops']"
