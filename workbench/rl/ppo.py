"""PPO with a value model (Schulman et al. 2017), as Ziegler et al. 2019 and InstructGPT use it for language models.

Written for the workbench from the papers, TRL's last PPOTrainer, lm-human-preferences and "The N+ implementation
details of RLHF with PPO" (Huang et al. 2024). One step = one rollout batch of prompts_per_step x num_generations
completions (as many samples as an RLOO/GRPO step), then ppo_epochs passes over it in num_minibatches shuffled
minibatches, one optimiser step each: `steps` rollouts make steps x ppo_epochs x num_minibatches optimiser steps.
Shapes: B completions on this process, P prompt tokens (left-padded), T completion tokens (right-padded), V the
vocabulary. A per-token tensor is (B, T): entry t belongs to completion token y_t, sampled in state (x, y_<t).

Checklist: each detail is marked `# [n]` where it happens (tests/test_ppo.py checks these line numbers).
 [1] rollouts from `generation.generate`, plain tempered sampling (top_p=1, top_k=0)            line 312
 [2] log pi, log pi_ref at the sampling temperature, teacher-forced over the kept tokens, padding masked  line 282
 [3] value model: the RM's backbone (only if it reads the policy's tokens), else a copy of the policy;
     or a scalar head on the policy (value_init="policy"); its head starts at 0                       line 168
 [4] dropout off in every model                                                                     line 225
 [5] reward: normalised RM score (+ EOS penalty) at the last token, minus beta * (log pi - log pi_ref) per token
                                                                                                    line 83
 [6] GAE with gamma = 1, lambda = 0.95                                                              line 94
 [7] advantage whitening (over all processes)                                                       line 295
 [8] clipped surrogate objective, epsilon = 0.2                                                     line 107
 [9] clipped value loss                                                                             line 116
[10] several epochs over shuffled minibatches per rollout batch                                     line 342
[11] adaptive KL controller (Ziegler et al. 2019: target KL, horizon), or a fixed beta             line 136
[12] learning rate annealed linearly to 0 over all optimiser steps                                  line 242
[13] gradient clipping (norm 1.0)                                                                   line 355
[14] fp32 master weights; bf16 autocast only where `models.resolve_bf16` says                      line 206
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
from trl.trainer.utils import disable_dropout_in_model, entropy_from_logits, selective_log_softmax

from workbench.distributed import per_process
from workbench.generation import SamplingConfig, format_prompt, generate, prompt_text
from workbench.models import load_tokenizer, resolve_bf16, resolve_model
from workbench.oracles import get_oracle
from workbench.reward.score import RewardModel, read_manifest
from workbench.rl.config import RLConfig
from workbench.rl.rewards import load_reward_classifier
from workbench.rl.train import _peft_config, complete_checkpoints
from workbench.runs import RunDir, write_json_atomic

RewardFn = Callable[[list[str], list[str]], list[float]]  # (prompts, completions) -> one score each
MAX_GRAD_NORM = 1.0  # TRL's default, as the RLOO/GRPO runs use


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_moments(x, mask, accelerator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance of x where mask is 1, over every process (two passes: no cancellation)."""
    distributed = accelerator is not None and accelerator.num_processes > 1
    reduce = (lambda t: accelerator.reduce(t, "sum")) if distributed else (lambda t: t)
    total, count = reduce(torch.stack([(x * mask).sum(), mask.sum()]))
    mean = total / count
    var = reduce(((x - mean) ** 2 * mask).sum()) / (count - 1).clamp(min=1)
    return mean, var


def whiten(x, mask, accelerator=None) -> torch.Tensor:
    mean, var = masked_moments(x, mask, accelerator)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def token_rewards(scores, logprobs, ref_logprobs, mask, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """r_t = -beta * (log pi - log pi_ref)(y_t), plus the sequence's score at its last token: (rewards, kl), (B, T)."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -beta * kl  # [5]
    last = mask.sum(1).long() - 1  # (B,) index of each completion's last token (its EOS, or the cut)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl


def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded (B, T) tensors: A_t = sum_l (gamma lam)^l delta_{t+l}, with
    delta_t = r_t + gamma V_{t+1} - V_t and V = 0 past the last token. Returns (advantages, returns = A + V)."""
    rewards, values = rewards * mask, values * mask  # padding: no reward, no value, so nothing flows back from it
    advantages, running = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):  # [6]
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, advantages + values


