"""RLHF workbench: stage 1 (pretrained LM), stage 2 (preferences, reward model), stage 3 (RL, evaluation)."""

from workbench.data import PromptRecord, builtin_prompts, load_prompts, load_texts
from workbench.generation import (
    Completion,
    SamplingConfig,
    completion_logprobs,
    generate,
    text_logprobs,
)
from workbench.models import (
    REGISTRY,
    load_policy,
    load_reward_backbone,
    prepare_offline_copy,
    resolve_model,
)
from workbench.runs import RunDir, load_config

__all__ = [
    "REGISTRY", "Completion", "PromptRecord", "RunDir", "SamplingConfig", "builtin_prompts", "completion_logprobs",
    "generate", "load_config", "load_policy", "load_prompts", "load_reward_backbone", "load_texts",
    "prepare_offline_copy", "resolve_model", "text_logprobs",
]
