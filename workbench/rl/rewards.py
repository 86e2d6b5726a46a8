"""Reward functions handed to TRL's RL trainers (`reward_funcs`).

- the learned reward model, as a sequence classifier with its own tokenizer (`reward_processing_classes`),
  its head rescaled so that scores of the base policy's samples have mean 0 and std 1 (Ziegler et al. 2019);
- `eos_penalty`: a fixed penalty for completions cut off before EOS (Huang et al. 2024, "The N+ implementation
  details of RLHF with PPO": truncated replies otherwise collect reward for text that never ends);
- `GoldRewardLogger`: the simulated labeler's gold reward with weight 0 — it never shapes training, TRL logs its
  mean next to the proxy's, and every sampled completion is appended to `samples.jsonl` for later inspection.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from workbench.distributed import process_info
from workbench.generation import completion_text, prompt_text
from workbench.oracles import get_oracle
from workbench.models import load_reward_backbone
from workbench.reward.score import read_manifest, reward_text


def reward_chat_template(tokenizer, text_format: str | None = None) -> str:
    """A Jinja chat template that renders [user, assistant] messages exactly as `reward_text` + special tokens.

    TRL applies the reward tokenizer's chat template to conversational samples and then tokenizes with
    add_special_tokens=False, so the template itself must carry [CLS]/[SEP] (or whatever the tokenizer adds)."""
    probe = tokenizer("x", add_special_tokens=True)["input_ids"]
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    start = probe.index(bare[0])
    prefix = tokenizer.decode(probe[:start]) if start else ""
    suffix = tokenizer.decode(probe[start + len(bare):]) if start + len(bare) < len(probe) else ""
    body = reward_text(tokenizer, "{{ ns.prompt }}", "{{ ns.reply }}", text_format)  # the order and separator
    return (
        "{%- set ns = namespace(prompt='', reply='') -%}"
        "{%- for m in messages -%}"
        "{%- if m['role'] == 'user' -%}{%- set ns.prompt = m['content'] -%}"
        "{%- elif m['role'] == 'assistant' -%}{%- set ns.reply = m['content'] -%}{%- endif -%}"
        "{%- endfor -%}"
        f"{prefix}{body}{suffix}"
    )


def load_reward_classifier(path: str | Path, normalize: bool = True):
    """(model, tokenizer) for TRL: the trained RM with a chat template matching training, head normalised."""
    manifest = read_manifest(path)
    model, tokenizer = load_reward_backbone(str(path))
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


def eos_penalty(penalty: float, eos_token_ids: list[int]):
    """A reward function: -penalty for every completion that does not end in EOS (cut at max length)."""

    def eos_penalty(prompts, completions, completion_ids, **kwargs) -> list[float]:
        return [0.0 if ids and ids[-1] in eos_token_ids else -penalty for ids in completion_ids]

    return eos_penalty


class GoldRewardLogger:
    """Gold reward of every sampled completion (weight 0 in training), and a samples.jsonl row per completion."""

    def __init__(self, oracle: str, samples_path: str | Path | None, eos_token_ids: list[int] = ()):
        self.gold = get_oracle(oracle)
        self.eos_token_ids = set(eos_token_ids)
        self.samples_path = Path(samples_path) if samples_path else None
        self.__name__ = "gold"  # TRL names the metric rewards/<__name__>/mean

    def __call__(self, prompts, completions, completion_ids=None, trainer_state=None, **kwargs) -> list[float]:
        prompt_strings = [prompt_text(p) for p in prompts]
        texts = [completion_text(c) for c in completions]
        scores = [self.gold(p, t) for p, t in zip(prompt_strings, texts)]
        if self.samples_path and process_info()[1]:  # the main process writes its share of the samples
            step = (trainer_state.global_step + 1) if trainer_state else 0  # the optimiser step these samples train
            lines = [json.dumps({"step": step, "prompt": p, "completion": t, "gold": s,
                                 "finished": bool(ids) and ids[-1] in self.eos_token_ids})
                     for p, t, s, ids in zip(prompt_strings, texts, scores, completion_ids or [None] * len(texts))]
            with open(self.samples_path, "a") as handle:
                handle.write("".join(line + "\n" for line in lines))
                handle.flush()
                os.fsync(handle.fileno())
        return scores
