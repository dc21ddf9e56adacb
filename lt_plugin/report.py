"""Tables and plots from a run's results."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

from .store import atomic_write

COLUMNS = (("level", "level", "{}"), ("density", "density", "{:.4f}"), ("params", "params", "{:,}"),
            ("macs", "MACs", "{:,}"), ("latency_ms", "ms/64", "{:.1f}"), ("val_accuracy", "val acc", "{:.2%}"),
            ("test_accuracy", "test acc", "{:.2%}"),
            ("train_seconds", "train s", "{:.1f}"))


LATENCY_NOTE = ("ms/64: the latency of 64 images, measured for the dense model and exported channel tickets; a weight "
                "ticket runs the dense model (its zeros are still multiplied), so it has none of its own")


def format_table(results: Sequence[dict], columns: Sequence[tuple] = COLUMNS) -> str:
    """A plain-text table of per-ticket results; `columns` are (key, title, format) and those no result has are
    left out; a missing or None value shows as '-'."""
    columns = [c for c in columns if any(r.get(c[0]) is not None for r in results)]
    rows = [[title for _, title, _ in columns]]
    rows += [[fmt.format(r[key]) if r.get(key) is not None else "-" for key, _, fmt in columns] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_accuracy_vs_density(results: Sequence[dict], path, dense_line: bool = True,
                             title: str = "Test accuracy against density") -> Path:
    """Test accuracy against density on a log axis, with the dense (density 1) accuracy as a line."""
    dense = [r["test_accuracy"] for r in results if r["density"] >= 1.0]
    return plot_accuracy_curves({"tickets": [(r["density"], r["test_accuracy"]) for r in results]}, path,
                                dense[0] if dense_line and dense else None, title)


def plot_accuracy_curves(curves: Mapping[str, Sequence[Tuple[float, float]]], path,
                         dense_accuracy: Optional[float] = None,
                         title: str = "Test accuracy against density") -> Path:
    """One curve of (density, accuracy) points per label on a log density axis; the dense accuracy as a line."""
    import matplotlib  # only runs that plot pay for importing it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, points in curves.items():
        ordered = sorted(points, key=lambda p: -p[0])
        ax.plot([d for d, _ in ordered], [100 * a for _, a in ordered], "o-", label=label)
    if dense_accuracy is not None:
        ax.axhline(100 * dense_accuracy, color="gray", linestyle="--", label="dense")
    densities = sorted({d for points in curves.values() for d, _ in points}, reverse=True)
    ax.set_xscale("log")
    ax.set_xticks(densities, [f"{d:.3g}" for d in densities])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.invert_xaxis()
    ax.set_xlabel("density (kept fraction of prunable weights)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


# (density, mean, interval low, interval high) of one curve; the interval may be None (one seed)
Point = Tuple[float, float, Optional[float], Optional[float]]


def plot_with_intervals(curves: Mapping[str, Sequence[Point]], path, title: str = "Test accuracy against density",
                        steps: Optional[Mapping[str, Sequence[Point]]] = None,
                        dense_accuracy: Optional[float] = None) -> Path:
    """Mean accuracy against density on a log axis, one line per label with its interval as a band; with `steps`,
    the early-stopping iteration against density beside it, with its bands too."""
    import matplotlib  # only runs that plot pay for importing it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = [("test accuracy (%)", curves, 100.0)] + ([("early-stopping iteration", steps, 1.0)] if steps else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), dpi=120, squeeze=False)
    densities = sorted({p[0] for points in curves.values() for p in points}, reverse=True)
    for ax, (ylabel, lines, scale) in zip(axes[0], panels):
        for label, points in lines.items():
            ordered = sorted((p for p in points if p[1] is not None), key=lambda p: -p[0])
            x = [p[0] for p in ordered]
            line, = ax.plot(x, [scale * p[1] for p in ordered], "o-", label=label)
            banded = [p for p in ordered if p[2] is not None]
            if banded:
                ax.fill_between([p[0] for p in banded], [scale * p[2] for p in banded],
                                [scale * p[3] for p in banded], color=line.get_color(), alpha=0.2, linewidth=0)
        if scale == 100.0 and dense_accuracy is not None:
            ax.axhline(100 * dense_accuracy, color="gray", linestyle="--", label="dense")
        ax.set_xscale("log")
        ax.set_xticks(densities, [f"{d:.3g}" for d in densities])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.invert_xaxis()
        ax.set_xlabel("density (kept fraction of prunable weights)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title + " (bands: 95% confidence intervals over seeds)")
    return _save(fig, path)


def plot_distance_matrices(matrices: Mapping[str, Tuple[Sequence, Sequence[Sequence[float]]]], path,
                           title: str = "Mask distance") -> Path:
    """One heatmap per entry: {name: (tick labels, square matrix of distances)}, side by side."""
    import matplotlib  # only runs that plot pay for importing it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 4), dpi=120, squeeze=False)
    for ax, (name, (labels, matrix)) in zip(axes[0], matrices.items()):
        image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=max(max(map(max, matrix), default=0.0), 1e-6))
        ticks = range(0, len(labels), max(1, len(labels) // 8))
        ax.set_xticks(list(ticks), [str(labels[i]) for i in ticks])
        ax.set_yticks(list(ticks), [str(labels[i]) for i in ticks])
        ax.set_xlabel("epoch")
        ax.set_ylabel("epoch")
        ax.set_title(f"ratio {name}")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(title)
    return _save(fig, path)


def plot_instability(results: Sequence[dict], path) -> Path:
    """Instability analysis: the barrier against the rewind step, one line per level (left), and each path's test
    error against alpha (right)."""
    import matplotlib  # only runs that plot pay for importing it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for level in sorted({r["level"] for r in results}):
        rows = sorted((r for r in results if r["level"] == level), key=lambda r: r["rewind_step"])
        label = f"level {level} (density {rows[0]['density']:.3g})"
        left.plot([r["rewind_step"] for r in rows], [100 * r["barrier"] for r in rows], "o-", label=label)
        left.plot([r["rewind_step"] for r in rows], [100 * r["barrier_recomputed_bn"] for r in rows], "x--",
                  label=f"{label}, BN recomputed")
        for r in rows:
            right.plot(r["alphas"], [100 * e for e in r["test_error_interpolated_bn"]],
                       label=f"level {level} from {r['rewind_point']}")
    left.set_xlabel("rewind step (optimizer steps of the dense training)")
    left.set_ylabel("error barrier (points)")
    left.set_xscale("symlog")
    right.set_xlabel("alpha (0: copy a, 1: copy b)")
    right.set_ylabel("test error (%)")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Instability analysis (Frankle et al. 2020)")
    return _save(fig, path)


def _save(fig, path) -> Path:
    """Lay the figure out, write it as a PNG (atomically) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
