"""Batched sampling with the chat template (whole, or streamed as tokens arrive), plus per-token log-probs for
later KL estimates.

Every stage that samples (pairs, simulated labels, RL, evaluation, best-of-n, the app) goes through one answer-shaping
policy, `AnswerShaping`: a system prompt that asks for brevity, and a stop at the first sentence end once the reply
has a few words, so people read, label and score complete answers rather than replies cut mid-sentence."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from workbench.shaping import DEFAULT_SYSTEM_PROMPT, AnswerShaping, SentenceStop  # noqa: F401  (re-exported)

Prompt = str | list[dict]  # plain text, or chat messages [{"role": ..., "content": ...}]


def prompt_text(prompt: Prompt) -> str:
    """The last user message (or the plain prompt): what a person reads and what a gold reward is given."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), prompt[-1]["content"])


def conversation_text(prompt: Prompt) -> str:
    """The whole prompt as a person reads it and the reward model scores it: text as is, one user turn as its text,
    a longer conversation turn by turn ("User: ...\n\nAssistant: ..."). System turns are left out: they steer the
    policy (answer shaping) and are not part of what the reply answers."""
    if isinstance(prompt, str):
        return prompt
    turns = [m for m in prompt if m["role"] != "system"] or prompt
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns)


def completion_text(value: str | list[dict]) -> str:
    """A completion as text: conversational preference rows hold [{"role": "assistant", "content": ...}]."""
    return value if isinstance(value, str) else value[-1]["content"]


def sentence_stopping_criterion(stop: SentenceStop, prompt_width: int) -> StoppingCriteria:
    """A `StoppingCriteria` for `model.generate` (prompts left-padded to `prompt_width`) that ends each row at its
    sentence end; `SentenceStop.cut` then drops the padding generate adds after it."""
    return _SentenceStopping(stop, prompt_width)


class _SentenceStopping(StoppingCriteria):
    """Ends a row of `model.generate` as soon as its reply ends a sentence (`SentenceStop`)."""

    def __init__(self, stop: SentenceStop, prompt_width: int):
        self.stop, self.prompt_width = stop, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = input_ids[:, -1].tolist()
        for row, token in enumerate(last):
            if token in self.stop.candidates:
                ids = input_ids[row, self.prompt_width :].tolist()
                done[row] = self.stop.ends_at(ids, len(ids) - 1)
        return done


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
    shaping: AnswerShaping = field(default_factory=AnswerShaping)  # complete, short replies; AnswerShaping.off() for raw

    def __post_init__(self) -> None:
        if isinstance(self.shaping, dict):  # read back from a JSON config
            self.shaping = AnswerShaping.from_dict(self.shaping)
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
    finished: bool = False  # True when the reply ended (EOS, or a sentence end under shaping) within max_new_tokens
    stop_reason: str = "length"  # "eos", "sentence" (AnswerShaping's stop) or "length" (cut off at max_new_tokens)

    @property
    def sum_logprob(self) -> float:
        return float(sum(self.logprobs))

    def to_dict(self) -> dict:
        return asdict(self)


