"""The consoles' charts: SVG drawn by matplotlib on the server, so a page fetches nothing and runs no script."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on a server
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def segment_map_svg(points: np.ndarray, segments: np.ndarray, names: dict[int, str]) -> bytes:
    """points (N, 2) coloured by segments (N,), one legend entry per segment name."""
    figure, axes = plt.subplots(figsize=(7, 5), dpi=100)
    colours = plt.get_cmap("tab10")
    for segment in sorted(set(segments.tolist())):
        mine = segments == segment
        axes.scatter(points[mine, 0], points[mine, 1], s=8, alpha=0.7, color=colours(segment % 10),
                     label=names.get(segment, f"segment {segment}"))
    axes.set_xlabel("first principal axis of the profile vectors")
    axes.set_ylabel("second principal axis")
    axes.legend(loc="best", fontsize=8, markerscale=2)
    return _svg(figure)


def by_round_svg(rounds: list[int], series: dict[str, list[float | None]], *, ylabel: str) -> bytes:
    """One line per series over rounds (None: that round has no figure)."""
    figure, axes = plt.subplots(figsize=(7, 3.2), dpi=100)
    for name, values in series.items():
        points = [(r, v) for r, v in zip(rounds, values) if v is not None]
        if points:
            axes.plot(*zip(*points), marker="o", markersize=3, label=name)
    axes.set_xlabel("round")
    axes.set_ylabel(ylabel)
    if series:
        axes.legend(loc="best", fontsize=8)
    axes.grid(alpha=0.3)
    return _svg(figure)


def _svg(figure) -> bytes:
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="svg")
    plt.close(figure)
    return out.getvalue()
