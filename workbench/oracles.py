"""Simulated labelers: gold reward functions plus a Bradley-Terry annotator.

They stand in for people so notebooks, tests and benchmarks can label thousands of pairs unattended,
and they are the ground truth ("gold") that later stages are judged by — not the learned proxy.

Gold rewards, for a completion y (words = whitespace-split tokens of y):
  positive        r = VADER compound sentiment of y, in [-1, 1]
  concise         r = -max(0, lo - |words|, |words| - hi) / 10   (0 inside the window [lo, hi] = [8, 30] words)
  no-repeat       r = -(repeated word 3-grams) / (all word 3-grams)  in [-1, 0]
  upbeat-concise  r = positive + concise + no-repeat            (the default composite)

Annotator (Bradley & Terry 1952): P(A > B) = sigmoid((r_A - r_B) / T). T is the annotator's noise:
T -> 0 always picks the higher gold reward; large T is a coin flip.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

GoldReward = Callable[[str, str], float]  # (prompt text, completion) -> gold reward

CONCISE_WINDOW = (8, 30)  # words: short replies a person can rate at a glance


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def positive(prompt: str, completion: str) -> float:
    return float(_vader().polarity_scores(completion)["compound"])


def concise(prompt: str, completion: str, window: tuple[int, int] = CONCISE_WINDOW) -> float:
    n_words = len(completion.split())
    low, high = window
    return -max(0, low - n_words, n_words - high) / 10.0  # 0.1 per word outside the window


def no_repeat(prompt: str, completion: str, n: int = 3) -> float:
    words = completion.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return -(len(grams) - len(set(grams))) / len(grams)


def upbeat_concise(prompt: str, completion: str) -> float:
    return positive(prompt, completion) + concise(prompt, completion) + no_repeat(prompt, completion)


ORACLES: dict[str, GoldReward] = {
    "positive": positive,
    "concise": concise,
    "no-repeat": no_repeat,
    "upbeat-concise": upbeat_concise,
}


def get_oracle(name: str) -> GoldReward:
    if name not in ORACLES:
        raise ValueError(f"Unknown oracle {name!r}; choose one of {sorted(ORACLES)}.")
    return ORACLES[name]


@dataclass
class SimulatedLabeler:
    """An imperfect annotator: picks A or B by a Bradley-Terry draw on the gold reward difference."""

    oracle: str = "upbeat-concise"
    temperature: float = 0.1  # noise; 0.1 on this scale errs on close pairs like a careful person
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        self.gold = get_oracle(self.oracle)
        self._rng = random.Random(self.seed)

    def prob_a(self, prompt: str, completion_a: str, completion_b: str) -> float:
        """P(A preferred) = sigmoid((r_A - r_B) / T)."""
        diff = self.gold(prompt, completion_a) - self.gold(prompt, completion_b)
        if self.temperature == 0:
            return 0.5 if diff == 0 else float(diff > 0)
        return 1.0 / (1.0 + math.exp(-max(min(diff / self.temperature, 50.0), -50.0)))

    def choose(self, prompt: str, completion_a: str, completion_b: str) -> str:
        """'A', 'B', or 'tie' (only when the gold rewards are exactly equal at temperature 0)."""
        p = self.prob_a(prompt, completion_a, completion_b)
        if self.temperature == 0 and p == 0.5:
            return "tie"
        return "A" if self._rng.random() < p else "B"
