"""The trade-off report: one row per (artifact, runtime) check, as JSON, Markdown and a PNG chart
(gzipped size vs the task's metric — accuracy, AUC or RMSE —, marker area ∝ latency per example).
An artifact whose format does not apply to the model is one row with its reason."""

from __future__ import annotations

import json
from pathlib import Path

COLUMNS = ("artifact", "runtime", "bytes", "gzipped_bytes", "metric", "score", "max_abs_diff", "argmax_agreement",
           "latency_ms", "passed")


def table(artifact_rows: list[dict]) -> list[dict]:
    """Flatten artifact rows (from :func:`tfmlops.formats.verify.export_and_verify`) into one row per
    check; a format that does not apply is one row (``passed`` None, ``problem`` its reason)."""
    flat = []
    for row in artifact_rows:
        if row.get("status") == "not_applicable":
            flat.append({"artifact": row["artifact"], "variant": row["variant"], "format": row["format"],
                         "runtime": None, "bytes": None, "gzipped_bytes": None, "metric": None, "score": None,
                         "accuracy": None, "max_abs_diff": None, "argmax_agreement": None, "latency_ms": None,
                         "tolerance": None, "passed": None, "problem": f"not applicable: {row['reason']}"})
            continue
        for check in row.get("checks", []):
            score = check.get("score", check.get("accuracy"))
            flat.append({"artifact": row["artifact"], "variant": row["variant"], "format": row["format"],
                         "runtime": check["runtime"], "bytes": row["bytes"], "gzipped_bytes": row["gzipped_bytes"],
                         "metric": check.get("metric", "accuracy"), "score": score,
                         "accuracy": check.get("accuracy"), "max_abs_diff": check.get("max_abs_diff"),
                         "argmax_agreement": check.get("argmax_agreement"), "latency_ms": check.get("latency_ms"),
                         "tolerance": row.get("tolerance"), "passed": bool(check.get("passed")),
                         "problem": check.get("problem")})
    return flat


def _score(v: dict):
    return v.get("score", v.get("accuracy"))


def _drop(v: dict):
    return v.get("drop", v.get("accuracy_drop"))


QUANTIZATION_PAIRS = ((("int8", "post-training"), ("qat_int8", "quantization-aware training")),
                      (("pruned_int8", "pruned, post-training"),
                       ("pruned_qat_int8", "pruned, pruning-preserving quantization-aware training")))


def quantization_comparison(variants: list[dict] | None) -> list[dict]:
    """Post-training int8 next to quantization-aware int8 (``int8`` / ``qat_int8``, and
    ``pruned_int8`` / ``pruned_qat_int8``), for each pair whose two variants have numbers: method,
    status, accuracy and drop vs the float model, flatbuffer bytes (raw and gzipped), the training
    epochs it cost and the calibration rows it needed."""
    by_name = {v["variant"]: v for v in variants or [] if _score(v) is not None}
    pairs = [pair for pair in QUANTIZATION_PAIRS if all(name in by_name for name, _ in pair)]
    rows = []
    for name, method in (member for pair in pairs for member in pair):
        v, details = by_name[name], by_name[name].get("details", {})
        rows.append({"variant": name, "method": method, "status": v.get("status"),
                     "metric": v.get("metric", "accuracy"), "score": _score(v), "drop": _drop(v),
                     "accuracy_drop_pp": round(_drop(v) * 100, 4) if v.get("metric", "accuracy") != "rmse" else None,
                     "tflite_bytes": details.get("tflite_bytes"),
                     "tflite_gzipped_bytes": details.get("tflite_gzipped_bytes"),
                     "training_epochs": details.get("qat_epochs", 0),
                     "calibration_rows": details.get("calibration_rows", 0)})
    return rows


def _fmt(value, column: str) -> str:
    if value is None:
        return "–"
    if column in ("bytes", "gzipped_bytes"):
        return f"{value:,}"
    if column in ("accuracy", "score", "argmax_agreement"):
        return f"{value:.4f}"
    if column == "max_abs_diff":
        return f"{value:.2e}"
    if column == "latency_ms":
        return f"{value:.4f}"
    if column == "passed":
        return "yes" if value else "**no**"
    return str(value)


def _worse_cell(r: dict) -> str:
    return _fmt(r["drop"], "score") if r["accuracy_drop_pp"] is None else f"{r['accuracy_drop_pp']:.2f}"


