"""Metrics with uncertainty. Pure numpy: lists in, numbers out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float  # bootstrap percentile interval
    high: float
    n: int

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}


def bootstrap_ci(values, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Estimate:
    """Mean with a percentile bootstrap interval (Efron & Tibshirani 1993): resample rows with replacement."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_resamples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return Estimate(float(values.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail)),
                    int(values.size))


def pairwise_outcomes(scores_chosen, scores_rejected) -> np.ndarray:
    """Per pair: 1 if the chosen side scores higher, 0 if lower, 0.5 on an exact tie."""
    chosen, rejected = np.asarray(scores_chosen, dtype=float), np.asarray(scores_rejected, dtype=float)
    return np.where(chosen > rejected, 1.0, np.where(chosen < rejected, 0.0, 0.5))


def pairwise_accuracy(scores_chosen, scores_rejected, seed: int = 0) -> Estimate:
    """Share of pairs where the reward model agrees with the label (ties count 0.5), with a bootstrap CI."""
    return bootstrap_ci(pairwise_outcomes(scores_chosen, scores_rejected), seed=seed)


def calibration_bins(predicted_prob, observed, n_bins: int = 10) -> list[dict]:
    """Reliability diagram data: mean predicted P(A > B) vs the observed share of A wins, per probability bin."""
    predicted, outcome = np.asarray(predicted_prob, dtype=float), np.asarray(observed, dtype=float)
    edges = np.linspace(0, 1, n_bins + 1)
    index = np.clip(np.digitize(predicted, edges[1:-1]), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        mask = index == b
        if mask.any():
            rows.append({"bin_low": float(edges[b]), "bin_high": float(edges[b + 1]), "n": int(mask.sum()),
                         "mean_predicted": float(predicted[mask].mean()), "observed": float(outcome[mask].mean())})
    return rows


def expected_calibration_error(bins: list[dict]) -> float:
    """ECE = sum over bins of (n_bin / n) * |observed - predicted| (Naeini et al. 2015)."""
    total = sum(b["n"] for b in bins)
    return float(sum(b["n"] / total * abs(b["observed"] - b["mean_predicted"]) for b in bins)) if total else float("nan")


def pearson(x, y) -> float:
    """Pearson correlation; NaN when either side is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])
