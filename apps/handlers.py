"""Pure functions behind the app's components: unit-testable without Gradio."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.generation import SamplingConfig, generate

MAX_PROMPT_CHARS = 2000  # longer prompts are rejected before they reach the model
MAX_NEW_TOKENS = 256
MAX_SAMPLES = 8


@dataclass
class LoadedPolicy:
    """A policy loaded once when the app is built, shared read-only by every request."""

    name: str
    model: object
    tokenizer: object


class InputError(ValueError):
    """A value from the client that the server refuses; the message is shown to the person."""


def validate_generation_request(prompt: str, n: int, temperature: float, max_new_tokens: int, seed: int) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("Write a prompt first.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"The prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}.")
    if not 1 <= int(n) <= MAX_SAMPLES:
        raise InputError(f"Number of samples must be between 1 and {MAX_SAMPLES}, got {n}.")
    if not 0 <= float(temperature) <= 2:
        raise InputError(f"Temperature must be between 0 and 2, got {temperature}.")
    if not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
        raise InputError(f"Max new tokens must be between 1 and {MAX_NEW_TOKENS}, got {max_new_tokens}.")
    if int(seed) < 0:
        raise InputError(f"Seed must be >= 0, got {seed}.")


def sample_completions(policy: LoadedPolicy, prompt: str, n: int, temperature: float, max_new_tokens: int,
                       seed: int) -> list[dict]:
    """n completions of one prompt: text, token count, mean log-prob and whether it finished with EOS."""
    validate_generation_request(prompt, n, temperature, max_new_tokens, seed)
    config = SamplingConfig(max_new_tokens=int(max_new_tokens), temperature=float(temperature), seed=int(seed),
                            batch_size=int(n))
    completions = generate(policy.model, policy.tokenizer, [prompt.strip()] * int(n), config)
    return [
        {"sample": i + 1, "completion": c.text, "tokens": len(c.token_ids),
         "mean_logprob": round(c.sum_logprob / max(len(c.token_ids), 1), 3), "finished": c.finished}
        for i, c in enumerate(completions)
    ]
