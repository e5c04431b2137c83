"""The trade-off report: one row per (artifact, runtime) check, as JSON, Markdown and a PNG chart
(gzipped size vs accuracy, marker area ∝ latency per example)."""

from __future__ import annotations

import json
from pathlib import Path

COLUMNS = ("artifact", "runtime", "bytes", "gzipped_bytes", "accuracy", "max_abs_diff", "argmax_agreement",
           "latency_ms", "passed")


def table(artifact_rows: list[dict]) -> list[dict]:
    """Flatten artifact rows (from :func:`tfmlops.formats.verify.export_and_verify`) into one row per check."""
    flat = []
    for row in artifact_rows:
        for check in row.get("checks", []):
            flat.append({"artifact": row["artifact"], "variant": row["variant"], "format": row["format"],
                         "runtime": check["runtime"], "bytes": row["bytes"], "gzipped_bytes": row["gzipped_bytes"],
                         "accuracy": check.get("accuracy"), "max_abs_diff": check.get("max_abs_diff"),
                         "argmax_agreement": check.get("argmax_agreement"), "latency_ms": check.get("latency_ms"),
                         "tolerance": row.get("tolerance"), "passed": bool(check.get("passed")),
                         "problem": check.get("problem")})
    return flat


def _fmt(value, column: str) -> str:
    if value is None:
        return "–"
    if column in ("bytes", "gzipped_bytes"):
        return f"{value:,}"
    if column == "accuracy" or column == "argmax_agreement":
        return f"{value:.4f}"
    if column == "max_abs_diff":
        return f"{value:.2e}"
    if column == "latency_ms":
        return f"{value:.4f}"
    if column == "passed":
        return "yes" if value else "**no**"
    return str(value)


def markdown(rows: list[dict], variants: list[dict] | None = None, title: str = "Export formats") -> str:
    lines = [f"# {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(row.get(c), c) for c in COLUMNS) + " |" for row in rows]
    lines += ["", "latency_ms: median of one-row predictions in the runtime; max_abs_diff and argmax_agreement: "
                  "against the source model on the held-out batch; accuracy: the test split."]
    if variants:
        lines += ["", "## Optimization variants", "", "| variant | status | accuracy | drop (pp) | reason |",
                  "|---|---|---|---|---|"]
        for v in variants:
            drop = v.get("accuracy_drop")
            lines.append(f"| {v['variant']} | {v['status']} | {_fmt(v.get('accuracy'), 'accuracy')} | "
                         f"{'–' if drop is None else f'{drop * 100:.2f}'} | {v.get('reason', '')} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str = "size vs accuracy (marker area ∝ latency)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if r.get("accuracy") is not None and r.get("latency_ms") is not None]
    fig, ax = plt.subplots(figsize=(10, 6))
    if points:
        top = max(r["latency_ms"] for r in points) or 1.0
        runtimes = sorted({r["runtime"] for r in points})
        colors = {rt: plt.cm.tab10(i) for i, rt in enumerate(runtimes)}
        for rt in runtimes:
            mine = [r for r in points if r["runtime"] == rt]
            ax.scatter([r["gzipped_bytes"] / 1024 for r in mine], [r["accuracy"] for r in mine],
                       s=[40 + 800 * r["latency_ms"] / top for r in mine], alpha=0.6, color=colors[rt], label=rt,
                       edgecolors=["black" if r["passed"] else "red" for r in mine])
        for r in {r["artifact"]: r for r in points}.values():  # one label per artifact
            ax.annotate(r["artifact"], (r["gzipped_bytes"] / 1024, r["accuracy"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.legend(title="runtime", fontsize=8)
    ax.set_xlabel("gzipped size (KiB, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(artifact_rows: list[dict], out: Path, variants: list[dict] | None = None, title: str = "Export formats",
          extra: dict | None = None) -> dict:
    """report.json, report.md and tradeoff.png under ``out``; returns their paths and the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = table(artifact_rows)
    (out / "report.json").write_text(json.dumps({**(extra or {}), "rows": rows, "variants": variants or [],
                                                 "artifacts": artifact_rows}, indent=2, default=str))
    (out / "report.md").write_text(markdown(rows, variants, title))
    plot(rows, out / "tradeoff.png")
    return {"json": str(out / "report.json"), "markdown": str(out / "report.md"), "png": str(out / "tradeoff.png"),
            "rows": rows}
