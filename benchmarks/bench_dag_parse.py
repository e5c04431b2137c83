"""DAG parse time per file, as Airflow's DagBag measures it (goal: <= 0.3 s per file).

Each measurement parses the dags folder in a fresh interpreter (as the DAG processor does), so
the time includes every module a DAG file imports. Writes benchmarks/results/dag_parse.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GOAL_S = 0.3
REPEATS = 3

PARSE = """
import json
from airflow.dag_processing.dagbag import DagBag
import airflow.sdk, airflow.providers.amazon  # warm what every Airflow process has loaded anyway
bag = DagBag(dag_folder=%r)
print(json.dumps({s.file: s.duration.total_seconds() if hasattr(s.duration, "total_seconds") else s.duration
                  for s in bag.dagbag_stats}))
"""


def main() -> None:
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])}
    samples: dict[str, list[float]] = {}
    for _ in range(REPEATS):
        out = subprocess.run([sys.executable, "-c", PARSE % str(ROOT / "dags")], env=env, capture_output=True,
                             text=True, check=True)
        for file, seconds in json.loads(out.stdout.strip().splitlines()[-1]).items():
            samples.setdefault(Path(file).name, []).append(seconds)
    report = {"goal_s": GOAL_S, "repeats": REPEATS, "files": {
        name: {"median_s": round(statistics.median(v), 4), "max_s": round(max(v), 4),
               "meets_goal": statistics.median(v) <= GOAL_S} for name, v in sorted(samples.items())}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dag_parse.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
