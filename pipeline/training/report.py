"""The comparison's report: the Markdown table (one row per model), quality against training time and peak memory,
and the test ROC curves of every model, written into the run folder."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from pipeline.metrics import plot_roc, pyplot
from pipeline.training.trainers import ModelResult


def write_report(run_dir: Path, header: str, results: Sequence[ModelResult], registered_model: str,
                 failed: Sequence[str] = ()) -> tuple[str, Path, Path, Path]:
    """report.md (header, table, each version's champion decision, the models that failed), report.png and
    roc_test.png in `run_dir`: (the table, the three paths)."""
    table = markdown_table(results)
    decisions = "".join(f"- {r.model}: v{r.version}: {r.champion}\n" for r in results if r.version is not None)
    if decisions:
        table += f"\n\nChampion decisions ({registered_model}, made as each version was registered):\n\n" \
                 + decisions.rstrip("\n")
    not_trained = f"\n\nNot trained (failed): {', '.join(failed)}.\n" if failed else ""
    report_md = run_dir / "report.md"
    report_md.write_text(header + table + "\n" + not_trained)
    report_png = plot_report(results, run_dir / "report.png")
    roc_all = plot_roc({r.model: (*r.roc, r.metrics["test/auroc"]) for r in results if r.roc is not None},
                       run_dir / "roc_test.png")
    return table, report_md, report_png, roc_all


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def markdown_table(results: Sequence[ModelResult]) -> str:
    """model | test ROC AUC | accuracy | log-loss | train s | steps | best step | CUDA peak GiB | RSS peak GiB | params"""
    lines = ["| model | test ROC AUC | accuracy | log-loss | train time (s) | steps | best step | "
             "CUDA peak (GiB) | RSS peak (GiB) | parameters |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        m = r.metrics
        lines.append(
            f"| {r.model} | {_fmt(m['test/auroc'], '.4f')} | {_fmt(m['test/accuracy'], '.4f')} | "
            f"{_fmt(m['test/logloss'], '.4f')} | {_fmt(m['time/train_s'], '.1f')} | "
            f"{r.steps if r.steps is not None else '—'} | {_fmt(m.get('train/best_step'), '.0f')} | "
            f"{_fmt(m.get('mem/cuda_peak_gib'), '.2f')} | "
            f"{_fmt(m.get('mem/rss_peak_gib'), '.2f')} | {_fmt(m['params/n_parameters'], ',.0f')} |"
        )
    return "\n".join(lines)


def plot_report(results: Sequence[ModelResult], path: Path) -> Path:
    """Test ROC AUC against training time and against peak memory (CUDA when measured, else RSS)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for r in results:
        m = r.metrics
        mem = m.get("mem/cuda_peak_gib", float("nan"))
        mem = mem if math.isfinite(mem) else m.get("mem/rss_peak_gib", float("nan"))
        for ax, x in zip(axes, (m["time/train_s"], mem), strict=True):
            ax.scatter([x], [m["test/auroc"]], s=40)
            ax.annotate(r.model, (x, m["test/auroc"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    cuda = any(math.isfinite(r.metrics.get("mem/cuda_peak_gib", float("nan"))) for r in results)
    axes[0].set(xlabel="training time (s)", ylabel="test ROC AUC", title="quality vs training time")
    axes[1].set(xlabel=f"peak {'CUDA allocated' if cuda else 'process RSS'} memory (GiB)",
                title="quality vs peak memory")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
