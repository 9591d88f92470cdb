"""The figures of a run's sampler history (§6 of the paper), drawn with matplotlib's Agg canvas.

``probabilities.png`` (the distribution after each update, and its entropy),
``average_weights.png`` (Figure 2), ``validation_loss.png`` (meta-test losses) and
``cumulative_reward.png`` (cumulative R(τ); against a uniform baseline, Figure 3).
The command line is ``plot_sampler_history.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .history import (
    average_distribution,
    by_step,
    cumulative_reward,
    has_probabilities,
    number,
    objective_names,
    reward_difference,
    run_label,
)

logger = logging.getLogger(__name__)

PLOT_FILENAMES = ("probabilities.png", "average_weights.png", "validation_loss.png", "cumulative_reward.png")


def _figure(nrows: int = 1, height: float = 4.0):
    # A bare Figure renders through Agg without pyplot: no display, no global backend switch.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, 1, sharex=nrows > 1, squeeze=False)[:, 0]
    return fig, list(axes)


def _colors(names: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _plot_probabilities(rows, names, colors, label, path: Path) -> bool:
    with_p = [r for r in rows if has_probabilities(r)]
    if not with_p:
        return False
    entropy = [(r["step"], number(r.get("entropy"))) for r in rows if number(r.get("entropy")) is not None]
    fig, axes = _figure(2 if entropy else 1)
    steps = [r["step"] for r in with_p]
    for name in names:
        values = [number(r["probabilities"].get(name)) for r in with_p]
        # A distribution holds from its update until the next one: draw it as a step function.
        axes[0].step(steps, [v if v is not None else float("nan") for v in values], where="post",
                     label=name, color=colors[name])
    axes[0].set_ylabel("sampling probability")
    axes[0].set_ylim(bottom=0)
    axes[0].set_title(f"{label}: sampling distribution after each update")
    axes[0].legend(loc="best", fontsize="small")
    axes[0].grid(alpha=0.3)
    if entropy:
        axes[1].step([s for s, _ in entropy], [e for _, e in entropy], where="post", color="black")
        axes[1].set_ylabel("entropy H")
        axes[1].grid(alpha=0.3)
    axes[-1].set_xlabel("training step")
    fig.savefig(path, dpi=100)
    return True


def _plot_average(rows, names, colors, label, path: Path) -> bool:
    avg = average_distribution(rows)
    if not avg:
        return False
    fig, (ax,) = _figure(1)
    bars = ax.bar(list(avg), list(avg.values()), color=[colors.get(n, "gray") for n in avg])
    ax.bar_label(bars, fmt="%.3f", fontsize="small")
    ax.axhline(1 / len(avg), color="gray", linestyle="--", linewidth=1, label="uniform")
    ax.set_ylabel("average sampling weight")
    ax.set_title(f"{label}: sampling weights averaged over training (Figure 2)")
    ax.legend(loc="best", fontsize="small")
    fig.savefig(path, dpi=100)
    return True


def _plot_val_loss(rows, names, colors, label, path: Path) -> bool:
    series = {}
    for name in names:
        points = [(r["step"], number((r.get("val_loss") or {}).get(name))) for r in rows]
        points = [(s, v) for s, v in points if v is not None]
        if points:
            series[name] = points
    if not series:
        return False
    fig, (ax,) = _figure(1)
    for name, points in series.items():
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3,
                label=name, color=colors[name])
    ax.set_xlabel("training step")
    ax.set_ylabel("validation loss (meta-test)")
    ax.set_title(f"{label}: validation loss per objective")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    return True


def _plot_reward(rows, baseline_rows, label, base_label, path: Path) -> bool:
    steps, cum = cumulative_reward(rows)
    if not steps:
        return False
    base_steps, base_cum = cumulative_reward(baseline_rows or [])
    diff_steps, diff = reward_difference(rows, baseline_rows) if base_steps else ([], [])
    fig, axes = _figure(2 if diff_steps else 1)
    axes[0].plot(steps, cum, label=label, color="C0")
    if base_steps:
        axes[0].plot(base_steps, base_cum, label=base_label, color="C1")
    axes[0].set_ylabel("cumulative reward ΣR(τ)")
    axes[0].set_title("Cumulative reward over meta-tests")
    axes[0].legend(loc="best", fontsize="small")
    axes[0].grid(alpha=0.3)
    if diff_steps:
        axes[1].plot(diff_steps, diff, color="C0", label=f"{label} − {base_label}")
        axes[1].axhline(0, color="C1", linewidth=1, label=base_label)
        axes[1].set_ylabel("difference of cumulative reward")
        axes[1].set_title(f"{label} minus {base_label} (Figure 3)")
        axes[1].legend(loc="best", fontsize="small")
        axes[1].grid(alpha=0.3)
    elif baseline_rows is not None:
        logger.warning("baseline has no rewards overlapping this run's steps; cumulative_reward.png shows this run only")
    axes[-1].set_xlabel("training step")
    fig.savefig(path, dpi=100)
    return True


def plot_history(rows: Iterable[Mapping], output_dir: str | os.PathLike,
                 baseline_rows: Iterable[Mapping] | None = None) -> list[Path]:
    """Write the PNG plots of a run's history to ``output_dir``; returns the files written.

    - ``probabilities.png``: sampling probability per objective vs step (plus entropy).
    - ``average_weights.png``: average sampling weight per objective (Figure 2).
    - ``validation_loss.png``: meta-test validation loss per objective vs step.
    - ``cumulative_reward.png``: cumulative R(τ); with ``baseline_rows`` (a uniform run) also
      the baseline and the difference run − baseline on the baseline's steps (Figure 3, see
      :func:`reward_difference` for the alignment).

    A plot whose data is absent from the history (no probabilities, no validation losses, no
    rewards) is skipped with an info message rather than drawn empty.
    """
    rows = by_step(rows)
    baseline = by_step(baseline_rows) if baseline_rows is not None else None
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = objective_names(rows + (baseline or []))
    colors = _colors(names)
    label = run_label(rows, "run")
    base_label = run_label(baseline, "baseline") if baseline is not None else "baseline"
    if baseline is not None and base_label == label:
        base_label += " (baseline)"

    written = []
    jobs = [
        ("probabilities.png", lambda p: _plot_probabilities(rows, names, colors, label, p)),
        ("average_weights.png", lambda p: _plot_average(rows, names, colors, label, p)),
        ("validation_loss.png", lambda p: _plot_val_loss(rows, names, colors, label, p)),
        ("cumulative_reward.png", lambda p: _plot_reward(rows, baseline, label, base_label, p)),
    ]
    for filename, draw in jobs:
        path = out / filename
        if draw(path):
            written.append(path)
        else:
            logger.info("skipping %s: the history has no data for it", filename)
    return written


__all__ = ["PLOT_FILENAMES", "plot_history"]
