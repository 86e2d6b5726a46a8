"""The answer-shaping policy every stage samples with: complete, short replies people can read at a glance.

A reply ends at the model's EOS, or at its first sentence end once it has `min_words` words, and a system prompt
asks for brevity. A reply that reaches the token budget first is kept as sampled and flagged cut off. Stopping only
drops tokens (those after the stop), so log pi / pi_ref over the kept tokens stays exact. A light module (no torch):
configs and the CLI import it; `workbench.generation` applies it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from functools import lru_cache

DEFAULT_SYSTEM_PROMPT = "Reply in one or two short sentences."
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*$")  # a final . ! or ?, maybe inside closing quotes or brackets
# not an end: a list number or year ("1." "2010."), an ellipsis, an abbreviation
_NOT_AN_END = re.compile(r"((^|\s)\d+\.|\.\.|\b(?:e\.g|i\.e|dr|mr|mrs|ms|vs|approx)\.)[\"'”’)\]]*$", re.IGNORECASE)


@dataclass
class AnswerShaping:
    """How every stage keeps replies short and complete (see `SentenceStop` for the rule).

    A reply ends at the model's EOS, or at the first sentence end once it has `min_words` words; one that reaches
    max_new_tokens before either is kept as sampled and flagged `finished=False` ("cut off"). Stopping only ever
    drops the tokens after the stop, never adds one, so every kept token was sampled by the policy and
    log pi / pi_ref over the kept tokens is exact (the stop is a function of the sampled prefix alone)."""

    enabled: bool = True  # False: raw sampling with the model's own system prompt, cut at max_new_tokens
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT  # asks for brevity; None keeps the chat template's default
    stop_at_sentence_end: bool = True  # end the reply at a sentence end, once it has min_words words
    min_words: int = 8  # so "Sure!" or "Great question." does not end a reply on its own

    def __post_init__(self) -> None:
        if self.min_words < 0:
            raise ValueError(f"answer shaping: min_words must be >= 0, got {self.min_words}")
        if self.system_prompt is not None and not str(self.system_prompt).strip():
            self.system_prompt = None

    @classmethod
    def off(cls) -> "AnswerShaping":
        return cls(enabled=False)

    @property
    def active_system_prompt(self) -> str | None:
        return self.system_prompt if self.enabled else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "AnswerShaping":
        """Settings as recorded in pair metadata or a run config; None (an older record) means shaping was off."""
        if data is None:
            return cls.off()
        return cls(**{k: v for k, v in data.items() if k in {f.name for f in fields(cls)}})


class SentenceStop:
    """Where a sampled reply ends under `AnswerShaping`: at the first EOS, or at the first token after which the
    decoded text ends a sentence (". ! ?", not "1." "3.5" "e.g." "...") and holds at least `min_words` words."""

    def __init__(self, tokenizer, eos_ids: list[int], shaping: AnswerShaping):
        self.tokenizer, self.eos_ids, self.shaping = tokenizer, set(eos_ids), shaping
        self.active = shaping.enabled and shaping.stop_at_sentence_end
        # only tokens that can end a sentence need a decode: a cheap filter before the full-text check
        self.candidates = _sentence_end_tokens(tokenizer) if self.active else frozenset()

    def is_sentence_end(self, text: str) -> bool:
        text = text.rstrip()
        return (bool(_SENTENCE_END.search(text)) and not _NOT_AN_END.search(text)
                and len(text.split()) >= self.shaping.min_words)

    def ends_at(self, ids: list[int], i: int) -> bool:
        """Whether the reply ids[: i + 1] is over (a sentence end; EOS is checked by the caller)."""
        return self.active and ids[i] in self.candidates and self.is_sentence_end(
            self.tokenizer.decode(ids[: i + 1], skip_special_tokens=True))

    def cut(self, ids: list[int]) -> tuple[list[int], str]:
        """(kept ids, stop_reason): 'eos' (kept up to and including EOS), 'sentence', or 'length' (cut off)."""
        for i, token in enumerate(ids):
            if token in self.eos_ids:
                return ids[: i + 1], "eos"
            if self.ends_at(ids, i):
                return ids[: i + 1], "sentence"
        return list(ids), "length"

    def is_complete(self, ids: list[int]) -> bool:
        """A kept reply that ended (EOS or a sentence end) rather than being cut at the token budget."""
        return bool(ids) and (ids[-1] in self.eos_ids or self.ends_at(ids, len(ids) - 1))


@lru_cache(maxsize=8)
def _sentence_end_tokens(tokenizer) -> frozenset[int]:
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    ends = set()
    for token_id, piece in enumerate(pieces):
        if piece and any(ch in piece for ch in ".!?"):
            text = tokenizer.convert_tokens_to_string([piece]).rstrip()
            if _SENTENCE_END.search(text):
                ends.add(token_id)
    return frozenset(ends)
