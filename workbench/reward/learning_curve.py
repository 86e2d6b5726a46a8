"""How many labels does the reward model need? Train on growing subsets, score one fixed held-out set."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from workbench.evaluation.reward_diagnostics import diagnose_reward_model
from workbench.reward.score import RewardModel
from workbench.reward.train import RewardModelConfig, train_reward_model


def reward_learning_curve(train_rows: list[dict], eval_rows: list[dict], sizes: list[int],
                          config: RewardModelConfig, out: str | Path) -> list[dict]:
    """One reward model per size (the first n training rows), each in <out>/n<size>/; returns one row per size
    with accuracy against the labels and, when config.oracle is set, against gold, both with 95% CIs."""
    curve = []
    for size in sorted(sizes):
        if size > len(train_rows):
            raise ValueError(f"size {size} is larger than the {len(train_rows)} training rows available")
        result = train_reward_model(train_rows[:size], replace(config, val_fraction=0.0, save_checkpoints=False), Path(out) / f"n{size}")
        diagnostics = diagnose_reward_model(RewardModel.load(result.model_dir), eval_rows, config.oracle, config.seed)
        row = {"n_labels": size, "train_seconds": round(result.seconds, 2), "accuracy": diagnostics["accuracy"]}
        if config.oracle:
            row["gold_accuracy"] = diagnostics["gold_accuracy"]
        curve.append(row)
    return curve
