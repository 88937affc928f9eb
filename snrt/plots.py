"""Plots people would rather look at than tables (matplotlib, the `plot` extra)."""

from __future__ import annotations

import os

from .errors import MissingExtraError
from .fileio import atomic_open
from .lookup_table import LookupTable, pareto_front


def pyplot():
    """matplotlib.pyplot on the Agg backend; MissingExtraError naming the `plot` extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtraError("plotting", "matplotlib", "plot") from None
    return plt


def save_png(fig, path: str | os.PathLike) -> None:
    """Lay `fig` out, write it to `path` as PNG atomically, and free it."""
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    pyplot().close(fig)


def plot_pareto(table: LookupTable, path: str | os.PathLike, bundle: str | None = None) -> None:
    """Accuracy vs p50 latency for every (backend, precision, threads) in the table, Pareto
    front drawn as a step line, anchors marked, predicted points hollow. Without accuracies,
    latency vs GFLOPs."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    configs = table.configs(bundle)
    has_acc = any(e.accuracy is not None for e in table.select(bundle))
    for i, (backend, precision, threads) in enumerate(configs):
        es = table.select(bundle, backend, precision, threads)
        color = f"C{i}"
        label = f"{backend} {precision} {threads}t"
        for predicted in (False, True):
            pts = [e for e in es if e.predicted == predicted]
            if not pts:
                continue
            xs = [e.p50_ms for e in pts]
            ys = [e.accuracy if has_acc else e.flops / 1e9 for e in pts]
            ax.scatter(xs, ys, s=22, color=color, facecolors="none" if predicted else color,
                       label=f"{label}{' (predicted)' if predicted else ''}", alpha=0.8)
        anchors = [e for e in es if ">" not in e.variant]
        ax.scatter([e.p50_ms for e in anchors],
                   [e.accuracy if has_acc else e.flops / 1e9 for e in anchors],
                   s=120, marker="*", color=color, edgecolors="black", zorder=5)
        for e in anchors:
            y = e.accuracy if has_acc else e.flops / 1e9
            ax.annotate(e.variant, (e.p50_ms, y), textcoords="offset points", xytext=(5, -12),
                        fontsize=8)
        if has_acc:
            front = pareto_front(es)
            ax.step([e.p50_ms for e in front], [e.accuracy for e in front], where="post",
                    color=color, lw=1.2, alpha=0.7)
    ax.set_xlabel("latency p50 (ms, batch 1)")
    ax.set_ylabel("top-1 accuracy (%)" if has_acc else "GFLOPs")
    ax.set_title(f"{bundle or 'all bundles'} on {table.device.id}\n"
                 f"{'Pareto front (line), anchors (stars)' if has_acc else 'no accuracies'}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    save_png(fig, path)
