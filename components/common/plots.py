"""Small matplotlib helpers for the steps' reports (PNG files embedded in report.md).

Figures are built with the object API (`matplotlib.figure.Figure`) on the Agg canvas: no pyplot global
state and no global backend switch (importing this module leaves a notebook's backend alone), no display
needed, safe in threads and in KFP containers. The output is deterministic for the
same data and matplotlib version (no timestamps in the PNG metadata), so reruns give identical bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PNG_METADATA = {"Software": None}  # the matplotlib version would make files differ across upgrades
DPI = 100


def _figure(width: float = 7.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="tight")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata=PNG_METADATA)
    return path


def histogram_png(values: Sequence[float] | Mapping[str, Sequence[float]], path: str | Path, title: str,
                  xlabel: str, *, vline: float | None = None, vline_label: str | None = None,
                  bins: int = 40, ylabel: str = "count") -> Path:
    """A histogram of one series, or of several overlaid (a mapping label -> values) on shared bins.

    `vline` draws a dashed vertical line, e.g. the max_seq_len limit on a token-length histogram.
    Empty series are left out; with no values at all the figure says so instead of failing.
    """
    if isinstance(values, Mapping):
        series = {label: list(v) for label, v in values.items()}
    else:
        series = {"": list(values)}
    series = {label: vals for label, vals in series.items() if vals}
    fig = _figure()
    ax = fig.add_subplot()
    if series:
        low = min(min(v) for v in series.values())
        high = max(max(v) for v in series.values())
        if vline is not None:
            high = max(high, vline)
        edges = _edges(low, high, bins)
        for label, vals in series.items():
            ax.hist(vals, bins=edges, alpha=0.6 if len(series) > 1 else 0.9, label=label or None)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    if vline is not None:
        ax.axvline(vline, color="black", linestyle="--", linewidth=1, label=vline_label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if any(series) or vline_label:
        ax.legend()
    return _save(fig, path)


def _edges(low: float, high: float, bins: int) -> list[float]:
    if high <= low:
        return [low - 0.5, low + 0.5]
    step = (high - low) / bins
    return [low + i * step for i in range(bins + 1)]


def loss_curve_png(train: Sequence[tuple[float, float]], path: str | Path, *,
                   eval: Sequence[tuple[float, float]] = (), title: str = "Loss",
                   xlabel: str = "step") -> Path:
    """Training (and eval) loss against the step: two lines from (step, loss) pairs.

    Eval points are marked, since there are usually few of them; an empty figure says so.
    """
    fig = _figure()
    ax = fig.add_subplot()
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], label="train", linewidth=1.2)
    if eval:
        ax.plot([s for s, _ in eval], [v for _, v in eval], label="eval", marker="o", linewidth=1.2)
    if not train and not eval:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    if train or eval:
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(fig, path)
