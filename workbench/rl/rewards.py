"""Reward functions handed to TRL's RL trainers (`reward_funcs`).

- the learned reward model, as a sequence classifier with its own tokenizer (`reward_processing_classes`),
  its head rescaled so that scores of the base policy's samples have mean 0 and std 1 (Ziegler et al. 2019);
- `eos_penalty`: a fixed penalty for completions cut off at the token budget (Huang et al. 2024, "The N+
  implementation details of RLHF with PPO": truncated replies otherwise collect reward for text that never ends);
  under answer shaping a reply that stopped at a sentence end is not cut off;
- `GoldRewardLogger`: the simulated labeler's gold reward with weight 0 — it never shapes training, TRL logs its
  mean next to the proxy's, and every sampled completion is appended to `samples.jsonl` for later inspection.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from workbench.distributed import process_info
from workbench.generation import SentenceStop, completion_text, prompt_text
from workbench.oracles import get_oracle
from workbench.reward.kinds import load_reward_module
from workbench.reward.score import reward_text


def reward_chat_template(tokenizer, text_format: str | None = None) -> str:
    """A Jinja chat template that renders a conversation and its reply exactly as `reward_text` + special tokens
    (the turns before the final assistant reply as `conversation_text` renders them: system turns left out).

    TRL applies the reward tokenizer's chat template to conversational samples and then tokenizes with
    add_special_tokens=False, so the template itself must carry [CLS]/[SEP] (or whatever the tokenizer adds)."""
    probe = tokenizer("x", add_special_tokens=True)["input_ids"]
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    start = probe.index(bare[0])
    prefix = tokenizer.decode(probe[:start]) if start else ""
    suffix = tokenizer.decode(probe[start + len(bare):]) if start + len(bare) < len(probe) else ""
    body = reward_text(tokenizer, "{{ ns.prompt }}", "{{ ns.reply }}", text_format)  # the order and separator
    return (
        "{%- set ns = namespace(prompt='', reply='', turns=0, only='') -%}"
        "{%- for m in messages -%}"
        "{%- if loop.last and m['role'] == 'assistant' -%}{%- set ns.reply = m['content'] -%}"
        "{%- elif m['role'] != 'system' -%}"
        "{%- set ns.prompt = ns.prompt ~ ('\n\n' if ns.turns else '') ~ (m['role'] | capitalize) ~ ': ' ~ m['content'] -%}"
        "{%- set ns.only = m['content'] -%}{%- set ns.turns = ns.turns + 1 -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if ns.turns == 1 -%}{%- set ns.prompt = ns.only -%}{%- endif -%}"
        f"{prefix}{body}{suffix}"
    )


def load_reward_classifier(path: str | Path, normalize: bool = True):
    """(model, tokenizer) for TRL: the trained RM (any kind, as a sequence classifier: input_ids, attention_mask ->
    logits (B, 1)) with a chat template matching training, its final linear layer normalised."""
    model, tokenizer, manifest = load_reward_module(path)
    tokenizer.chat_template = reward_chat_template(tokenizer, manifest["text_format"])
    stats = manifest.get("score_stats")
    if normalize and stats and stats["std"] > 0:
        fold_normalisation(model, stats["mean"], stats["std"])
    model.eval().requires_grad_(False)
    return model, tokenizer


def fold_normalisation(model, mean: float, std: float) -> None:
    """r' = (r - mean) / std folded into the final linear layer: w' = w / std, b' = (b - mean) / std."""
    name = "classifier" if isinstance(getattr(model, "classifier", None), torch.nn.Linear) else "score"
    head = getattr(model, name)
    if head.bias is None:  # Llama-style score heads have no bias: give them one (zero) to hold the shift
        biased = torch.nn.Linear(head.in_features, head.out_features, bias=True, dtype=head.weight.dtype)
        with torch.no_grad():
            biased.weight.copy_(head.weight)
            biased.bias.zero_()
        setattr(model, name, biased)
        head = biased
    with torch.no_grad():
        head.weight.div_(std)
        head.bias.sub_(mean).div_(std)


def ended(ids: list[int] | None, eos_token_ids, stop: SentenceStop | None = None) -> bool:
    """Whether a sampled completion ended by itself: EOS, or (under answer shaping) a sentence end."""
    if not ids:
        return False
    return stop.is_complete(ids) if stop is not None else ids[-1] in set(eos_token_ids)


def eos_penalty(penalty: float, eos_token_ids: list[int], stop: SentenceStop | None = None):
    """A reward function: -penalty for every completion cut off at the token budget (no EOS, and no sentence end
    when `stop` shapes the answers)."""

    def eos_penalty(prompts, completions, completion_ids, **kwargs) -> list[float]:
        return [0.0 if ended(ids, eos_token_ids, stop) else -penalty for ids in completion_ids]

    return eos_penalty


class GoldRewardLogger:
    """Gold reward of every sampled completion (weight 0 in training), and a samples.jsonl row per completion."""

    def __init__(self, oracle: str, samples_path: str | Path | None, eos_token_ids: list[int] = (),
                 stop: SentenceStop | None = None):
        self.gold = get_oracle(oracle)
        self.eos_token_ids, self.stop = set(eos_token_ids), stop
        self.samples_path = Path(samples_path) if samples_path else None
        self.__name__ = "gold"  # TRL names the metric rewards/<__name__>/mean

    def __call__(self, prompts, completions, completion_ids=None, trainer_state=None, **kwargs) -> list[float]:
        prompt_strings = [prompt_text(p) for p in prompts]
        texts = [completion_text(c) for c in completions]
        scores = [self.gold(p, t) for p, t in zip(prompt_strings, texts)]
        if self.samples_path and process_info()[1]:  # the main process writes its share of the samples
            step = (trainer_state.global_step + 1) if trainer_state else 0  # the optimiser step these samples train
            lines = [json.dumps({"step": step, "prompt": p, "completion": t, "gold": s,
                                 "finished": ended(ids, self.eos_token_ids, self.stop)})
                     for p, t, s, ids in zip(prompt_strings, texts, scores, completion_ids or [None] * len(texts))]
            with open(self.samples_path, "a") as handle:
                handle.write("".join(line + "\n" for line in lines))
                handle.flush()
                os.fsync(handle.fileno())
        return scores
