"""Tables and plots from a run's results."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .store import atomic_write

_COLUMNS = (("level", "level", "{}"), ("density", "density", "{:.4f}"), ("params", "params", "{:,}"),
            ("macs", "MACs", "{:,}"), ("val_accuracy", "val acc", "{:.2%}"), ("test_accuracy", "test acc", "{:.2%}"),
            ("train_seconds", "train s", "{:.1f}"))


def format_table(results: Sequence[dict]) -> str:
    """A plain-text table of per-ticket results (columns a result lacks are left out)."""
    columns = [c for c in _COLUMNS if any(c[0] in r for r in results)]
    rows = [[title for _, title, _ in columns]]
    rows += [[fmt.format(r[key]) if key in r else "" for key, _, fmt in columns] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_accuracy_vs_density(results: Sequence[dict], path, dense_line: bool = True,
                             title: str = "Test accuracy against density") -> Path:
    """Test accuracy against density on a log axis, with the dense (density 1) accuracy as a line."""
    import matplotlib  # only runs that plot pay for importing it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ordered = sorted(results, key=lambda r: -r["density"])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot([r["density"] for r in ordered], [100 * r["test_accuracy"] for r in ordered], "o-", label="tickets")
    dense = [r for r in ordered if r["density"] >= 1.0]
    if dense_line and dense:
        ax.axhline(100 * dense[0]["test_accuracy"], color="gray", linestyle="--", label="dense")
    ax.set_xscale("log")
    ax.set_xticks([r["density"] for r in ordered], [f"{r['density']:.3g}" for r in ordered])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.invert_xaxis()
    ax.set_xlabel("density (kept fraction of prunable weights)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
