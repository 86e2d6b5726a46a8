"""Evaluation: metrics with confidence intervals (reward-model diagnostics now; RL evaluation later)."""

from workbench.evaluation.metrics import (
    bootstrap_ci,
    calibration_bins,
    pairwise_accuracy,
    pearson,
)

__all__ = ["bootstrap_ci", "calibration_bins", "pairwise_accuracy", "pearson"]
