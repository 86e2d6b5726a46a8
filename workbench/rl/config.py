"""Typed configuration of a stage-3 run (RLOO, GRPO, PPO or DPO)."""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.shaping import AnswerShaping

ALGORITHMS = ("rloo", "grpo", "ppo", "dpo")
VALUE_INITS = ("reward", "policy")


@dataclass
class RLConfig:
    policy: str = "smollm2-135m-instruct"  # registry name, local folder or Hub id; also the frozen reference
    reward: str | None = None  # folder of a trained reward model (runs/<name>/reward/model); not used by dpo
    algo: str = "rloo"
    steps: int = 30  # optimiser steps; ppo: rollout batches, each ppo_epochs x num_minibatches optimiser steps
    beta: float = 0.05  # KL coefficient: rloo subtracts beta*KL from the reward, grpo adds it to the loss, dpo's beta;
    # ppo subtracts beta*log(pi/pi_ref) from each token's reward (the adaptive controller's start with target_kl)
    learning_rate: float = 1e-5  # full fine-tune; LoRA uses lora_learning_rate
    lora: bool = False  # train LoRA adapters (peft) instead of all weights; merged into the saved policy
    lora_r: int = 16
    lora_learning_rate: float = 1e-4
    prompts_per_step: int = 2  # distinct prompts per optimiser step
    num_generations: int = 4  # completions per prompt (the RLOO/GRPO group; RLOO's leave-one-out baseline)
    max_new_tokens: int = 64  # token budget; answer shaping ends most replies earlier, as for the preference pairs
    shaping: AnswerShaping = field(default_factory=AnswerShaping)  # the same shaping as the pairs the RM learned on
    temperature: float = 0.7  # sampling temperature; TRL scores pi and pi_ref at the same temperature
    eos_penalty: float = 1.0  # reward subtracted from completions cut off (no EOS, no sentence end); 0 turns it off
    normalize_rewards: bool = True  # RM scores rescaled to mean 0, std 1 on the base policy's samples
    oracle: str | None = "helpful-upbeat-concise"  # gold labeler logged next to the proxy (weight 0); None to skip
    seed: int = 0
    bf16: bool | None = None  # bf16 autocast; None = on where bf16 math is native (`models.resolve_bf16`)
    gradient_checkpointing: bool = False  # TRL 1.16 turns it on by default: recomputes activations (slower steps)
    # to save memory, which only pays off when the policy barely fits
    save_steps: int = 10  # checkpoint every N steps (safetensors + optimizer + RNG state)
    snapshot_steps: tuple[int, ...] = ()  # also keep the policy's weights after these steps (rl/snapshots/step-N,
    # no optimiser state, so not for resuming): extra points for the evaluation's over-optimisation plot
    logging_steps: int = 1
    resume: bool = False  # continue from the last complete checkpoint in <out>/rl/checkpoints
    max_prompt_length: int = 256  # dpo: prompt tokens kept
    max_length: int = 512  # dpo: prompt + completion tokens kept
    # ppo (`workbench.rl.ppo`): each step samples prompts_per_step x num_generations completions, as rloo/grpo do
    ppo_epochs: int = 4  # passes over each rollout batch (TRL's default); each costs a policy forward + backward
    num_minibatches: int = 1  # shuffled minibatches per pass, one optimiser step each
    cliprange: float = 0.2  # epsilon of the clipped surrogate objective
    cliprange_value: float = 0.2  # how far a value prediction may move from the rollout's before its loss is clipped
    gamma: float = 1.0  # discount: 1, the reward comes once, at the end of the completion
    gae_lambda: float = 0.95
    vf_coef: float = 0.1  # weight of the value loss next to the policy loss
    target_kl: float | None = None  # adaptive KL controller's target, nats per completion; None = fixed beta
    kl_horizon: int = 10000  # adaptive controller's horizon in samples (Ziegler et al. 2019)
    value_init: str = "reward"  # value model from the reward model's backbone (when it reads the policy's tokens;
    # else a copy of the policy), or "policy": a scalar head on the policy itself (shared trunk, cheaper)

    def __post_init__(self) -> None:
        if isinstance(self.shaping, dict):  # read back from config.json / YAML
            self.shaping = AnswerShaping.from_dict(self.shaping)
        if self.algo not in ALGORITHMS:
            raise ValueError(f"algo must be one of {ALGORITHMS}, got {self.algo!r}")
        if self.algo != "dpo" and not self.reward:
            raise ValueError(f"algo={self.algo!r} needs a trained reward model: pass reward=<runs/NAME/reward/model>")
        if self.steps < 1 or self.prompts_per_step < 1 or self.max_new_tokens < 1:
            raise ValueError("steps, prompts_per_step and max_new_tokens must be >= 1")
        if self.algo in ("rloo", "grpo") and self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 for {self.algo} (a group baseline needs siblings)")
        if self.num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {self.num_generations}")
        if self.value_init not in VALUE_INITS:
            raise ValueError(f"value_init must be one of {VALUE_INITS}, got {self.value_init!r}")
        if self.ppo_epochs < 1 or self.num_minibatches < 1 or self.kl_horizon < 1:
            raise ValueError("ppo_epochs, num_minibatches and kl_horizon must be >= 1")
        if self.cliprange <= 0 or self.cliprange_value <= 0 or self.vf_coef < 0:
            raise ValueError("cliprange and cliprange_value must be > 0, vf_coef >= 0")
        if not (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise ValueError(f"gamma and gae_lambda must lie in [0, 1], got {self.gamma}, {self.gae_lambda}")
        if self.target_kl is not None and self.target_kl <= 0:
            raise ValueError(f"target_kl must be > 0 (or None for a fixed beta), got {self.target_kl}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for RL sampling, got {self.temperature}")
        self.snapshot_steps = tuple(int(step) for step in self.snapshot_steps)
        if any(step < 1 or step > self.steps for step in self.snapshot_steps):
            raise ValueError(f"snapshot_steps must lie in 1..steps={self.steps}, got {list(self.snapshot_steps)}")
        if self.save_steps < 1 or self.logging_steps < 1:
            raise ValueError("save_steps and logging_steps must be >= 1")
