"""Stage 2: reward model training (TRL RewardTrainer) and scoring."""

from workbench.reward.score import RewardModel, reward_text
from workbench.reward.train import (
    RewardModelConfig,
    RewardTrainResult,
    train_reward_model,
)

__all__ = ["RewardModel", "RewardModelConfig", "RewardTrainResult", "reward_text", "train_reward_model"]
