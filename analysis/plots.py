"""PNG plots of an axis: metric vs value for numeric sweeps, and metric x category heat maps."""
from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kdsearch.analysis import aggregate  # noqa: E402
from kdsearch.analysis.assemble import Context, row_label  # noqa: E402
from kdsearch.vocabulary import METRIC_LABELS  # noqa: E402


def colour_range(metric: str) -> tuple[float, float]:
    """The fixed colour scale of a metric's heat map, in percent: AUROC 50-100 (50 is chance),
    any other percentage metric 0-100; the same for every axis, so colours compare across plots."""
    return (50.0, 100.0) if metric.endswith("auroc") else (0.0, 100.0)


def _x(ctx: Context, row: str) -> float | None:
    return ctx.prepared.numeric.get(row, aggregate.as_number(row))


def is_numeric(ctx: Context) -> bool:
    """Whether the axis is a numeric sweep: declared so in the reference (ADPS k, MRKD alpha...),
    or, for an axis without a paper table, every measured value is a number (distribution axes)."""
    return ctx.axis.numeric


def png_bytes(fig) -> bytes:
    """A figure as PNG bytes (the figure is closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _save(fig, path: Path) -> Path | None:
    if fig is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(fig))
    return path


def sweep_plot(ctx: Context, path: Path) -> Path | None:
    """Write :func:`sweep_figure` as a PNG; None when there is nothing to plot."""
    return _save(sweep_figure(ctx), path)


def heatmap(ctx: Context, path: Path) -> Path | None:
    """Write :func:`heatmap_figure` as a PNG; None when nothing was measured."""
    return _save(heatmap_figure(ctx), path)


def sweep_figure(ctx: Context):
    """Metric vs value: measured means with std error bars, paper values as markers (None:
    nothing to plot)."""
    rows = [r for r in aggregate.row_order(ctx.axis, ctx.prepared) if _x(ctx, r) is not None]
    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    drawn = False
    for i, metric in enumerate(ctx.axis.metrics):
        color = f"C{i}"
        stats = aggregate.group_stats(ctx.prepared, ctx.ref.column(metric))
        pts = [(_x(ctx, r), stats[r][0]) for r in rows if r in stats]
        if pts:
            xs = [p[0] for p in pts]
            ys = [p[1].mean for p in pts]
            err = [p[1].std or 0.0 for p in pts]
            ax.errorbar(xs, ys, yerr=err, color=color, marker="o", capsize=3, label=f"{METRIC_LABELS[metric]} ours")
            drawn = True
        paper = [(_x(ctx, r), ctx.axis.rows[r].lookup(metric)[0]) for r in rows if r in ctx.axis.rows]
        paper = [(x, y) for x, y in paper if y is not None]
        if paper:
            ax.scatter([p[0] for p in paper], [p[1] for p in paper], color=color, marker="x", s=60,
                       label=f"{METRIC_LABELS[metric]} paper")
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    xs = [_x(ctx, r) for r in rows]
    if xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    if len(xs) <= 8:  # few values: mark exactly those (the paper's k = 1, 2, 4, 8, 16...)
        ax.minorticks_off()
        ax.set_xticks(xs, [row_label(ctx.axis, r) for r in rows], fontsize="small")
    ax.set_xlabel(ctx.axis.name)
    ax.set_ylabel("percent")
    ax.set_title(f"{ctx.ref.paper} / {ctx.axis.name} · {ctx.dataset}, {ctx.profile}")
    ax.grid(True, alpha=0.3)
    # Beside the axes, never over them: the paper's crosses sit at any height (MRKD alpha 0.8 and 1).
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def heatmap_figure(ctx: Context):
    """One panel per metric: axis values down, categories across, colour = mean over seeds on
    the metric's fixed scale (:func:`colour_range`; None: nothing measured)."""
    rows = aggregate.row_order(ctx.axis, ctx.prepared)
    cats = [c for c in aggregate.categories_in_order(ctx.axis, ctx.prepared) if c in set(ctx.prepared.frame["category"])]
    if not len(ctx.prepared.frame) or not cats:
        return None
    metrics = list(ctx.axis.metrics)
    size = (max(6.0, 0.6 * len(cats) + 2.5), 1.0 + (0.35 * len(rows) + 1.2) * len(metrics))
    fig, axes = plt.subplots(len(metrics), 1, figsize=size, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        stats = aggregate.category_stats(ctx.prepared, ctx.ref.column(metric))
        grid = np.array([[stats[(r, c)].mean if (r, c) in stats else math.nan for c in cats] for r in rows], dtype=float)
        low, high = colour_range(metric)
        image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis", vmin=low, vmax=high)
        ax.set_xticks(range(len(cats)), cats, rotation=45, ha="right", fontsize="small")
        ax.set_yticks(range(len(rows)), [row_label(ctx.axis, r) for r in rows], fontsize="small")
        ax.set_title(f"{METRIC_LABELS[metric]} (column {ctx.ref.column(metric)})", fontsize="medium")
        if grid.size <= 400:
            norm = image.norm
            for (i, j), v in np.ndenumerate(grid):
                if not math.isnan(v):
                    light = norm(v) > 0.6
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize="x-small",
                            color="black" if light else "white")
        fig.colorbar(image, ax=ax, fraction=0.03, extend="min" if low > 0 else "neither")
    fig.suptitle(f"{ctx.ref.paper} / {ctx.axis.name} · {ctx.dataset}, {ctx.profile}")
    fig.tight_layout()
    return fig
