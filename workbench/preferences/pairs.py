"""Pairs of completions for the same prompt, ready to be ranked by a person or a simulated labeler.

Two sources: two samples of one policy (drawn in one batch), or one sample each from two policies; whole
(`make_pairs`, many prompts) or streamed token by token (`stream_pair`, one prompt, for the app).
Sides are shown in a random (recorded) order so position bias can be measured.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

from tqdm.auto import tqdm

from workbench.data import PromptRecord
from workbench.generation import AnswerShaping, Completion, SamplingConfig, generate, generate_stream
from workbench.preferences.schema import Pair


@dataclass
class PairConfig:
    max_new_tokens: int = 64  # a budget, not a length: shaping ends most replies earlier, at a sentence end
    temperature: float = 1.0  # diverse pairs teach the reward model more than near-duplicates
    top_p: float = 0.95
    seed: int = 0  # generation seed (one batch holds both sides; seed + 1 for a second policy); also the side order
    batch_size: int = 16
    shaping: AnswerShaping = field(default_factory=AnswerShaping)  # complete, short answers (see generation)

    def __post_init__(self) -> None:
        if isinstance(self.shaping, dict):
            self.shaping = AnswerShaping.from_dict(self.shaping)


def _sampling(config: PairConfig, seed: int) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                          seed=seed, batch_size=config.batch_size, shaping=config.shaping)


def side_finished(pair: Pair) -> tuple[bool | None, bool | None]:
    """Whether each displayed side ended by itself (EOS or a sentence end); None for pairs stored before this was
    recorded, or imported ones."""
    return pair.generation.get("finished_a"), pair.generation.get("finished_b")


def make_pairs(prompts: list[PromptRecord], policy, config: PairConfig | None = None, policy_b=None,
               model_names: tuple[str, str] = ("policy", "policy"), show_progress: bool = False) -> list[Pair]:
    """One pair per prompt. `policy` and `policy_b` are (model, tokenizer); without policy_b both sides are two
    samples of `policy`, drawn in one batch. Pairs whose two sides are identical are dropped (nothing to compare)."""
    config = config or PairConfig()
    texts = [r.prompt for r in prompts]
    first, second = [], []
    for start in tqdm(range(0, len(texts), config.batch_size), desc="pairs", disable=not show_progress):
        chunk = texts[start : start + config.batch_size]
        # per-chunk seeds keep results independent of how many prompts came before
        if policy_b is None:  # both sides from one policy: one batch of 2x the prompts (decoding is memory-bound)
            both = generate(*policy, chunk + chunk, replace(_sampling(config, config.seed + 2 * start),
                                                             batch_size=2 * len(chunk)))
            first, second = first + both[: len(chunk)], second + both[len(chunk) :]
        else:
            first += generate(*policy, chunk, _sampling(config, config.seed + 2 * start))
            second += generate(*policy_b, chunk, _sampling(config, config.seed + 2 * start + 1))
    return assemble_pairs(prompts, first, second, config, model_names)


def side_orders(seed: int) -> Iterator[bool]:
    """One fair coin per kept pair, drawn from `seed`: True shows the second sample on the left (A)."""
    order = random.Random(seed)
    while True:
        yield order.random() < 0.5


def assemble_pairs(prompts: list[PromptRecord], first: list[Completion], second: list[Completion],
                   config: PairConfig, model_names: tuple[str, str]) -> list[Pair]:
    """Pairs from two samples per prompt, sides in random order (`side_orders(config.seed)`); pairs whose two sides
    are identical or empty are dropped."""
    orders = side_orders(config.seed)
    settings = asdict(config)
    pairs = []
    for record, one, two in zip(prompts, first, second):
        if one.text == two.text or not one.text or not two.text:
            continue
        swapped = next(orders)
        (a, model_a), (b, model_b) = ((two, model_names[1]), (one, model_names[0])) if swapped else (
            (one, model_names[0]), (two, model_names[1]))
        pairs.append(Pair(
            pair_id=Pair.make_id(record.prompt, a.text, b.text, model_a, model_b),
            prompt=record.prompt, completion_a=a.text, completion_b=b.text, model_a=model_a, model_b=model_b,
            swapped=swapped, generation={**settings, "finished_a": a.finished, "finished_b": b.finished},
            prompt_id=record.id, created_at=time.time(),
        ))
    return pairs


@dataclass
class PairDraft:
    """What `stream_pair` yields: both sides as displayed (A left, B right) while they are being written."""

    text_a: str
    text_b: str
    done: bool = False  # decoding has finished
    pair: Pair | None = None  # when done: the pair, or None when its sides came out identical or empty


def stream_pair(record: PromptRecord, policy, config: PairConfig | None = None, policy_b=None,
                model_names: tuple[str, str] = ("policy", "policy"), lock=None) -> Iterator[PairDraft]:
    """`make_pairs` for one prompt, streamed: the same pair for the same config, its sides growing token by token.

    One policy: both samples in one batch, streamed side by side. Two policies: one side after the other. `lock` is
    held while a model decodes (see `generate_stream`)."""
    config = config or PairConfig()
    swapped = next(side_orders(config.seed))  # the coin assemble_pairs will draw for this (only) pair

    def draft(one: str, two: str) -> PairDraft:
        return PairDraft(two, one) if swapped else PairDraft(one, two)

    if policy_b is None:
        sampling = replace(_sampling(config, config.seed), batch_size=2)
        for update in generate_stream(*policy, [record.prompt] * 2, sampling, lock=lock):
            yield draft(*update.texts)
        first, second = update.completions
    else:
        for update in generate_stream(*policy, [record.prompt], _sampling(config, config.seed), lock=lock):
            yield draft(update.texts[0], "")
        first = update.completions[0]
        for update in generate_stream(*policy_b, [record.prompt], _sampling(config, config.seed + 1), lock=lock):
            yield draft(first.text, update.texts[0])
        second = update.completions[0]
    pairs = assemble_pairs([record], [first], [second], config, model_names)
    yield replace(draft(first.text, second.text), done=True, pair=pairs[0] if pairs else None)
