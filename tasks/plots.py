"""Result plots as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, also on machines without a display
import matplotlib.pyplot as plt  # noqa: E402

from foundations.files import replacing  # noqa: E402


def save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def bar_chart(table: dict[str, dict[str, float | None]], path: Path, ylabel: str) -> None:
    """Grouped bars: one group per row of ``table``, one bar per column (missing values left out)."""
    columns = list(next(iter(table.values())))
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(table), 3.2))
    width = 0.8 / len(columns)
    for j, column in enumerate(columns):
        shift = (j - (len(columns) - 1) / 2) * width
        xs = [i + shift for i, row in enumerate(table.values()) if row[column] is not None]
        ys = [row[column] for row in table.values() if row[column] is not None]
        bars = ax.bar(xs, ys, width, label=column)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(table)), list(table))
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="lower right")
    save(fig, path)


def line_chart(series: dict[str, tuple[list[float], list[float]]], path: Path, xlabel: str, ylabel: str) -> None:
    """One line with markers per entry of ``series``: name -> (xs, ys)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)
