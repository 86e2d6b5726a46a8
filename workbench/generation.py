"""Batched sampling with the chat template, plus per-token log-probs for later KL estimates."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

Prompt = str | list[dict]  # plain text, or chat messages [{"role": ..., "content": ...}]


def prompt_text(prompt: Prompt) -> str:
    """The last user message (or the plain prompt): what a person reads and what a gold reward is given."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), prompt[-1]["content"])


def completion_text(value: str | list[dict]) -> str:
    """A completion as text: conversational preference rows hold [{"role": "assistant", "content": ...}]."""
    return value if isinstance(value, str) else value[-1]["content"]


@dataclass
class SamplingConfig:
    max_new_tokens: int = 48  # short replies a person can rate at a glance
    temperature: float = 0.7  # 0 means greedy decoding
    top_p: float = 0.95  # nucleus sampling; 1.0 turns it off
    top_k: int = 50  # transformers' default; also spares a full-vocabulary sort per step (~20 ms on 2 cores)
    seed: int = 0  # torch RNG seed set at the start of every call: same seed, same samples
    batch_size: int = 8  # prompts decoded together; decoding is memory-bound, so batching is nearly free
    use_chat_template: bool = True  # wrap plain prompts as one user message and add the assistant header
    show_progress: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Completion:
    prompt: Prompt
    text: str  # the decoded completion, special tokens removed
    token_ids: list[int] = field(repr=False)  # generated ids, up to and including EOS when it was produced
    logprobs: list[float] = field(repr=False)  # log pi(y_t | x, y_<t) at temperature 1, one per token_id
    finished: bool = False  # True when the model produced EOS within max_new_tokens

    @property
    def sum_logprob(self) -> float:
        return float(sum(self.logprobs))

    def to_dict(self) -> dict:
        return asdict(self)


def format_prompt(tokenizer, prompt: Prompt, use_chat_template: bool = True) -> str:
    """The exact string the model sees for a prompt."""
    if isinstance(prompt, str) and not use_chat_template:
        return prompt
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if tokenizer.chat_template is None:
        raise ValueError(
            "This tokenizer has no chat template; pass use_chat_template=False and plain-text prompts."
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _eos_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[Prompt], config: SamplingConfig | None = None) -> list[Completion]:
    """Sample one completion per prompt, in batches with left padding."""
    config = config or SamplingConfig()
    if isinstance(prompts, (str, dict)):
        raise TypeError("prompts must be a list of prompts, e.g. ['Tell me a joke.']")
    texts = [format_prompt(tokenizer, p, config.use_chat_template) for p in prompts]
    eos_ids = _eos_ids(model, tokenizer)
    torch.manual_seed(config.seed)
    sampling = dict(do_sample=True, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)
    if config.temperature == 0:
        sampling = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    results: list[Completion] = []
    starts = range(0, len(texts), config.batch_size)
    for start in tqdm(starts, desc="generating", disable=not config.show_progress):
        batch = tokenizer(
            texts[start : start + config.batch_size],
            return_tensors="pt",
            padding=True,
            padding_side="left",  # new tokens are appended on the right, so pad on the left
            add_special_tokens=False,  # the chat template already has them
        ).to(model.device)
        out = model.generate(
            **batch,
            max_new_tokens=config.max_new_tokens,
            eos_token_id=eos_ids,
            pad_token_id=tokenizer.pad_token_id,
            return_dict_in_generate=True,
            output_logits=True,  # raw logits, before temperature/top-p: the model's own distribution
            **sampling,
        )
        new_tokens = out.sequences[:, batch["input_ids"].shape[1] :]  # (B, T_new)
        logits = torch.stack(out.logits, dim=1).float()  # (B, T_new, V)
        token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)  # (B, T_new)
        for row, prompt in enumerate(prompts[start : start + config.batch_size]):
            ids = new_tokens[row].tolist()
            end = next((i + 1 for i, t in enumerate(ids) if t in eos_ids), None)  # cut after the first EOS
            finished = end is not None
            ids = ids[: end or len(ids)]
            results.append(
                Completion(
                    prompt=prompt,
                    text=tokenizer.decode(ids, skip_special_tokens=True).strip(),
                    token_ids=ids,
                    logprobs=token_logprobs[row, : len(ids)].tolist(),
                    finished=finished,
                )
            )
    return results


@torch.inference_mode()
def completion_logprobs(model, tokenizer, prompts: list[Prompt], completion_ids: list[list[int]],
                        use_chat_template: bool = True, batch_size: int = 8,
                        temperature: float = 1.0) -> list[list[float]]:
    """Per-token log-probs of given completions under `model` (teacher forcing), e.g. for log(pi/pi_ref).

    `temperature` scores under the tempered distribution softmax(logits / T) that sampling at T draws from."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score log-probs, got {temperature}")
    results: list[list[float]] = []
    for start in range(0, len(prompts), batch_size):
        prompt_ids = [
            tokenizer(format_prompt(tokenizer, p, use_chat_template), add_special_tokens=False)["input_ids"]
            for p in prompts[start : start + batch_size]
        ]
        rows = [p + c for p, c in zip(prompt_ids, completion_ids[start : start + batch_size])]
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=model.device)  # (B, T)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=model.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # same positions as generate() uses under left padding
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits.float() / temperature  # (B, T, V)
        # token t is predicted by the logits at position t-1
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        for row, completion in enumerate(completion_ids[start : start + batch_size]):
            n = len(completion)
            results.append(logprobs[row, width - 1 - n :].tolist() if n else [])
    return results


@torch.inference_mode()
def text_logprobs(model, tokenizer, text: str) -> tuple[list[str], list[float]]:
    """Per-token log-probs of a plain text (no chat template): tokens[1:] and log p(token | previous tokens)."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(model.device)  # (1, T)
    if ids.shape[1] < 2:
        raise ValueError(f"text {text!r} is a single token; need at least two to score")
    logits = model(input_ids=ids).logits.float()  # (1, T, V)
    logprobs = torch.log_softmax(logits[0, :-1], dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)  # (T-1,)
    tokens = [tokenizer.decode([t]) for t in ids[0, 1:].tolist()]
    return tokens, logprobs.tolist()


def perplexity(logprobs: list[float]) -> float:
    """exp of the mean negative log-likelihood per token: 1 = certain, vocabulary size = uniform guessing."""
    return float(torch.tensor(logprobs).neg().mean().exp())
