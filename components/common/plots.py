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


def grouped_bar_png(panels: Mapping[str, Mapping[str, Mapping[str, float | None]]], path: str | Path, *,
                    title: str | None = None, log_scale: Sequence[str] = (), ylabel: str = "") -> Path:
    """Grouped bars, one panel per entry: panel title -> category -> series -> value.

    E.g. {"Task metrics": {"json_valid": {"base": 0.1, "tuned": 0.9}, ...}, "Perplexity": {...}} draws
    base and tuned side by side for each metric, with the values written on the bars. Panels named in
    `log_scale` use a log y axis (perplexities that differ by orders of magnitude). A None value is
    drawn as a missing bar labelled "n/a"; a panel without categories says "no data".
    """
    panels = {name: cats for name, cats in panels.items()} or {"": {}}
    fig = _figure(width=max(6.0, 4.5 * len(panels)), height=4.2)
    for k, (name, categories) in enumerate(panels.items(), 1):
        ax = fig.add_subplot(1, len(panels), k)
        series = list(dict.fromkeys(s for values in categories.values() for s in values))
        if not categories or not series:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(name)
            continue
        width = 0.8 / len(series)
        log = name in log_scale
        for j, label in enumerate(series):
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(categories))]
            vals = [categories[c].get(label) for c in categories]
            heights = [v if v is not None else 0.0 for v in vals]
            bars = ax.bar(xs, heights, width=width * 0.95, label=label)
            for bar, v in zip(bars, vals, strict=True):
                text = "n/a" if v is None else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
                y = bar.get_height() if v is not None else 0.0
                ax.annotate(text, (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom",
                            fontsize=8, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(categories)), list(categories), rotation=20, ha="right")
        positive = [v for c in categories.values() for v in c.values() if v is not None and v > 0]
        if log and positive:
            ax.set_yscale("log")
            ax.set_ylim(min(positive) / 1.5, max(positive) * 2.5)  # room for the value labels
        else:
            top = max((v for c in categories.values() for v in c.values() if v is not None), default=1.0)
            ax.set_ylim(0, (top if top > 0 else 1.0) * 1.15)
        ax.set_title(name)
        if ylabel:
            ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