def markdown(rows: list[dict], variants: list[dict] | None = None, title: str = "Export formats") -> str:
    lines = [f"# {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    checked = [row for row in rows if row.get("passed") is not None]
    lines += ["| " + " | ".join(_fmt(row.get(c), c) for c in COLUMNS) + " |" for row in checked]
    lines += ["", "latency_ms: median of one-row predictions in the runtime; max_abs_diff and argmax_agreement "
                  "(predicted class): against the source model on the held-out batch; score: the task's metric "
                  "on the test split."]
    not_applicable = [row for row in rows if row.get("passed") is None]
    if not_applicable:
        lines += ["", "## Formats that do not apply to this model", "", "| artifact | why |", "|---|---|"]
        lines += [f"| {row['artifact']} | {row['problem'].removeprefix('not applicable: ')} |"
                  for row in not_applicable]
    if variants:
        lines += ["", "## Optimization variants", "", "| variant | status | metric | score | worse by | reason |",
                  "|---|---|---|---|---|---|"]
        for v in variants:
            drop, metric = _drop(v), v.get("metric", "accuracy")
            worse = "–" if drop is None else (f"{drop:.4g}" if metric == "rmse" else f"{drop * 100:.2f} pp")
            lines.append(f"| {v['variant']} | {v['status']} | {metric} | {_fmt(_score(v), 'score')} | "
                         f"{worse} | {v.get('reason', '')} |")
    comparison = quantization_comparison(variants)
    if comparison:
        lines += ["", "## int8: quantization-aware training vs post-training", "",
                  "| variant | method | status | score | worse than float by (pp; RMSE in its unit) | bytes | "
                  "gzipped bytes | "
                  "training epochs | calibration rows |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['method']} | {r['status']} | {_fmt(r['score'], 'score')} | "
                  f"{_worse_cell(r)} | {_fmt(r['tflite_bytes'], 'bytes')} | "
                  f"{_fmt(r['tflite_gzipped_bytes'], 'bytes')} | {r['training_epochs']} | {r['calibration_rows']} |"
                  for r in comparison]
    return "\n".join(lines) + "\n"


def _label_groups(ax, points: list[dict], radius_px: float = 14.0) -> list[tuple[tuple, list[str]]]:
    """Artifacts whose markers sit within ``radius_px`` of each other share one label (one name per
    line): several formats of the same model land on the same spot."""
    groups: list[tuple[tuple, list[str]]] = []
    for r in sorted({r["artifact"]: r for r in points}.values(), key=lambda r: (r["gzipped_bytes"], _y(r))):
        xy = (r["gzipped_bytes"] / 1024, _y(r))
        px = ax.transData.transform(xy)
        for anchor, names in groups:
            if ((ax.transData.transform(anchor) - px) ** 2).sum() ** 0.5 <= radius_px:
                names.append(r["artifact"])
                break
        else:
            groups.append((xy, [r["artifact"]]))
    return groups


def _place_labels(ax, groups: list[tuple[tuple, list[str]]], fontsize: int = 7) -> list:
    """One annotation per group, each moved to the first offset where it overlaps no label placed
    before it (and stays inside the axes)."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    placed, texts = [], []
    offsets = [(6, 6), (6, -6), (-6, 6), (-6, -6)] + [(6, 6 + 14 * k) for k in range(1, 12)] + \
              [(6, -6 - 14 * k) for k in range(1, 12)]
    frame = ax.get_window_extent(renderer)
    for xy, names in groups:
        text = "\n".join(names)
        for dx, dy in offsets:
            ann = ax.annotate(text, xy, fontsize=fontsize, xytext=(dx, dy), textcoords="offset points",
                              ha="left" if dx > 0 else "right", va="bottom" if dy > 0 else "top",
                              arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"} if abs(dy) > 6 else None)
            box = ann.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in placed):
                break
            ann.remove()
        else:  # nowhere free: keep the first position
            ann = ax.annotate(text, xy, fontsize=fontsize, xytext=offsets[0], textcoords="offset points")
            box = ann.get_window_extent(renderer)
        placed.append(box)
        texts.append(ann)
    return texts


def _y(row: dict):
    return row.get("score", row.get("accuracy"))


def plot(rows: list[dict], path: Path, title: str | None = None) -> list:
    """The trade-off chart; returns its label annotations (legible: no two overlap where avoidable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if _y(r) is not None and r.get("latency_ms") is not None]
    metric = next((r.get("metric") for r in points if r.get("metric")), "accuracy")
    title = title or f"size vs test {metric} (marker area ∝ latency)"
    fig, ax = plt.subplots(figsize=(11, 7))
    labels = []
    if points:
        top = max(r["latency_ms"] for r in points) or 1.0
        runtimes = sorted({r["runtime"] for r in points})
        colors = {rt: plt.cm.tab10(i) for i, rt in enumerate(runtimes)}
        for rt in runtimes:
            mine = [r for r in points if r["runtime"] == rt]
            ax.scatter([r["gzipped_bytes"] / 1024 for r in mine], [_y(r) for r in mine],
                       s=[40 + 800 * r["latency_ms"] / top for r in mine], alpha=0.6, color=colors[rt], label=rt,
                       edgecolors=["black" if r["passed"] else "red" for r in mine])
        ax.set_xscale("log")
        ax.margins(x=0.25, y=0.2)  # room for the labels at the edges
        ax.legend(title="runtime", fontsize=8, loc="lower right")
        ax.set_xlabel("gzipped size (KiB, log scale)")
        fig.tight_layout()
        fig.canvas.draw()  # final limits, so label positions can be measured
        labels = _place_labels(ax, _label_groups(ax, points))
    ax.set_xlabel("gzipped size (KiB, log scale)")
    ax.set_ylabel(f"test {metric}" + (" (lower is better)" if metric == "rmse" else ""))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return labels


def write(artifact_rows: list[dict], out: Path, variants: list[dict] | None = None, title: str = "Export formats",
          extra: dict | None = None) -> dict:
    """report.json, report.md and tradeoff.png under ``out``; returns their paths and the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = table(artifact_rows)
    (out / "report.json").write_text(json.dumps({**(extra or {}), "rows": rows, "variants": variants or [],
                                                 "quantization_comparison": quantization_comparison(variants),
                                                 "artifacts": artifact_rows}, indent=2, default=str))
    (out / "report.md").write_text(markdown(rows, variants, title))
    plot(rows, out / "tradeoff.png")
    return {"json": str(out / "report.json"), "markdown": str(out / "report.md"), "png": str(out / "tradeoff.png"),
            "rows": rows}
