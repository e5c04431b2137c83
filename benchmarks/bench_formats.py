"""Size, accuracy and latency of every optimization variant and export format, each measured in
its own runtime (TensorFlow, tf_keras, LiteRT, onnxruntime, TF.js in Node and in Chromium).

Trains the seed MLP (5 epochs) on MNIST, builds every variant with the default
:class:`tfmlops.optimize.OptimizeConfig` except longer distillation (15 epochs) and pruning
fine-tuning (4 epochs) — flags, recorded in the JSON's ``optimize_config`` —, exports and verifies every artifact
(:func:`tfmlops.steps.optimize.optimize_and_export_all`, no MLflow) and writes
benchmarks/results/formats.json, formats.md and formats.png (size vs accuracy, marker area ∝
latency). ``--sample-fraction`` trades fidelity for time (1.0 = all 60k/10k images, ~5 min
on 2 cores).

It also checks the issue's goals (JSON ``goals``, a "Goals" table in the Markdown), each from
the measured numbers: int8 TFLite ≤ 0.27× the float TFLite's bytes, ≤ 0.5 pp accuracy loss
and ≥ 2× lower latency than float TFLite in LiteRT (median of ``--latency-runs`` one-row
``invoke()`` calls per round, after warmup, float and int8 interleaved over several rounds);
pruned 80 % + int8 gzipped ≤ 0.1× the float ``.h5``; distilled student ≤ 0.25× the teacher's
parameters and within 1 pp of its accuracy; quantization-aware int8 (``qat_int8``) loses no more
accuracy vs the float model than post-training int8, both ≤ 0.5 pp, at no more than 1.05× its
bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LATENCY_ROUNDS = 5


def litert_latency(contents: dict[str, bytes], x, runs: int, rounds: int = LATENCY_ROUNDS,
                   warmup: int = 200) -> dict:
    """Median ``invoke()`` time (ms) of one row per model in the LiteRT interpreter (default
    options, as in the format checks), the input tensor set once beforehand (quantized to int8
    for int8 models); the models take turns over ``rounds`` rounds of ``runs`` invokes so that
    machine noise hits them alike. Also the end-to-end time of a one-row call through
    :class:`~tfmlops.formats.runtimes.LiteRTModel` (Python-side (de)quantization included) and
    the per-row time of a 256-row batch."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from tfmlops.formats.runtimes import LiteRTModel

    def prepared(content, rows):
        it = Interpreter(model_content=content)
        inp = it.get_input_details()[0]
        it.resize_tensor_input(inp["index"], [len(rows), rows.shape[1]])
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        data = rows
        if np.issubdtype(inp["dtype"], np.integer):
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            data = np.clip(np.round(rows / scale + zero), info.min, info.max).astype(inp["dtype"])
        it.set_tensor(inp["index"], np.ascontiguousarray(data))
        return it

    def timed(fn, n):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
        return times

    one, batch = np.ascontiguousarray(x[:1], np.float32), np.ascontiguousarray(x[:256], np.float32)
    single = {name: prepared(c, one) for name, c in contents.items()}
    batched = {name: prepared(c, batch) for name, c in contents.items()}
    wrapped = {name: LiteRTModel(c) for name, c in contents.items()}
    invoke, e2e, per_row = ({name: [] for name in contents} for _ in range(3))
    for name in contents:  # warmup
        timed(single[name].invoke, warmup)
        timed(lambda model=wrapped[name]: model(one), warmup)
        timed(batched[name].invoke, 20)
    for _ in range(rounds):
        for name in contents:
            invoke[name] += timed(single[name].invoke, runs)
            e2e[name] += timed(lambda model=wrapped[name]: model(one), max(runs // 5, 100))
            per_row[name] += [t / len(batch) for t in timed(batched[name].invoke, max(runs // 20, 20))]
    return {name: {"invoke_ms_median": statistics.median(invoke[name]), "invokes": len(invoke[name]),
                   "invoke_ms_p90": statistics.quantiles(invoke[name], n=10)[-1],
                   "end_to_end_ms_median": statistics.median(e2e[name]),
                   "batch256_ms_per_row_median": statistics.median(per_row[name])} for name in contents}


def _goal(name: str, measured, target: float, comparison: str, **numbers) -> dict:
    if measured is None:
        return {"goal": name, "measured": None, "target": target, "comparison": comparison, "meets_goal": False,
                **numbers}
    meets = measured <= target if comparison == "<=" else measured >= target
    return {"goal": name, "measured": round(float(measured), 4), "target": target, "comparison": comparison,
            "meets_goal": bool(meets), **numbers}


def goals(result: dict, work: Path, x_test, latency_runs: int) -> tuple[list[dict], dict, list[str]]:
    """The issue's benchmark goals from the measured rows and variant results."""
    rows = {(r["artifact"], r["runtime"]): r for r in result["report"]["rows"]}
    variants = {v["variant"]: v for v in result["variants"]}
    notes, out = [], []
    float_tfl, int8_tfl = rows.get(("float-tflite", "litert")), rows.get(("int8-tflite", "litert"))
    latency = {}
    if float_tfl and int8_tfl:
        contents = {name: (work / f"{name}-tflite" / "model.tflite").read_bytes() for name in ("float", "int8")}
        latency = litert_latency(contents, x_test, latency_runs)
        ratio = int8_tfl["bytes"] / float_tfl["bytes"]
        loss_pp = (float_tfl["accuracy"] - int8_tfl["accuracy"]) * 100
        f_ms, i_ms = latency["float"]["invoke_ms_median"], latency["int8"]["invoke_ms_median"]
        speedup = f_ms / i_ms
        per_row_speedup = latency["float"]["batch256_ms_per_row_median"] / latency["int8"]["batch256_ms_per_row_median"]
        out += [
            _goal("int8 TFLite bytes / float TFLite bytes", ratio, 0.27, "<=", int8_bytes=int8_tfl["bytes"],
                  float_bytes=float_tfl["bytes"]),
            _goal("int8 TFLite accuracy loss vs float TFLite (pp, LiteRT)", loss_pp, 0.5, "<=",
                  int8_accuracy=int8_tfl["accuracy"], float_accuracy=float_tfl["accuracy"]),
            _goal("float / int8 one-row LiteRT latency (speed-up)", speedup, 2.0, ">=",
                  int8_ms=round(i_ms, 5), float_ms=round(f_ms, 5),
                  end_to_end_speedup=round(latency["float"]["end_to_end_ms_median"]
                                           / latency["int8"]["end_to_end_ms_median"], 3),
                  batch256_speedup=round(per_row_speedup, 3)),
        ]
        notes.append(f"Latency goal = LiteRT invoke() only, input tensor set beforehand: int8 {i_ms * 1000:.2f} us vs "
                     f"float {f_ms * 1000:.2f} us per one-row invoke (median of {latency['int8']['invokes']} each, "
                     f"{os.cpu_count()} CPUs). Through LiteRTModel with Python-side int8 (de)quantization (the "
                     f"table's latency_ms) int8 is slower: {latency['int8']['end_to_end_ms_median'] * 1000:.2f} us vs "
                     f"{latency['float']['end_to_end_ms_median'] * 1000:.2f} us; in a 256-row batch int8 is "
                     f"{per_row_speedup:.1f}x "
                     f"faster per row.")
        if speedup < 1:
            notes.append(f"int8 is SLOWER than float in LiteRT on this CPU for one row: {i_ms * 1000:.2f} us vs "
                         f"{f_ms * 1000:.2f} us per invoke (median of {latency['int8']['invokes']} invokes each).")
        elif speedup < 2:
            notes.append(f"int8 is only {speedup:.2f}x faster than float in LiteRT on this CPU for one row "
                         f"({i_ms * 1000:.2f} us vs {f_ms * 1000:.2f} us per invoke).")
    else:
        out += [_goal("int8 TFLite bytes / float TFLite bytes", None, 0.27, "<="),
                _goal("int8 TFLite accuracy loss vs float TFLite (pp, LiteRT)", None, 0.5, "<="),
                _goal("float / int8 one-row LiteRT latency (speed-up)", None, 2.0, ">=")]
        notes.append(f"int8 or float TFLite missing: int8 variant {variants.get('int8', {}).get('status')}")

    h5, pi8 = rows.get(("float-h5", "tf_keras")), variants.get("pruned_int8", {})
    pi8_row = rows.get(("pruned_int8-tflite", "litert"))
    pi8_gz = pi8_row["gzipped_bytes"] if pi8_row else pi8.get("details", {}).get("tflite_gzipped_bytes")
    if pi8.get("status") != "passed":
        notes.append(f"pruned_int8 variant {pi8.get('status')}: {pi8.get('reason')} (size from the variant itself)")
    out.append(_goal("pruned 80% + int8 TFLite gzipped bytes / float .h5 bytes",
                     pi8_gz / h5["bytes"] if (h5 and pi8_gz) else None, 0.1, "<=",
                     pruned_int8_gzipped_bytes=pi8_gz, float_h5_bytes=h5["bytes"] if h5 else None,
                     float_h5_gzipped_bytes=h5["gzipped_bytes"] if h5 else None,
                     target_sparsity=pi8.get("details", {}).get("target_sparsity"),
                     int8_weight_sparsity=pi8.get("details", {}).get("int8_weight_sparsity"),
                     pruned_int8_accuracy=pi8.get("accuracy"), variant_status=pi8.get("status")))

    ptq, qat = variants.get("int8", {}), variants.get("qat_int8", {})
    if "accuracy_drop" in ptq and "accuracy_drop" in qat:
        ptq_pp, qat_pp = ptq["accuracy_drop"] * 100, qat["accuracy_drop"] * 100
        q = qat.get("details", {})
        out += [
            _goal("QAT int8 drop - post-training int8 drop (pp, vs float)", qat_pp - ptq_pp, 0.0, "<=",
                  qat_int8_drop_pp=round(qat_pp, 4), int8_drop_pp=round(ptq_pp, 4), qat_epochs=q.get("qat_epochs"),
                  qat_fine_tuned_float_accuracy=q.get("fine_tuned_float_accuracy"),
                  qat_fake_quant_accuracy=q.get("fake_quant_accuracy")),
            _goal("QAT int8 accuracy loss vs float (pp, LiteRT)", qat_pp, 0.5, "<=", qat_int8_accuracy=qat["accuracy"],
                  variant_status=qat.get("status")),
            _goal("QAT int8 TFLite bytes / post-training int8 TFLite bytes",
                  q["tflite_bytes"] / ptq["details"]["tflite_bytes"], 1.05, "<=", qat_int8_bytes=q["tflite_bytes"],
                  int8_bytes=ptq["details"]["tflite_bytes"]),
        ]
        if q.get("fine_tuned_float_accuracy") is not None:
            notes.append(f"QAT fine-tunes the model ({q.get('qat_epochs')} epochs) as it quantizes it: its float "
                         f"weights alone score {q['fine_tuned_float_accuracy']:.4f}, its int8 flatbuffer "
                         f"{qat['accuracy']:.4f}, so part of its gain over post-training int8 is extra training.")
        pruned, pqat = variants.get("pruned_int8", {}), variants.get("pruned_qat_int8", {})
        if "accuracy_drop" in pruned and "accuracy_drop" in pqat:
            notes.append(f"Pruned 80 %: pruning-preserving QAT int8 {pqat['accuracy_drop'] * 100:.2f} pp vs "
                         f"post-training int8 {pruned['accuracy_drop'] * 100:.2f} pp below float; int8 weight sparsity "
                         f"{pqat['details'].get('int8_weight_sparsity')}, gzipped "
                         f"{pqat['details'].get('tflite_gzipped_bytes')} vs "
                         f"{pruned['details'].get('tflite_gzipped_bytes')} bytes.")
    else:
        out += [_goal("QAT int8 drop - post-training int8 drop (pp, vs float)", None, 0.0, "<="),
                _goal("QAT int8 accuracy loss vs float (pp, LiteRT)", None, 0.5, "<="),
                _goal("QAT int8 TFLite bytes / post-training int8 TFLite bytes", None, 1.05, "<=")]
        notes.append(f"int8 {ptq.get('status')} / qat_int8 {qat.get('status')}: {qat.get('reason')}")

    dist = variants.get("distilled", {})
    d = dist.get("details", {})
    if "student_params" in d:
        out += [
            _goal("distilled student params / teacher params", d["student_params"] / d["teacher_params"], 0.25, "<=",
                  student_params=d["student_params"], teacher_params=d["teacher_params"]),
            _goal("teacher accuracy - student accuracy (pp)", (d["teacher_score"] - dist["accuracy"]) * 100, 1.0,
                  "<=", student_accuracy=dist["accuracy"], teacher_accuracy=d["teacher_score"],
                  variant_status=dist.get("status")),
        ]
    else:
        out += [_goal("distilled student params / teacher params", None, 0.25, "<="),
                _goal("teacher accuracy - student accuracy (pp)", None, 1.0, "<=")]
        notes.append(f"distilled variant {dist.get('status')}: {dist.get('reason')}")
    return out, latency, notes


def goals_markdown(rows: list[dict], notes: list[str]) -> str:
    lines = ["", "## Goals", "", "| goal | measured | target | meets goal |", "|---|---|---|---|"]
    for g in rows:
        measured = "–" if g["measured"] is None else f"{g['measured']:.4g}"
        lines.append(f"| {g['goal']} | {measured} | {g['comparison']} {g['target']} | "
                     f"{'yes' if g['meets_goal'] else '**no**'} |")
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample-fraction", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--distill-epochs", type=int, default=None, help="student epochs (OptimizeConfig default)")
    parser.add_argument("--pruning-epochs", type=int, default=None,
                        help="fine-tuning epochs while pruning (OptimizeConfig default)")
    parser.add_argument("--latency-runs", type=int, default=2000,
                        help="one-row invokes per model per round (5 rounds) for the latency goal")
    args = parser.parse_args()

    from tfmlops import data
    from tfmlops.formats import FLOAT_FORMATS
    from tfmlops.steps.optimize import optimize_and_export_all
    from tfmlops.models import ModelConfig, TrainConfig, build_model, train
    from tfmlops.optimize import VARIANTS, OptimizeConfig

    start = time.perf_counter()
    dataset, _ = data.load_validated("mnist", 784, 10, sample_fraction=args.sample_fraction)
    model = build_model(ModelConfig(n_features=784, num_classes=10))
    train(model, dataset.x_train, dataset.y_train, TrainConfig(epochs=args.epochs))
    trained = time.perf_counter() - start
    work = Path(tempfile.mkdtemp(prefix="bench-formats-"))
    try:
        config = OptimizeConfig(**{k: v for k, v in (('distill_epochs', args.distill_epochs),
                                                      ('pruning_epochs', args.pruning_epochs)) if v is not None})
        result = optimize_and_export_all(model, dataset, work, VARIANTS, FLOAT_FORMATS, config)
        goal_rows, latency, notes = goals(result, work, dataset.x_test, args.latency_runs)
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(result["report"]["png"], RESULTS / "formats.png")
        (RESULTS / "formats.md").write_text(Path(result["report"]["markdown"]).read_text()
                                            + goals_markdown(goal_rows, notes))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        "benchmark": "formats", "sample_fraction": args.sample_fraction, "epochs": args.epochs,
        "train_rows": len(dataset.y_train), "test_rows": len(dataset.y_test),
        "float_accuracy": result["float_accuracy"], "train_seconds": round(trained, 1),
        "total_seconds": round(time.perf_counter() - start, 1), "machine": platform.machine(),
        "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
        "optimize_config": config.to_dict(), "goals": goal_rows,
        "all_goals_met": all(g["meets_goal"] for g in goal_rows),
        "note": " ".join(notes) or None, "litert_latency": latency,
        "variants": result["variants"], "rows": result["report"]["rows"],
    }
    (RESULTS / "formats.json").write_text(json.dumps(summary, indent=2, default=str))
    print((RESULTS / "formats.md").read_text())
    for g in goal_rows:
        print(f"GOAL {g['goal']}: {g['measured']} {g['comparison']} {g['target']} -> "
              f"{'MET' if g['meets_goal'] else 'NOT MET'}")
    print(f"float accuracy {summary['float_accuracy']:.4f}; total {summary['total_seconds']} s; "
          f"written {RESULTS / 'formats.json'}, formats.md, formats.png")


if __name__ == "__main__":
    main()
