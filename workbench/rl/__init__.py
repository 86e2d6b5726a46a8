"""Stage 3: RL fine-tuning (RLOO, GRPO) against the reward model with a KL penalty, or DPO from preferences."""

from workbench.rl.config import ALGORITHMS, RLConfig
from workbench.rl.train import RLResult, train_policy

__all__ = ["ALGORITHMS", "RLConfig", "RLResult", "train_policy"]
