"""Can the reward model be trusted? Accuracy with CIs, gold agreement, calibration, length correlation."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np

from workbench.evaluation.metrics import (
    bootstrap_ci,
    calibration_bins,
    expected_calibration_error,
    pairwise_accuracy,
    pearson,
)
from workbench.generation import completion_text, prompt_text
from workbench.oracles import get_oracle

if TYPE_CHECKING:
    from workbench.reward.score import RewardModel


def diagnose_reward_model(rm: RewardModel, rows: list[dict], oracle: str | None = None, seed: int = 0) -> dict:
    """All diagnostics on preference rows {prompt, chosen, rejected} (use held-out rows)."""
    prompts = [r["prompt"] for r in rows]
    chosen_texts = [completion_text(r["chosen"]) for r in rows]
    rejected_texts = [completion_text(r["rejected"]) for r in rows]
    chosen, rejected = np.array(rm.score(prompts, chosen_texts)), np.array(rm.score(prompts, rejected_texts))
    # Calibration: show each pair in a random orientation, then compare P(A > B) = sigmoid(r_A - r_B)
    # with whether A was the labelled winner (Bradley-Terry reliability diagram).
    flips = np.array([random.Random(seed * 1_000_003 + i).random() < 0.5 for i in range(len(rows))])
    margin = np.where(flips, rejected - chosen, chosen - rejected)  # r_A - r_B
    predicted = 1.0 / (1.0 + np.exp(-margin))
    observed = (~flips).astype(float)  # A is the chosen side when not flipped
    bins = calibration_bins(predicted, observed)
    scores = np.concatenate([chosen, rejected])
    lengths = np.array([len(t.split()) for t in chosen_texts + rejected_texts])
    result = {
        "n_pairs": len(rows),
        "accuracy": pairwise_accuracy(chosen, rejected, seed=seed).to_dict(),
        "scores_chosen": chosen.tolist(),
        "scores_rejected": rejected.tolist(),
        "calibration": bins,
        "ece": expected_calibration_error(bins),
        "lengths": lengths.tolist(),
        "scores": scores.tolist(),
        "length_correlation": pearson(lengths, scores),
    }
    if oracle:
        gold = get_oracle(oracle)
        gold_scores = np.array([gold(prompt_text(p), t) for p, t in zip(prompts + prompts, chosen_texts + rejected_texts)])
        g_chosen, g_rejected = gold_scores[: len(rows)], gold_scores[len(rows) :]
        agree = np.where((g_chosen == g_rejected) | (chosen == rejected), 0.5,
                         ((g_chosen > g_rejected) == (chosen > rejected)).astype(float))
        result["gold_accuracy"] = bootstrap_ci(agree, seed=seed).to_dict()
        result["gold_length_correlation"] = pearson(lengths, gold_scores)  # how much length the gold itself rewards
        result["gold_score_correlation"] = pearson(gold_scores, scores)
    return result
