"""Scaling-law fits of the Llama 3 paper [3.2.1]: IsoFLOPs parabolas, the compute-optimal power law,
and the two-stage downstream forecast.

The paper trains models of several sizes at each compute budget C (6e18 to 1e22 FLOPs), fits a
second-degree polynomial of validation loss against log training tokens per budget and takes its
minimum as the compute-optimal token count. A power law through those minima,
``N*(C) = A * C**alpha``, is fitted in log-log space (the paper reports alpha = 0.53, A = 0.29).
Model size follows from the dense training-FLOPs rule ``C = 6 * params * tokens`` [3.2.1].

Note on the paper's numbers: the rounded constants do not reproduce the paper's own extrapolation.
0.29 * (3.8e25)**0.53 is 10.46T tokens, not 16.55T; 16.55T with A = 0.29 needs alpha = 0.5378; and
402B params x 16.55T tokens x 6 is 3.99e25 FLOPs, not 3.8e25 (C / (6 * 16.55T) is 382.7B).
``tests/evaluation/test_scaling_laws.py`` pins each of these facts.

Downstream forecast [3.2.1, Figure 4]: (1) the normalized negative log-likelihood of the correct
answer is linear in log training FLOPs; (2) accuracy is a sigmoid of that NLL, fitted on the
scaling-law models plus larger models trained earlier (so stage 2 takes its own data).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import curve_fit

logger = logging.getLogger(__name__)

# [3.2.1] dense training FLOPs per parameter per token (forward + backward).
FLOPS_PER_PARAM_TOKEN = 6.0


@dataclass(frozen=True)
class SweepPoint:
    """One trained model of an IsoFLOPs sweep: its budget, size, training tokens and validation loss."""

    compute: float
    params: float
    tokens: float
    loss: float

    def __post_init__(self) -> None:
        for name in ("compute", "params", "tokens"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"SweepPoint.{name} must be a positive finite number, got {value!r}.")
        if not math.isfinite(self.loss):
            raise ValueError(f"SweepPoint.loss must be finite, got {self.loss!r} (did the run diverge?).")


@dataclass(frozen=True)
class ParabolaFit:
    """``loss = a * x**2 + b * x + c`` with ``x = log10(tokens)`` for one compute budget."""

    compute: float
    a: float
    b: float
    c: float
    tokens_min: float  # smallest token count trained at this budget
    tokens_max: float  # largest token count trained at this budget

    @property
    def log10_tokens_opt(self) -> float:
        return -self.b / (2.0 * self.a)

    @property
    def tokens_opt(self) -> float:
        """Compute-optimal training tokens: the vertex of the parabola."""
        return 10.0**self.log10_tokens_opt

    @property
    def loss_opt(self) -> float:
        x = self.log10_tokens_opt
        return self.a * x * x + self.b * x + self.c

    @property
    def extrapolated(self) -> bool:
        """True when the minimum lies outside the sampled token range (add sizes on that side)."""
        return not (self.tokens_min <= self.tokens_opt <= self.tokens_max)

    def loss(self, tokens: np.ndarray | float) -> np.ndarray:
        x = np.log10(np.asarray(tokens, dtype=float))
        return self.a * x * x + self.b * x + self.c


def fit_parabola(compute: float, tokens: Sequence[float], losses: Sequence[float]) -> ParabolaFit:
    """Fit the per-budget parabola of loss against log10 tokens [3.2.1] and return it."""
    t = np.asarray(tokens, dtype=float)
    y = np.asarray(losses, dtype=float)
    if t.shape != y.shape or t.ndim != 1:
        raise ValueError(f"tokens and losses must be 1-D and equally long, got {t.shape} and {y.shape}.")
    if np.unique(t).size < 3:
        raise ValueError(
            f"budget {compute:.3g}: a parabola needs at least 3 distinct token counts (model sizes), "
            f"got {np.unique(t).size}; add model sizes to the sweep."
        )
    if np.any(t <= 0) or not np.all(np.isfinite(y)):
        raise ValueError(f"budget {compute:.3g}: tokens must be positive and losses finite.")
    a, b, c = np.polyfit(np.log10(t), y, deg=2)
    if a <= 0:
        raise ValueError(
            f"budget {compute:.3g}: loss is not convex in log tokens (curvature {a:.3g}), so there is no "
            "minimum; sample model sizes on both sides of the optimum."
        )
    fit = ParabolaFit(float(compute), float(a), float(b), float(c), float(t.min()), float(t.max()))
    if fit.extrapolated:
        logger.warning(
            "budget %.3g: the optimum %.3g tokens lies outside the sampled range [%.3g, %.3g]",
            compute,
            fit.tokens_opt,
            fit.tokens_min,
            fit.tokens_max,
        )
    return fit


@dataclass
class PowerLawFit:
    """``N*(C) = A * C**alpha``, fitted by least squares on ``log10 N* = log10 A + alpha * log10 C``.

    ``covariance`` is the 2x2 covariance of (alpha, log10 A) from the least-squares residuals (NaN
    with only two budgets). ``bootstrap`` holds residual-bootstrap samples of (alpha, log10 A), from
    which :meth:`interval` reads prediction intervals.
    """

    alpha: float
    log10_A: float
    covariance: np.ndarray
    bootstrap: np.ndarray = field(repr=False)

    @property
    def A(self) -> float:
        return 10.0**self.log10_A

    @property
    def alpha_stderr(self) -> float:
        return float(math.sqrt(self.covariance[0, 0]))

    def predict(self, compute: np.ndarray | float) -> np.ndarray | float:
        """Compute-optimal training tokens at ``compute`` FLOPs."""
        return 10.0 ** (self.log10_A + self.alpha * np.log10(compute))

    def interval(self, compute: float, confidence: float = 0.95) -> tuple[float, float]:
        """Bootstrap percentile interval of the predicted tokens at ``compute``."""
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
        logs = self.bootstrap[:, 1] + self.bootstrap[:, 0] * math.log10(compute)
        lo, hi = np.quantile(logs, [(1 - confidence) / 2, (1 + confidence) / 2])
        return float(10.0**lo), float(10.0**hi)

    def to_dict(self) -> dict:
        return {
            "alpha": self.alpha,
            "A": self.A,
            "log10_A": self.log10_A,
            "alpha_stderr": self.alpha_stderr,
            "covariance_alpha_log10A": self.covariance.tolist(),
            "alpha_ci95": np.quantile(self.bootstrap[:, 0], [0.025, 0.975]).tolist(),
        }


def fit_power_law(
    compute: Sequence[float], tokens: Sequence[float], n_bootstrap: int = 2000, seed: int = 0
) -> PowerLawFit:
    """Fit ``tokens = A * compute**alpha`` through compute-optimal points, with uncertainty."""
    x = np.log10(np.asarray(compute, dtype=float))
    y = np.log10(np.asarray(tokens, dtype=float))
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("compute and tokens must be 1-D and equally long.")
    if np.unique(x).size < 2:
        raise ValueError(f"a power law needs at least 2 distinct compute budgets, got {np.unique(x).size}.")
    design = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residuals = y - design @ coef
    dof = x.size - 2
    if dof > 0:
        sigma2 = float(residuals @ residuals) / dof
        covariance = sigma2 * np.linalg.inv(design.T @ design)
    else:
        covariance = np.full((2, 2), np.nan)
    # Residual bootstrap: resampling budgets themselves degenerates with few budgets.
    rng = np.random.default_rng(seed)
    fitted = design @ coef
    samples = np.empty((n_bootstrap, 2))
    for i in range(n_bootstrap):
        y_star = fitted + rng.choice(residuals, size=residuals.size, replace=True)
        samples[i], *_ = np.linalg.lstsq(design, y_star, rcond=None)
    return PowerLawFit(alpha=float(coef[0]), log10_A=float(coef[1]), covariance=covariance, bootstrap=samples)


@dataclass(frozen=True)
class ComputeOptimal:
    """The compute-optimal model at one budget: tokens from the law, params from C = 6ND [3.2.1]."""

    compute: float
    tokens: float
    params: float


def compute_optimal(law: PowerLawFit | tuple[float, float], compute: float) -> ComputeOptimal:
    """Extrapolate a law (a fit, or the paper's ``(alpha, A)``) to ``compute`` FLOPs."""
    if not compute > 0:
        raise ValueError(f"compute must be positive, got {compute}.")
    if isinstance(law, PowerLawFit):
        tokens = float(law.predict(compute))
    else:
        alpha, a = law
        tokens = a * compute**alpha
    return ComputeOptimal(compute=compute, tokens=tokens, params=compute / (FLOPS_PER_PARAM_TOKEN * tokens))


@dataclass
class IsoFLOPsFit:
    """Everything fitted from one sweep: a parabola per budget and the power law through the minima."""

    points: list[SweepPoint]
    parabolas: list[ParabolaFit]
    law: PowerLawFit
    skipped: dict[float, str] = field(default_factory=dict)  # budget -> why it has no parabola minimum

    def to_dict(self) -> dict:
        return {
            "points": [asdict(p) for p in self.points],
            "budgets": [
                {
                    "compute": p.compute,
                    "tokens_opt": p.tokens_opt,
                    "params_opt": p.compute / (FLOPS_PER_PARAM_TOKEN * p.tokens_opt),
                    "loss_opt": p.loss_opt,
                    "extrapolated": p.extrapolated,
                    "parabola": [p.a, p.b, p.c],
                }
                for p in self.parabolas
            ],
            "power_law": self.law.to_dict(),
            "skipped_budgets": {f"{c:.6g}": reason for c, reason in self.skipped.items()},
        }


def fit_isoflops(
    points: Iterable[SweepPoint], n_bootstrap: int = 2000, seed: int = 0, skip_invalid: bool = False
) -> IsoFLOPsFit:
    """Fit a parabola per compute budget, then the power law through the parabolas' minima [3.2.1].

    With ``skip_invalid``, a budget whose losses have no parabola minimum (too few sizes, not convex) is
    left out of the power law and reported in ``IsoFLOPsFit.skipped`` instead of failing the whole fit.
    """
    points = list(points)
    if not points:
        raise ValueError("no sweep results to fit: the sweep produced no points.")
    budgets = sorted({p.compute for p in points})
    parabolas, skipped = [], {}
    for budget in budgets:
        at_budget = [p for p in points if p.compute == budget]
        try:
            parabolas.append(fit_parabola(budget, [p.tokens for p in at_budget], [p.loss for p in at_budget]))
        except ValueError as err:
            if not skip_invalid:
                raise
            logger.warning("skipping budget %.3g: %s", budget, err)
            skipped[budget] = str(err)
    if len(parabolas) < 2 and skipped:
        raise ValueError(
            f"only {len(parabolas)} of {len(budgets)} budgets have a loss minimum, a power law needs 2: "
            + "; ".join(skipped.values())
        )
    law = fit_power_law(
        [p.compute for p in parabolas], [p.tokens_opt for p in parabolas], n_bootstrap=n_bootstrap, seed=seed
    )
    return IsoFLOPsFit(points=points, parabolas=parabolas, law=law, skipped=skipped)


def load_sweep_points(path: str | os.PathLike) -> list[SweepPoint]:
    """Read sweep results from a JSONL file (one ``{"compute", "params", "tokens", "loss"}`` per line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep results file {path} does not exist; run `hf-llama3 scaling-law sweep` first.")
    points = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            points.append(SweepPoint(**{k: float(record[k]) for k in ("compute", "params", "tokens", "loss")}))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(
                f"{path}:{lineno}: expected a JSON object with compute, params, tokens, loss ({err})."
            ) from err
    return points


# ---------------------------------------------------------------------------------------------
# Two-stage downstream forecast [3.2.1, Figure 4]


@dataclass(frozen=True)
class LinearFit:
    """Stage 1: ``nll = slope * log10(compute) + intercept``."""

    slope: float
    intercept: float

    def __call__(self, compute: np.ndarray | float) -> np.ndarray | float:
        return self.slope * np.log10(compute) + self.intercept


@dataclass(frozen=True)
class SigmoidFit:
    """Stage 2: ``acc = chance + (ceiling - chance) / (1 + exp(steepness * (nll - midpoint)))``.

    ``chance`` is the benchmark's random-guess accuracy (0.25 for four-way multiple choice); it is
    given, not fitted, because small models sit on it and carry no information about it.
    """

    chance: float
    ceiling: float
    steepness: float
    midpoint: float

    def __call__(self, nll: np.ndarray | float) -> np.ndarray | float:
        return _sigmoid_accuracy(
            np.asarray(nll, dtype=float), self.ceiling, self.steepness, self.midpoint, self.chance
        )


def _sigmoid_accuracy(nll, ceiling, steepness, midpoint, chance):
    return chance + (ceiling - chance) / (1.0 + np.exp(steepness * (nll - midpoint)))


def fit_nll_vs_compute(compute: Sequence[float], nll: Sequence[float]) -> LinearFit:
    """Stage 1: least-squares line of normalized NLL of the correct answer against log10 FLOPs."""
    x = np.log10(np.asarray(compute, dtype=float))
    y = np.asarray(nll, dtype=float)
    if x.shape != y.shape or np.unique(x).size < 2:
        raise ValueError("stage 1 needs equally long compute and nll arrays with at least 2 distinct budgets.")
    slope, intercept = np.polyfit(x, y, deg=1)
    return LinearFit(float(slope), float(intercept))


def fit_nll_to_accuracy(nll: Sequence[float], accuracy: Sequence[float], chance: float = 0.0) -> SigmoidFit:
    """Stage 2: sigmoid from normalized NLL to accuracy, fitted on all available models."""
    x = np.asarray(nll, dtype=float)
    y = np.asarray(accuracy, dtype=float)
    if x.shape != y.shape or x.size < 4:
        raise ValueError(f"stage 2 needs at least 4 (nll, accuracy) pairs of equal length, got {x.size}.")
    if not 0 <= chance < 1 or np.any((y < 0) | (y > 1)):
        raise ValueError("accuracies and chance must lie in [0, 1].")
    spread = float(np.ptp(x)) or 1.0
    p0 = [max(float(y.max()), chance + 1e-3), 4.0 / spread, float(np.median(x))]
    bounds = ([chance + 1e-6, 1e-6, -np.inf], [1.0, np.inf, np.inf])
    try:
        (ceiling, steepness, midpoint), _ = curve_fit(
            lambda n, c, k, m: _sigmoid_accuracy(n, c, k, m, chance), x, y, p0=p0, bounds=bounds, maxfev=20000
        )
    except RuntimeError as err:
        raise ValueError(f"stage 2 sigmoid fit did not converge ({err}); add models across the NLL range.") from err
    return SigmoidFit(chance=chance, ceiling=float(ceiling), steepness=float(steepness), midpoint=float(midpoint))


@dataclass(frozen=True)
class DownstreamForecast:
    """Compose the two stages: FLOPs -> normalized NLL -> accuracy."""

    nll_fit: LinearFit
    accuracy_fit: SigmoidFit

    def predict(self, compute: np.ndarray | float) -> tuple[np.ndarray | float, np.ndarray | float]:
        nll = self.nll_fit(compute)
        return nll, self.accuracy_fit(nll)


def fit_downstream_forecast(
    compute: Sequence[float],
    nll: Sequence[float],
    sigmoid_nll: Sequence[float],
    sigmoid_accuracy: Sequence[float],
    chance: float = 0.0,
) -> DownstreamForecast:
    """Fit both stages: ``(compute, nll)`` from the scaling-law models for stage 1, and
    ``(sigmoid_nll, sigmoid_accuracy)`` from those plus larger models for stage 2."""
    return DownstreamForecast(
        fit_nll_vs_compute(compute, nll), fit_nll_to_accuracy(sigmoid_nll, sigmoid_accuracy, chance)
    )
