"""What the preference store holds: a `Pair` of completions shown side by side, and the `Label`s people give it.

A pair is stored AS DISPLAYED: `completion_a` is the left side, `completion_b` the right. Sides are shown in a
random order (`swapped`), so a labeller's preference for the left side (position bias) can be measured.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from workbench.generation import prompt_text

CHOICES = ("A", "B", "tie", "both_bad", "skip")  # what a labeller can answer
UNDO = "undo"  # a revision that withdraws the labeller's current label on a pair

Messages = list[dict]  # chat messages: [{"role": "user", "content": "..."}, ...]


def check_prompt(prompt, where: str) -> None:
    """Raise ValueError unless `prompt` is non-empty text or a non-empty list of {"role", "content"} messages."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{where}: prompt is empty; give the text the policy was asked to continue.")
        return
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"{where}: prompt must be text or a non-empty list of chat messages, got {prompt!r:.80}.")
    for number, message in enumerate(prompt, start=1):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str) and message["role"]
                and isinstance(message.get("content"), str)):
            raise ValueError(f"{where}: prompt message {number} must be {{'role': str, 'content': str}}, "
                             f"got {message!r:.80}.")


@dataclass(frozen=True)
class Pair:
    pair_id: str  # stable id, see `make_id`
    prompt: str | Messages  # plain text, or chat messages (only "role" and "content" are kept)
    completion_a: str  # shown on the left
    completion_b: str  # shown on the right
    model_a: str  # model/checkpoint that produced the left side
    model_b: str  # model/checkpoint that produced the right side
    swapped: bool  # True when the left side is the second sample generated (sides are shown in random order)
    generation: dict = field(default_factory=dict)  # sampling settings: seed, temperature, top_p, max_new_tokens...
    # (imported pairs: {"import": {...}}, their source form and scores, see preferences/io.py)
    prompt_id: str = ""  # id of the prompt in its prompt set, when it has one
    created_at: float = 0.0  # unix time the pair was made

    def __post_init__(self):
        where = f"Pair {self.pair_id!r}"
        if not isinstance(self.pair_id, str) or not self.pair_id:
            raise ValueError(f"Pair: pair_id must be a non-empty string; use Pair.make_id(...), got {self.pair_id!r}.")
        check_prompt(self.prompt, where)
        if not isinstance(self.prompt, str):  # keep only the two keys every chat template understands
            object.__setattr__(self, "prompt", [{"role": m["role"], "content": m["content"]} for m in self.prompt])
        for name in ("completion_a", "completion_b", "model_a", "model_b", "prompt_id"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{where}: {name} must be a string, got {type(getattr(self, name)).__name__}.")
        if not isinstance(self.swapped, bool):
            raise ValueError(f"{where}: swapped must be True or False, got {self.swapped!r}.")
        if not isinstance(self.generation, dict):
            raise ValueError(f"{where}: generation must be a dict of sampling settings, got {self.generation!r:.80}.")

    @staticmethod
    def make_id(prompt: str | Messages, completion_a: str, completion_b: str, model_a: str, model_b: str) -> str:
        """16 hex characters of sha256 over the content: the same pair always gets the same id."""
        content = json.dumps([prompt, completion_a, completion_b, model_a, model_b], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(content.encode()).hexdigest()[:16]

    @property
    def prompt_text(self) -> str:
        return prompt_text(self.prompt)


@dataclass(frozen=True)
class Label:
    label_id: int  # row id in the store, increasing in commit order
    submission_id: str  # chosen by the client; re-sending it returns this label instead of adding another
    pair_id: str
    annotator: str
    choice: str  # one of CHOICES, or UNDO
    revision: int  # 1, 2, ... per (pair_id, annotator): a changed vote is a new revision, never an overwrite
    comment: str | None
    score_a: float | None  # the reward model's score of the left side when the label was given, if known
    score_b: float | None  # ... of the right side
    created_at: float  # unix time of the commit