def with_system_prompt(prompt: Prompt, system_prompt: str | None) -> list[dict]:
    """The prompt as chat messages, led by `system_prompt` unless it already has a system message."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": system_prompt}] + messages
    return messages


def format_prompt(tokenizer, prompt: Prompt, use_chat_template: bool = True, system_prompt: str | None = None) -> str:
    """The exact string the model sees for a prompt (a plain-text prompt without chat template ignores the system
    prompt)."""
    if isinstance(prompt, str) and not use_chat_template:
        return prompt
    messages = with_system_prompt(prompt, system_prompt)
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


def sampling_precision(bf16: bool | None):
    """The context to sample in: bf16 autocast if `bf16` (None: where bf16 math is native), else nothing.

    1.6x faster sampling on a bf16 CPU, and a pretrained policy's next tokens stay within KL 0.001 nats of fp32's.
    But autocast rounds the weights to bf16 (8 bits of mantissa, ~0.4 % steps), and RL's updates are mostly smaller:
    67 % of the weights the quick pipeline's RLOO run changed round back to the base's bf16 value (median change
    0.1 %). Sampled in bf16, that policy won 0.65 against the base by gold, in fp32 0.73 (3 seeds each). So the
    evaluation samples in fp32; log-probs for the KL are computed outside this context either way."""
    from workbench.models import resolve_bf16

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16, enabled=resolve_bf16(bf16))


def generate(model, tokenizer, prompts: list[Prompt], config: SamplingConfig | None = None) -> list[Completion]:
    """Sample one completion per prompt, in batches with left padding."""
    return _generate(model, tokenizer, prompts, config or SamplingConfig())


@torch.inference_mode()  # entered by whichever thread runs it (inference mode is per thread)
def _generate(model, tokenizer, prompts: list[Prompt], config: SamplingConfig, streamer: BaseStreamer | None = None,
              stopping_criteria: StoppingCriteriaList | None = None) -> list[Completion]:
    if isinstance(prompts, (str, dict)):
        raise TypeError("prompts must be a list of prompts, e.g. ['Tell me a joke.']")
    texts = [format_prompt(tokenizer, p, config.use_chat_template, config.shaping.active_system_prompt) for p in prompts]
    eos_ids = _eos_ids(model, tokenizer)
    stop = SentenceStop(tokenizer, eos_ids, config.shaping)
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
        criteria = StoppingCriteriaList(stopping_criteria or [])
        if stop.active:  # end each row at its first sentence end instead of decoding to max_new_tokens
            criteria.append(_SentenceStopping(stop, batch["input_ids"].shape[1]))
        out = model.generate(
            **batch,
            max_new_tokens=config.max_new_tokens,
            eos_token_id=eos_ids,
            pad_token_id=tokenizer.pad_token_id,
            return_dict_in_generate=True,
            output_logits=True,  # raw logits, before temperature/top-p: the model's own distribution
            streamer=streamer,
            stopping_criteria=criteria,
            **sampling,
        )
        new_tokens = out.sequences[:, batch["input_ids"].shape[1] :]  # (B, T_new)
        logits = torch.stack(out.logits, dim=1).float()  # (B, T_new, V)
        token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)  # (B, T_new)
        for row, prompt in enumerate(prompts[start : start + config.batch_size]):
            ids, reason = stop.cut(new_tokens[row].tolist())  # drops what follows EOS / the sentence end (padding)
            results.append(
                Completion(
                    prompt=prompt,
                    text=tokenizer.decode(ids, skip_special_tokens=True).strip(),
                    token_ids=ids,
                    logprobs=token_logprobs[row, : len(ids)].tolist(),
                    finished=reason != "length",
                    stop_reason=reason,
                )
            )
    return results


@dataclass
class StreamUpdate:
    """What `generate_stream` yields: every prompt's completion so far, and at the end the finished completions."""

    texts: list[str]  # decoded so far, special tokens removed, one per prompt
    completions: list[Completion] | None = None  # on the last update only: exactly what generate() returns


