"""Score texts with a trained reward model: r(prompt, completion) -> one scalar."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import torch

from workbench.generation import Prompt, conversation_text
from workbench.models import cpu_has_native_bf16

MANIFEST = "workbench_reward.json"
PROMPT_FIRST, COMPLETION_FIRST = "prompt <sep> completion", "completion <sep> prompt"  # manifest "text_format"


def default_text_format(tokenizer) -> str:
    """Encoders (a [SEP] token) read the completion first: its length is then the position of the first [SEP], and
    truncation cuts the prompt before the reply (measured: gold accuracy +0.035 over prompt-first, 3 seeds, 400
    pairs). Decoders read the prompt first: their score head reads the last token, which sees both."""
    return COMPLETION_FIRST if tokenizer.sep_token else PROMPT_FIRST


def reward_text(tokenizer, prompt: Prompt, completion: str, text_format: str | None = None) -> str:
    """One canonical input for training and scoring: prompt (the whole conversation, `conversation_text`) and
    completion joined by a separator, in the order of `text_format` (default: `default_text_format`). BERT-style tokenizers get their [SEP] token between the two;
    others a newline."""
    text_format = text_format or default_text_format(tokenizer)
    if text_format not in (PROMPT_FIRST, COMPLETION_FIRST):
        raise ValueError(f"Unknown reward text_format {text_format!r}; expected {PROMPT_FIRST!r} or {COMPLETION_FIRST!r}")
    separator = f" {tokenizer.sep_token} " if tokenizer.sep_token else "\n"
    first, second = (conversation_text(prompt), completion) if text_format == PROMPT_FIRST else \
        (completion, conversation_text(prompt))
    return f"{first}{separator}{second}"


def read_manifest(path: str | Path) -> dict:
    """The manifest `train_reward_model` writes next to a reward model; models trained before the input order was
    recorded read the prompt first."""
    path = Path(path)
    if not (path / MANIFEST).exists():
        raise FileNotFoundError(
            f"{path} is not a trained reward model (no {MANIFEST}). Fix: pass the folder written by "
            "`workbench train-rm`, e.g. runs/<name>/reward/model."
        )
    return {"text_format": PROMPT_FIRST, **json.loads((path / MANIFEST).read_text())}


class RewardModel:
    """A sequence classifier with one output, plus its tokenizer; `score` runs batched inference."""

    def __init__(self, model, tokenizer, max_length: int = 256, bf16: bool | None = None,
                 text_format: str | None = None):
        self.model, self.tokenizer, self.max_length = model.eval(), tokenizer, max_length
        self.text_format = text_format or default_text_format(tokenizer)  # as the model was trained
        # bf16 on CPUs with native bf16 math (~2x faster here); pair-order agreement with fp32 is in the benchmark
        self.bf16 = cpu_has_native_bf16() if bf16 is None else bf16

    @classmethod
    def load(cls, path: str | Path, bf16: bool | None = None) -> "RewardModel":
        from workbench.reward.kinds import load_reward_module

        model, tokenizer, manifest = load_reward_module(path)
        reward_model = cls(model, tokenizer, max_length=manifest.get("max_length", 256), bf16=bf16,
                           text_format=manifest["text_format"])
        if reward_model.bf16 and next(model.parameters()).device.type == "cpu":
            # our own copy: bf16 weights, cast once (autocast re-casts them every call); a head kind casts only its
            # frozen encoder, its fitted head stays fp32 (score gaps of a few hundredths are below bf16's resolution)
            getattr(model, "to_inference_dtype", model.to)(torch.bfloat16)
        return reward_model

    def score(self, prompts: list[Prompt], completions: list[str], batch_size: int = 32) -> list[float]:
        """One scalar per (prompt, completion), in batches of texts of similar token length (less padding: +12 %
        texts/s over sorting by characters). Batches of 32 were fastest on 2 cores (MiniLM, bf16: 185 texts/s vs
        172 at 64 and 166 at 16)."""
        return [row[0] for row in self._batched(prompts, completions, batch_size, lambda b: self.model(**b).logits[:, :1])]

    def member_scores(self, prompts: list[Prompt], completions: list[str], batch_size: int = 32) -> list[list[float]]:
        """Each member's (or head's) unnormalised score, (N, K); K = 1 for a single model."""
        members = getattr(self.model, "member_scores", None)  # ensembles and embedding heads have them
        forward = (lambda b: members(b["input_ids"], b["attention_mask"])) if members else \
            (lambda b: self.model(**b).logits[:, :1])
        return self._batched(prompts, completions, batch_size, forward)

    @torch.inference_mode()
    def _batched(self, prompts: list[Prompt], completions: list[str], batch_size: int, forward) -> list[list[float]]:
        """`forward(batch)` -> (B, K) for every (prompt, completion), batched by token length; rows in input order."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions; they must pair up")
        texts = [reward_text(self.tokenizer, p, c, self.text_format) for p, c in zip(prompts, completions)]
        token_ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(token_ids[i]))
        scores: list[list[float]] = [[]] * len(texts)
        weights = next(self.model.parameters())
        use_autocast = self.bf16 and weights.dtype == torch.float32 and weights.device.type == "cpu"  # not ours to cast
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if use_autocast else nullcontext()
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [token_ids[i] for i in index]},
                                       return_tensors="pt").to(weights.device)  # input_ids + attention_mask
            with autocast:
                values = forward(batch).float().tolist()  # (B, K)
            for i, value in zip(index, values):
                scores[i] = value
        return scores

    def prob_a_over_b(self, prompts: list[Prompt], completions_a: list[str], completions_b: list[str]) -> list[float]:
        """Bradley-Terry: P(A > B) = sigmoid(r_A - r_B)."""
        a, b = self.score(prompts, completions_a), self.score(prompts, completions_b)
        return torch.sigmoid(torch.tensor(a) - torch.tensor(b)).tolist()
