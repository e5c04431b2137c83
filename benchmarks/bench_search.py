"""Hyperparameter search (tf_hparam_search's core): trials per minute with 1 and with 2 workers,
what pruning saves, and the best trial against the module's default hyperparameters.

For each example module (default: the regression and the tabular binary examples), the same
``--trials``-trial search of its ``SEARCH_SPACE`` runs three times on a journal study, each worker a
process of its own pinned to one CPU (``os.sched_setaffinity``) with TensorFlow's intra/inter-op
threads at 1, through :func:`tfmlops.search.work` and :func:`tfmlops.steps.search.fit_trial` (what
the DAG's worker tasks run, without the MLflow logging):

1. 1 worker, no pruning; 2. 2 workers, no pruning — trials per minute (complete trials over the
   wall time of the workers' trial loops, imports and data loading excluded), goal ≥ 1.7× with 2;
3. 2 workers, median pruning — trials pruned, epochs trained vs run 2, and the best validation
   metric of each (pruning should save epochs for about the same best value).

Then the module's default hyperparameters are trained once and scored the same way (validation
split), next to the best trial. Writes benchmarks/results/search.json and search.png, and Optuna's
plots of each example's pruned search (``search_<example>_<plot>.png``: what ``finish`` logs on a
search's parent run).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXAMPLES = {"diabetes": "examples/diabetes", "churn": "examples/churn.parquet"}


def _one_cpu(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu % os.cpu_count()})
    os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    import tfmlops  # noqa: F401  (tf_keras)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def _load(name: str):
    from tfmlops import model_data, modelspec

    spec = modelspec.read_spec(f"tfmlops_examples.{name}")
    module = modelspec.import_module(spec.module)
    data, _ = model_data.load(spec, module, EXAMPLES[name])
    return spec, module, data


def _worker(name: str, storage: str, study_name: str, n_trials: int, pruner: str, worker: int, out: str) -> None:
    _one_cpu(worker)
    from tfmlops import modelspec, search
    from tfmlops.steps.search import fit_trial, with_values

    spec, module, data = _load(name)
    metric = modelspec.resolve_gate(spec)["metric"]
    space = search.parse_space(module.SEARCH_SPACE, set(spec.hparams))
    direction = "maximize" if modelspec.resolve_gate(spec)["higher_is_better"] else "minimize"
    study = search.open_study(storage, study_name, direction, n_trials, seed=worker, pruner=pruner)
    t0 = time.time()
    done = search.work(study, lambda t: fit_trial(t, with_values(spec, search.suggest(t, space)), module, data,
                                                  metric), n_trials, time.time() + 3600, worker=worker)
    Path(out).write_text(json.dumps({"start": t0, "end": time.time(), **done}))


def run_search(name: str, workers: int, pruner: str, n_trials: int, tmp: Path, seed: int = 0,
               plots_to: Path | None = None) -> dict:
    from tfmlops import modelspec, search

    spec = modelspec.read_spec(f"tfmlops_examples.{name}")
    gate = modelspec.resolve_gate(spec)
    storage = f"journal:{tmp}/{name}-{workers}-{pruner}.log"
    study_name = f"bench-{name}-{workers}-{pruner}"
    search.open_study(storage, study_name, "maximize" if gate["higher_is_better"] else "minimize", n_trials,
                      seed=seed, pruner=pruner, create=True)
    ctx = multiprocessing.get_context("spawn")
    outs = [tmp / f"{study_name}-{w}.json" for w in range(workers)]
    procs = [ctx.Process(target=_worker, args=(name, storage, study_name, n_trials, pruner, w, str(o)))
             for w, o in enumerate(outs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"{study_name}: a worker exited with {p.exitcode}")
    ran = [json.loads(o.read_text()) for o in outs]
    wall = max(r["end"] for r in ran) - min(r["start"] for r in ran)
    study = search.open_study(storage, study_name, "maximize" if gate["higher_is_better"] else "minimize", n_trials,
                              pruner=pruner)
    summary = search.summary(study)
    epochs = sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))
    complete = summary["states"]["complete"]
    if plots_to is not None:  # Optuna's plots of this study, as finish logs them on the parent run
        plots_to.mkdir(parents=True, exist_ok=True)
        for plot, path in search.plots(study, plots_to).items():
            Path(path).rename(plots_to / f"search_{name}_{plot}.png")
    return {"example": name, "workers": workers, "pruner": pruner, "trials": summary["trials"],
            "states": summary["states"], "epochs_trained": epochs, "wall_s": round(wall, 1),
            "trials_per_minute": round(complete / wall * 60, 2) if wall > 0 else None,
            "best": summary["best"], "metric": gate["metric"], "higher_is_better": gate["higher_is_better"]}


def _defaults(name: str, out: str) -> None:
    _one_cpu(0)
    from tfmlops import modelspec, trainer

    spec, module, data = _load(name)
    metric = modelspec.resolve_gate(spec)["metric"]
    model, _ = trainer.train_model(spec, module, data)
    Path(out).write_text(json.dumps({"metric": metric, "value": float(trainer.metrics(spec, model,
                                                                                       data.validation)[metric]),
                                     "hparams": spec.hparams}))


def default_score(name: str, tmp: Path) -> dict:
    out = tmp / f"defaults-{name}.json"
    p = multiprocessing.get_context("spawn").Process(target=_defaults, args=(name, str(out)))
    p.start()
    p.join()
    return json.loads(out.read_text())


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["examples"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    x = range(len(names))
    one = [result["examples"][n]["runs"]["1-none"]["trials_per_minute"] for n in names]
    two = [result["examples"][n]["runs"]["2-none"]["trials_per_minute"] for n in names]
    axes[0].bar([i - 0.2 for i in x], one, 0.4, label="1 worker")
    axes[0].bar([i + 0.2 for i in x], two, 0.4, label="2 workers")
    for i, n in enumerate(names):
        axes[0].text(i + 0.2, two[i], f"{result['examples'][n]['speedup']:.2f}x", ha="center", va="bottom")
    axes[0].set_xticks(list(x), names)
    axes[0].set_title("complete trials per minute (goal: 2 workers >= 1.7x)")
    axes[0].legend()
    none = [result["examples"][n]["runs"]["2-none"]["epochs_trained"] for n in names]
    median = [result["examples"][n]["runs"]["2-median"]["epochs_trained"] for n in names]
    axes[1].bar([i - 0.2 for i in x], none, 0.4, label="no pruning")
    axes[1].bar([i + 0.2 for i in x], median, 0.4, label="median pruner")
    axes[1].set_xticks(list(x), names)
    axes[1].set_title("epochs trained by the search")
    axes[1].legend()
    for i, n in enumerate(names):
        e = result["examples"][n]
        rel = [e["defaults"]["value"], e["runs"]["2-none"]["best"]["value"], e["runs"]["2-median"]["best"]["value"]]
        axes[2].bar([i - 0.27, i, i + 0.27], rel, 0.27, color=["grey", "C0", "C1"],
                    label=["module defaults", "best (no pruning)", "best (median)"] if i == 0 else None)
        axes[2].text(i, max(rel), e["runs"]["2-none"]["metric"], ha="center", va="bottom")
    axes[2].set_xticks(list(x), names)
    axes[2].set_title("validation metric: defaults vs best trial")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", default="diabetes,churn")
    parser.add_argument("--trials", type=int, default=16)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "include"))
    result = {"benchmark": "search", "trials": args.trials, "cpu_count": os.cpu_count(),
              "machine": platform.machine(), "python": sys.version.split()[0], "examples": {}}
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        for name in args.examples.split(","):
            runs = {f"{w}-{p}": run_search(name, w, p, args.trials, Path(tmp),
                                           plots_to=RESULTS if (w, p) == (2, "median") else None)
                    for w, p in ((1, "none"), (2, "none"), (2, "median"))}
            speedup = runs["2-none"]["trials_per_minute"] / runs["1-none"]["trials_per_minute"]
            result["examples"][name] = {"runs": runs, "speedup": round(speedup, 2),
                                        "defaults": default_score(name, Path(tmp)),
                                        "pruning_epochs_saved": runs["2-none"]["epochs_trained"]
                                        - runs["2-median"]["epochs_trained"]}
            print(name, json.dumps({k: (v["trials_per_minute"], v["epochs_trained"], v["best"]["value"])
                                    for k, v in runs.items()}), f"speed-up {speedup:.2f}", flush=True)
    result["goals"] = [{"goal": f"{n}: trials per minute, 2 workers / 1", "measured": e["speedup"], "target": 1.7,
                        "meets_goal": e["speedup"] >= 1.7} for n, e in result["examples"].items()]
    result["total_seconds"] = round(time.time() - start, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "search.json").write_text(json.dumps(result, indent=2))
    chart(result, RESULTS / "search.png")
    for g in result["goals"]:
        print(f"GOAL {g['goal']}: {g['measured']} >= {g['target']} -> {'MET' if g['meets_goal'] else 'NOT MET'}")
    print(f"written {RESULTS / 'search.json'} and search.png in {result['total_seconds']} s")


if __name__ == "__main__":
    main()