class _RowStreamer(BaseStreamer):
    """Collects the tokens `model.generate` samples, one column per step, and decodes every row up to its first EOS.

    generate() calls put() first with the prompt ids (B, T), then with each step's new tokens (B,); rows that have
    finished receive padding, which is ignored here."""

    def __init__(self, tokenizer, n_rows: int, stop: SentenceStop, publish):
        self.tokenizer, self.stop, self.publish = tokenizer, stop, publish
        self.ids: list[list[int]] = [[] for _ in range(n_rows)]
        self.finished = [False] * n_rows
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call holds the prompt
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self.ids), -1)[:, -1].tolist()):  # (B,)
            if self.finished[row]:
                continue
            self.ids[row].append(token)
            self.finished[row] = token in self.stop.eos_ids or self.stop.ends_at(self.ids[row], len(self.ids[row]) - 1)
        self.publish(StreamUpdate([self.text(ids) for ids in self.ids]))

    def text(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        return text.removesuffix("\ufffd")  # half of a multi-byte character: wait for the next token

    def end(self) -> None:
        pass


class _StopWhenSet(StoppingCriteria):
    """Ends every row at the next step once `event` is set (the consumer of a stream went away)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def generate_stream(model, tokenizer, prompts: list[Prompt], config: SamplingConfig | None = None,
                    lock: threading.Lock | None = None) -> Iterator[StreamUpdate]:
    """`generate` for one batch of prompts, streamed: yields the partial texts as tokens arrive, then a last update
    whose `completions` are exactly what `generate(model, tokenizer, prompts, config)` returns (same seed, same text).

    All prompts are decoded together in one `model.generate` call on a background thread, which holds `lock` (if
    given) while it decodes. Updates the consumer is too slow to take are merged (it always sees the latest texts).
    Closing the iterator early stops the decoding at the next step."""
    config = config or SamplingConfig()
    if isinstance(prompts, (str, dict)):
        raise TypeError("prompts must be a list of prompts, e.g. ['Tell me a joke.']")
    if len(prompts) > config.batch_size:
        raise ValueError(f"generate_stream decodes one batch: {len(prompts)} prompts > batch_size "
                         f"{config.batch_size}; raise batch_size or stream fewer prompts.")
    updates: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()
    eos_ids = _eos_ids(model, tokenizer)
    streamer = _RowStreamer(tokenizer, len(prompts), SentenceStop(tokenizer, eos_ids, config.shaping), updates.put)

    def decode() -> None:
        try:
            with lock or contextlib.nullcontext():
                if stop.is_set():  # the consumer left while we waited for the lock
                    return
                completions = _generate(model, tokenizer, prompts, config, streamer,
                                        StoppingCriteriaList([_StopWhenSet(stop)]))
            updates.put(StreamUpdate([c.text for c in completions], completions))
        except BaseException as error:  # handed to the consumer, raised there
            updates.put(error)

    thread = threading.Thread(target=decode, name="generate_stream", daemon=True)
    thread.start()
    try:
        while True:
            update = updates.get()
            while not updates.empty():  # the consumer fell behind: skip to the latest texts
                update = updates.get()
            if isinstance(update, BaseException):
                raise update
            yield update
            if update.completions is not None:
                return
    finally:
        stop.set()
        thread.join()


class _PrepackedLinear(torch.nn.Linear):
    """nn.Linear whose weight is also kept in MKL's packed GEMM layout for inputs of `packed_rows` rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # MKL uses the packed copy when x has packed_rows rows, and the plain weight otherwise (e.g. the prefill).
        return torch.ops.mkl._mkl_linear(x, self.packed_weight, self.weight, self.bias, self.packed_rows)


def prepack_for_decoding(model, rows: int = 2) -> int:
    """Speed up decoding `rows` sequences at a time (2 = both sides of a pair) on CPU; returns the layers packed.

    At a handful of rows, a decoding step is a few hundred matrix-vector-like products, and fp32 GEMM re-packs each
    weight matrix on every call. Keeping a copy in MKL's packed layout (what torch.compile's CPU backend does for
    frozen weights) saves that: same fp32 arithmetic (outputs agree to ~1e-6 relative), ~1.2-1.7x faster steps,
    at the cost of a second copy of the linear weights. Inference only: packed copies go stale if the weights
    change, and they do not take part in autograd. A no-op (returns 0) without MKL or on a non-CPU model."""
    if not (torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")):
        return 0
    packed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.device.type == "cpu" \
                and module.weight.dtype == torch.float32:
            weight = module.weight.detach()
            module.register_buffer("packed_weight", torch.ops.mkl._mkl_reorder_linear_weight(weight, rows),
                                   persistent=False)  # not in state_dict: checkpoints are unchanged
            module.packed_rows = rows
            module.__class__ = _PrepackedLinear
            packed += 1
    return packed


@torch.inference_mode()
def completion_logprobs(model, tokenizer, prompts: list[Prompt], completion_ids: list[list[int]],
                        use_chat_template: bool = True, batch_size: int = 8,
                        temperature: float = 1.0, system_prompt: str | None = None) -> list[list[float]]:
    """Per-token log-probs of given completions under `model` (teacher forcing), e.g. for log(pi/pi_ref).

    `temperature` scores under the tempered distribution softmax(logits / T) that sampling at T draws from;
    `system_prompt` must be the one the completions were sampled with (`AnswerShaping.active_system_prompt`)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score log-probs, got {temperature}")
    results: list[list[float]] = []
    for start in range(0, len(prompts), batch_size):
        prompt_ids = [
            tokenizer(format_prompt(tokenizer, p, use_chat_template, system_prompt), add_special_tokens=False)["input_ids"]
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
