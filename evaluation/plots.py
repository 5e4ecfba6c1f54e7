"""PNG plots of the evaluation results: IsoFLOPs curves, the power law, the downstream forecast and
the needle-in-a-haystack heatmap (the paper's Figures 2-4 [3.2.1]).

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), so no GUI backend or
global pyplot state is involved, and written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from evaluation.needle import NeedleResult
from evaluation.scaling_laws import DownstreamForecast, IsoFLOPsFit
from hf_llama3.checkpoint_io import atomic_output_file


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    with atomic_output_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return Path(path)


def plot_isoflops(fit: IsoFLOPsFit, path: str | os.PathLike) -> Path:
    """Validation loss against training tokens per budget, with each parabola and its minimum (Figure 2)."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"]
    budgets = sorted({p.compute for p in fit.points})
    colors = {budget: cmap(i / max(1, len(budgets) - 1)) for i, budget in enumerate(budgets)}
    for budget in budgets:  # every trained model, including budgets without a minimum
        at_budget = [p for p in fit.points if p.compute == budget]
        label = f"{budget:.1e} FLOPs (no minimum)" if budget in fit.skipped else None
        ax.scatter([p.tokens for p in at_budget], [p.loss for p in at_budget], color=colors[budget], s=18, label=label)
    for parabola in fit.parabolas:
        color = colors[parabola.compute]
        lo = min(parabola.tokens_min, parabola.tokens_opt) / 1.5
        hi = max(parabola.tokens_max, parabola.tokens_opt) * 1.5
        grid = np.logspace(np.log10(lo), np.log10(hi), 100)
        ax.plot(grid, parabola.loss(grid), color=color, label=f"{parabola.compute:.1e} FLOPs")
        ax.scatter([parabola.tokens_opt], [parabola.loss_opt], color=color, marker="*", s=120, edgecolor="black")
    ax.set_xscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss")
    ax.set_title("IsoFLOPs curves (stars: compute-optimal)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_power_law(
    fit: IsoFLOPsFit, path: str | os.PathLike, extrapolate_to: float | None = None, confidence: float = 0.95
) -> Path:
    """Compute-optimal tokens against compute with the fitted power law and its bootstrap band (Figure 3)."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    compute = np.array([p.compute for p in fit.parabolas])
    tokens = np.array([p.tokens_opt for p in fit.parabolas])
    upper = max(compute.max(), extrapolate_to or 0.0)
    grid = np.logspace(np.log10(compute.min()) - 0.2, np.log10(upper) + 0.2, 100)
    band = np.array([fit.law.interval(c, confidence) for c in grid])
    ax.fill_between(
        grid, band[:, 0], band[:, 1], color=matplotlib.colormaps["Blues"](0.3), label=f"{confidence:.0%} band"
    )
    ax.plot(grid, fit.law.predict(grid), color="tab:blue", label=f"N* = {fit.law.A:.3g} C^{fit.law.alpha:.3f}")
    ax.scatter(compute, tokens, color="black", zorder=3, label="parabola minima")
    if extrapolate_to:
        ax.scatter([extrapolate_to], [fit.law.predict(extrapolate_to)], marker="*", s=150, color="tab:red", zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute (FLOPs)")
    ax.set_ylabel("compute-optimal training tokens")
    ax.set_title("Scaling law")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_forecast(
    forecast: DownstreamForecast,
    path: str | os.PathLike,
    compute: Sequence[float],
    nll: Sequence[float],
    sigmoid_nll: Sequence[float],
    sigmoid_accuracy: Sequence[float],
) -> Path:
    """The two forecast stages side by side: NLL against FLOPs, accuracy against NLL (Figure 4)."""
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    compute = np.asarray(compute, dtype=float)
    grid = np.logspace(np.log10(compute.min()) - 0.5, np.log10(compute.max()) + 2, 100)
    left.scatter(compute, nll, color="black")
    left.plot(grid, forecast.nll_fit(grid), color="tab:blue")
    left.set_xscale("log")
    left.set_xlabel("training FLOPs")
    left.set_ylabel("normalized NLL of correct answer")
    nll_grid = np.linspace(min(sigmoid_nll) - 0.2, max(sigmoid_nll) + 0.2, 100)
    right.scatter(sigmoid_nll, sigmoid_accuracy, color="black")
    right.plot(nll_grid, forecast.accuracy_fit(nll_grid), color="tab:orange")
    right.invert_xaxis()
    right.set_xlabel("normalized NLL of correct answer")
    right.set_ylabel("accuracy")
    fig.suptitle("Two-stage downstream forecast")
    return _save(fig, path)


def plot_needle_heatmap(result: NeedleResult, path: str | os.PathLike, title: str = "Needle-in-a-haystack") -> Path:
    """Retrieval score per (depth, context length) cell: green solved, red missed."""
    fig = Figure(figsize=(1.2 + 0.8 * len(result.lengths), 1.2 + 0.5 * len(result.depths)))
    ax = fig.add_subplot()
    image = ax.imshow(result.scores.T, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(result.lengths)), [str(n) for n in result.lengths], rotation=45)
    ax.set_yticks(range(len(result.depths)), [f"{d:.0%}" for d in result.depths])
    for i in range(len(result.lengths)):
        for j in range(len(result.depths)):
            ax.text(i, j, f"{result.scores[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(f"{title} (mean {result.mean_score:.2f})")
    fig.colorbar(image, ax=ax, label="retrieval score")
    return _save(fig, path)