def policy_loss(logprobs, old_logprobs, advantages, mask, cliprange: float):
    """Clipped surrogate: token mean of max(-A ratio, -A clip(ratio, 1-eps, 1+eps)). (loss, clipfrac, approx_kl)"""
    ratio = torch.exp(logprobs - old_logprobs)  # pi_new / pi_old of each sampled token, (B, T)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)  # [8]
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)  # tokens whose gradient the clip switched off
    approx_kl = 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask)  # KL(pi_old || pi_new) to second order
    return loss, clipfrac.detach(), approx_kl.detach()


def value_loss(values, old_values, returns, mask, cliprange_value: float):
    """0.5 * mean of max((V - R)^2, (V_clipped - R)^2), V_clipped within cliprange_value of the rollout's value."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)  # [9]
    unclipped_loss, clipped_loss = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    return loss, masked_mean((clipped_loss > unclipped_loss).float(), mask).detach()


def explained_variance(values, returns, mask) -> float:
    """1 - Var(R - V) / Var(R) over the tokens: 1 = the value model predicts the returns, 0 = no better than a mean."""
    var_returns = masked_moments(returns, mask)[1]
    return float(1.0 - masked_moments(returns - values, mask)[1] / var_returns.clamp(min=1e-8))


class KLController:
    """beta, fixed (target=None) or adapted after each rollout batch of n samples towards a target sequence KL
    (Ziegler et al. 2019): beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)."""

    def __init__(self, beta: float, target: float | None = None, horizon: int = 10000):
        self.value, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target is not None:  # [11]
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n / self.horizon


def value_model_source(config: RLConfig, tokenizer) -> dict:
    """Where the value model starts: "reward-model" (the RM's backbone), "policy-copy" or "policy-head", and why.

    The value model scores every prefix of the policy's tokens, so a backbone from the RM serves only when the RM
    reads those tokens (same vocabulary, e.g. a decoder RM on the policy's backbone). The default RM, MiniLM, has a
    BERT vocabulary: then the value model starts from a copy of the policy instead, as a separate network."""
    if config.value_init == "policy":
        return {"init": "policy-head", "why": "value_init='policy': a scalar head on the policy's last hidden state"}
    if not (Path(config.reward) / "config.json").exists():  # not a transformers model (e.g. an ensemble)
        return {"init": "policy-copy", "why": "value_init='reward' fell back: the reward model is not one transformers "
                "backbone; the value model is a copy of the policy's backbone, head zeroed"}
    rm_tokenizer = AutoTokenizer.from_pretrained(config.reward)
    if rm_tokenizer.get_vocab() == tokenizer.get_vocab():
        return {"init": "reward-model", "why": "the reward model reads the policy's tokens: its backbone, head zeroed"}
    return {"init": "policy-copy", "why": f"value_init='reward' fell back: the reward model's tokenizer "
            f"({type(rm_tokenizer).__name__}, {len(rm_tokenizer)} tokens) is not the policy's, so it cannot give a "
            "value per policy token; the value model is a copy of the policy's backbone, head zeroed"}


class PolicyAndValue(nn.Module):
    """Everything the optimiser trains: the policy and the value model (its own backbone, or None: a scalar head on
    the policy's last hidden state). forward -> logits (B, T, V) predicting each y_t, values (B, T) of its state."""

    def __init__(self, policy, value_backbone, hidden_size: int):
        super().__init__()
        self.policy, self.value_backbone = policy, value_backbone
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)  # [3] every value starts at 0: no made-up advantages at step 1
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, position_ids, n_completion: int):
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        out = self.policy(**inputs, logits_to_keep=n_completion + 1, output_hidden_states=self.value_backbone is None)
        shared = self.value_backbone is None
        hidden = out.hidden_states[-1] if shared else self.value_backbone(**inputs).last_hidden_state
        # position P+t-1 predicts y_t and holds the state (x, y_<t); the last position predicts nothing
        return out.logits[:, :-1], self.value_head(hidden[:, -n_completion - 1 : -1]).squeeze(-1)


@dataclass
class PPOState:  # what train_policy and the PolicySnapshots callback read, as from a TRL trainer's state
    global_step: int = 0
    max_steps: int = 0
    optimizer_steps: int = 0
    is_world_process_zero: bool = True


class PPOTrainer:
    """`train(resume_from_checkpoint)`, `save_model`, `state`, `model`, `accelerator`, `processing_class`,
    `add_callback`: the parts of a TRL trainer that `rl.train.train_policy` uses."""

    def __init__(self, config: RLConfig, run: RunDir, prompts: list, reward_fn: RewardFn | None = None):
        AcceleratorState._reset_state()  # a TRL trainer earlier in this process may have set another precision
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")
        self.config, self.run, self.prompts, self.reward_fn, self.callbacks = config, run, list(prompts), reward_fn, []
        self.stage_dir = run.stage_dir("rl")
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.local_batch = per_process(config.prompts_per_step * config.num_generations, self.world,
                                       "prompts_per_step * num_generations")
        if self.local_batch % config.num_minibatches:
            raise ValueError(f"num_minibatches={config.num_minibatches} must divide the {self.local_batch} "
                             "completions each process samples per step")
        self.minibatch = self.local_batch // config.num_minibatches
        torch.manual_seed(config.seed)
        device = self.accelerator.device
        self.bf16 = resolve_bf16(config.bf16)  # [14] fp32 weights below; bf16 only inside `autocast`
        self.autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)
        self.tokenizer = load_tokenizer(config.policy)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        path = resolve_model(config.policy).path
        load = lambda cls, where: cls.from_pretrained(where, dtype=torch.float32).to(device)  # noqa: E731
        policy, self.ref_model = load(AutoModelForCausalLM, path), load(AutoModelForCausalLM, path)
        self.value_source = value_model_source(config, self.tokenizer)
        init = self.value_source["init"]
        backbone = load(AutoModel, config.reward if init == "reward-model" else path) if init != "policy-head" else None
        self.reward_model, self.scorer = None, None
        if reward_fn is None:  # the learned RM, normalised on the base policy's samples
            manifest = read_manifest(config.reward)
            self.reward_model, rm_tokenizer = load_reward_classifier(config.reward, normalize=config.normalize_rewards)
            self.scorer = RewardModel(self.reward_model.to(device), rm_tokenizer, bf16=self.bf16,
                                      max_length=manifest.get("max_length", 256), text_format=manifest["text_format"])
        for model in (policy, self.ref_model, backbone, self.reward_model):
            if model is not None:
                disable_dropout(model)  # [4] dropout makes log pi noisy: the ratio and the KL would not be 1 / 0
        self.ref_model.eval().requires_grad_(False)
        if config.lora:
            from peft import get_peft_model

            policy = get_peft_model(policy, _peft_config(config))
        if config.gradient_checkpointing:
            for model in (policy, backbone):
                if model is not None:
                    model.gradient_checkpointing_enable()
        self.model = policy  # the policy, unwrapped (LoRA: the PeftModel), as TRL trainers expose it
        hidden = (policy if backbone is None else backbone).config.get_text_config().hidden_size
        self.policy_and_value = PolicyAndValue(policy, backbone, hidden).to(device)
        self.params = [p for p in self.policy_and_value.parameters() if p.requires_grad]
        lr = config.lora_learning_rate if config.lora else config.learning_rate
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        total = config.steps * config.ppo_epochs * config.num_minibatches
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: max(0.0, 1.0 - s / total))  # [12]
        # DDP over the processes (gloo on CPU); optimiser and schedule stay ours, stepped once per minibatch
        self.wrapped = self.accelerator.prepare(self.policy_and_value)
        self.kl = KLController(config.beta, config.target_kl, config.kl_horizon)
        self.gold = get_oracle(config.oracle) if config.oracle else None
        self.state = PPOState(max_steps=config.steps, is_world_process_zero=self.accelerator.is_main_process)
        self.processing_class = self.tokenizer
        if self.accelerator.is_main_process:
            run.save_config("rl", config, value_model=self.value_source)

    def add_callback(self, callback) -> None:
        self.callbacks.append(callback)

    # ------------------------------------------------------------------------------------------------ one step

    def step_prompts(self, step: int) -> list:
        """This process's prompts of rollout `step`: prompts_per_step of the set per step (shuffled once per pass
        over it, from the seed), each num_generations times, split over the processes."""
        n, chosen = len(self.prompts), []
        for position in range(step * self.config.prompts_per_step, (step + 1) * self.config.prompts_per_step):
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed + position // n))
            chosen += [self.prompts[int(order[position % n])].prompt] * self.config.num_generations
        return chosen[self.rank * self.local_batch : (self.rank + 1) * self.local_batch]

    @torch.no_grad()
    def rollout(self, step: int) -> tuple[dict, dict]:
        """Sample, score, and turn scores into advantages: (batch of (B, ...) tensors, metrics)."""
        config, device = self.config, self.accelerator.device
        prompts = self.step_prompts(step)
        sampling = self.sampling(step, len(prompts))
        self.policy_and_value.eval()
        with self.autocast():
            completions = generate(self.model, self.tokenizer, prompts, sampling)
        batch = self.pack(prompts, completions, sampling)
        width_t, mask, parts = batch["response"].shape[1], batch["mask"], []
        for rows in torch.arange(len(prompts)).split(self.minibatch):  # no more rows per forward than an update's
            chunk = {k: batch[k][rows] for k in ("input_ids", "attention_mask", "position_ids")}
            with self.autocast():
                logits, values = self.policy_and_value(**chunk, n_completion=width_t)
                ref_logits = self.ref_model(**chunk, use_cache=False, logits_to_keep=width_t + 1).logits[:, :-1]
            parts.append((self.logprobs(logits, batch["response"][rows]),  # [2] (B, T) at the sampling temperature
                          self.logprobs(ref_logits, batch["response"][rows]), values.float(),
                          entropy_from_logits(logits.float() / config.temperature)))
        logprobs, ref_logprobs, values, entropy = (torch.cat(part) for part in zip(*parts))

        texts, prompt_texts = [c.text for c in completions], [prompt_text(p) for p in prompts]
        model_scores = self.reward_fn(prompt_texts, texts) if self.reward_fn else self.scorer.score(prompts, texts)
        eos = [0.0 if c.finished else -config.eos_penalty for c in completions]
        scores = torch.tensor(model_scores, device=device) + torch.tensor(eos, device=device)
        rewards, kl = token_rewards(scores, logprobs, ref_logprobs, mask, self.kl.value)
        values = values * mask
        advantages, returns = gae(rewards, values, mask, config.gamma, config.gae_lambda)
        batch.update(logprobs=logprobs, values=values, returns=returns,
                     advantages=whiten(advantages, mask, self.accelerator))  # [7]
        gold = [self.gold(p, t) for p, t in zip(prompt_texts, texts)] if self.gold else []
        self.write_samples(step + 1, prompt_texts, texts, gold, completions)
        metrics = {"reward": scores.mean(), "rewards/model/mean": sum(model_scores) / len(texts),
                   "rewards/eos_penalty/mean": sum(eos) / len(texts), "kl": masked_mean(kl, mask),
                   "sequence_kl": kl.sum(1).mean(), "kl_coef": self.kl.value,
                   "entropy": masked_mean(entropy, mask),
                   "explained_variance": explained_variance(values, returns, mask),
                   "completions/mean_length": mask.sum(1).mean(),
                   "completions/clipped_ratio": sum(not c.finished for c in completions) / len(texts)}
        if gold:
            metrics["rewards/gold/mean"] = sum(gold) / len(gold)  # weight 0: logged, never optimised
        return batch, metrics

    def sampling(self, step: int, n: int) -> SamplingConfig:
        """The run's answer shaping (it only drops tokens after a stop) with plain tempered sampling, so log pi and
        log pi_ref of the kept tokens are exact; a seed per step and process, so a resumed run draws the same."""
        return SamplingConfig(max_new_tokens=self.config.max_new_tokens, temperature=self.config.temperature,  # [1]
                              top_p=1.0, top_k=0, seed=self.config.seed + 1000 * (step + 1) + self.rank, batch_size=n,
                              shaping=self.config.shaping)

    def pack(self, prompts: list, completions: list, sampling: SamplingConfig) -> dict:
        """(B, P + T) ids of prompt (left-padded) + exactly the sampled tokens (right-padded), masks, positions."""
        system = sampling.shaping.active_system_prompt  # what generate() put before each prompt
        queries = [self.tokenizer(format_prompt(self.tokenizer, p, True, system), add_special_tokens=False)["input_ids"]
                   for p in prompts]
        width_p, width_t = max(map(len, queries)), max(len(c.token_ids) for c in completions)
        input_ids = torch.full((len(prompts), width_p + width_t), self.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, (query, completion) in enumerate(zip(queries, completions)):
            ids = completion.token_ids  # up to and including EOS; nothing the policy did not sample
            input_ids[row, width_p - len(query) : width_p + len(ids)] = torch.tensor(query + ids)
            attention[row, width_p - len(query) : width_p + len(ids)] = 1
        input_ids, attention = input_ids.to(self.accelerator.device), attention.to(self.accelerator.device)
        return dict(input_ids=input_ids, attention_mask=attention, response=input_ids[:, width_p:],
                    position_ids=(attention.cumsum(-1) - 1).clamp(min=0),  # as generate() numbers left-padded rows
                    mask=attention[:, width_p:].float())

    def logprobs(self, logits, tokens) -> torch.Tensor:
        return selective_log_softmax(logits.float(), tokens, self.config.temperature)

    def update(self, batch: dict, step: int) -> dict:
        """ppo_epochs passes over the rollout in shuffled minibatches, one optimiser step each."""
        config, size = self.config, self.minibatch
        shuffle = torch.Generator().manual_seed(config.seed + step)
        width_t, logs = batch["response"].shape[1], []
        self.policy_and_value.train()
        for _ in range(config.ppo_epochs):  # [10]
            order = torch.randperm(self.local_batch, generator=shuffle)
            for start in range(0, self.local_batch, size):
                mb = {k: v[order[start : start + size].to(v.device)] for k, v in batch.items()}
                with self.autocast():
                    logits, values = self.wrapped(mb["input_ids"], mb["attention_mask"], mb["position_ids"], width_t)
                logprobs = self.logprobs(logits, mb["response"])
                pg_loss, clipfrac, approx_kl = policy_loss(logprobs, mb["logprobs"], mb["advantages"], mb["mask"],
                                                           config.cliprange)
                vf_loss, vf_clipfrac = value_loss(values.float(), mb["values"], mb["returns"], mb["mask"],
                                                  config.cliprange_value)
                loss = pg_loss + config.vf_coef * vf_loss
                self.accelerator.backward(loss)  # DDP averages the gradients over the processes
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)  # [13]
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.state.optimizer_steps += 1
                logs.append(torch.stack([loss, pg_loss, vf_loss, clipfrac, vf_clipfrac, approx_kl, grad_norm]).detach())
        names = ["loss", "policy_loss", "value_loss", "clipfrac", "value_clipfrac", "approx_kl", "grad_norm"]
        return dict(zip(names, torch.stack(logs).float().mean(0).tolist()))

    def write_samples(self, step, prompts, texts, gold, completions) -> None:
        """samples.jsonl rows as `rewards.GoldRewardLogger` writes them: the main process writes its share."""
        if not self.accelerator.is_main_process:
            return
        gold = gold or [None] * len(texts)
        rows = [json.dumps({"step": step, "prompt": p, "completion": t, "gold": g, "finished": c.finished})
                for p, t, g, c in zip(prompts, texts, gold, completions)]
        with open(self.stage_dir / "samples.jsonl", "a") as handle:
            handle.write("".join(row + "\n" for row in rows))
            handle.flush()
            os.fsync(handle.fileno())  # a kill -9 loses at most the step in flight

    def train(self, resume_from_checkpoint: str | None = None) -> PPOState:
        if resume_from_checkpoint:
            self.load_checkpoint(Path(resume_from_checkpoint))
        while self.state.global_step < self.config.steps:
            started, step = time.perf_counter(), self.state.global_step
            batch, metrics = self.rollout(step)
            metrics.update(self.update(batch, step))
            self.state.global_step += 1
            metrics.update(learning_rate=self.scheduler.get_last_lr()[0], optimizer_steps=self.state.optimizer_steps,
                           step_time=time.perf_counter() - started)
            values = self.accelerator.reduce(torch.tensor([float(v) for v in metrics.values()],
                                                          device=self.accelerator.device), "mean")
            metrics = dict(zip(metrics, values.tolist()))  # means over the processes
            self.kl.update(metrics["sequence_kl"], self.config.prompts_per_step * self.config.num_generations)
            if self.accelerator.is_main_process and self.state.global_step % self.config.logging_steps == 0:
                self.run.log_metrics("rl", self.state.global_step, {f"ppo/{k}": v for k, v in metrics.items()})
            for callback in self.callbacks:
                callback.on_step_end(None, self.state, None)
            if self.state.global_step % self.config.save_steps == 0 or self.state.global_step == self.config.steps:
                self.save_checkpoint()
        return self.state

    # ---------------------------------------------------------------------------------------- saving, resuming

    def save_model(self, folder: str | Path) -> None:
        """The policy (LoRA: its adapter) and tokenizer, as TRL trainers save them; on the main process."""
        if self.accelerator.is_main_process:
            self.model.save_pretrained(str(folder))
            self.tokenizer.save_pretrained(str(folder))
        self.accelerator.wait_for_everyone()

    def save_checkpoint(self) -> None:
        """checkpoint-N: policy, value model, optimiser, schedule, KL coefficient and RNG states; trainer_state.json
        last, so `complete_checkpoints` never takes a half-written one. The two newest complete ones are kept."""
        folder = self.stage_dir / "checkpoints" / f"checkpoint-{self.state.global_step}"
        if self.accelerator.is_main_process:
            shutil.rmtree(folder, ignore_errors=True)  # a crashed earlier attempt at the same step
        self.accelerator.wait_for_everyone()
        self.save_model(folder)
        if self.accelerator.is_main_process:
            value = {k: v.detach().contiguous().cpu() for k, v in self.policy_and_value.state_dict().items()
                     if not k.startswith("policy.")}
            save_file(value, str(folder / "value.safetensors"))
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")
        torch.save({"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all()},
                   folder / f"rng_state_{self.rank}.pth")
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            write_json_atomic(folder / "trainer_state.json", {
                "global_step": self.state.global_step, "max_steps": self.config.steps,
                "optimizer_steps": self.state.optimizer_steps, "kl_coef": self.kl.value,
                "value_model": self.value_source})
            for old in complete_checkpoints(folder.parent)[:-2]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self, folder: Path) -> None:
        state = json.loads((folder / "trainer_state.json").read_text())
        if self.config.lora:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, load_file(str(folder / "adapter_model.safetensors")))
        else:
            weights = {k: v for f in sorted(folder.glob("model*.safetensors")) for k, v in load_file(str(f)).items()}
            missing, unexpected = self.model.load_state_dict(weights, strict=False)
            if unexpected or any(not k.endswith("lm_head.weight") for k in missing):  # a tied head is not saved
                raise ValueError(f"{folder}: not this policy's weights (missing {missing}, unexpected {unexpected})")
        self.policy_and_value.load_state_dict(load_file(str(folder / "value.safetensors")), strict=False)
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
        rng = folder / f"rng_state_{self.rank}.pth"
        if rng.exists():
            saved = torch.load(rng, weights_only=False)
            torch.set_rng_state(saved["cpu"])
            if torch.cuda.is_available() and saved["cuda"]:
                torch.cuda.set_rng_state_all(saved["cuda"])
        self.kl.value = state["kl_coef"]
        self.state.global_step, self.state.optimizer_steps = state["global_step"], state["optimizer_steps"]


def disable_dropout(model: nn.Module) -> None:
    """Every dropout layer to p = 0, and the configs' attention dropout (applied inside attention kernels) too."""
    disable_dropout_in_model(model)
    config = getattr(model, "config", None)
    for name in ("attention_dropout", "attention_probs_dropout_prob", "hidden_dropout_prob", "dropout"):
        if isinstance(getattr(config, name, None), float):
            setattr(config, name, 0.0)
