"""What the app tells a person on every tab: what is happening, whether there is enough data yet, what to do next.

Plain functions over the run directory and the preference store; the UI file only places their text. Numbers
come from where they are decided (the label target of `AppContext`, the kinds' thresholds in
`workbench.reward.kinds`), never from a copy here. No emoji: the page ships no emoji font, so states are words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from apps.context import AppContext
from workbench.preferences.rankings import RankingStore

TOO_FEW_N = 20  # below this many items an interval is too wide to tell one outcome from another
DISAGREE_MARGIN = 0.1  # the RM "disagrees" only when P(A>B) is at least this far on the other side of 0.5
SIMULATED_PREFIX = "sim:"  # annotator names of simulated labelers (workbench.preferences.simulate)
USABLE_CHOICES = ("A", "B", "tie")  # what `workbench train-rm` trains on (ties as half a win each side)


def is_simulated(annotator: str) -> bool:
    return annotator.startswith(SIMULATED_PREFIX)


# -- labels -------------------------------------------------------------------------------------------------------

@dataclass
class LabelCounts:
    """Current labels split by what the reward model can learn from."""

    total: int = 0
    preferences: int = 0  # A or B on a pair whose sides differ
    ties: int = 0  # trained as half a win for each side
    both_bad: int = 0  # not trained on
    skips: int = 0  # not trained on
    identical: int = 0  # A/B/tie on a pair with two identical sides: dropped at training
    human: int = 0
    simulated: int = 0
    rankings: int = 0  # current "rank" answers of the rank-K mode
    ranking_pairs: int = 0  # their C(K, 2) pairs each, ties included (trained as half a win, as `train-rm` does)

    @property
    def usable(self) -> int:
        return self.preferences + self.ties + self.ranking_pairs


def label_counts(ctx: AppContext, annotator: str | None = None) -> LabelCounts:
    """LabelCounts of every current label and ranking (or one annotator's)."""
    labels = ctx.store.current_labels(annotator)
    same = {p.pair_id for p in ctx.store.pairs() if p.completion_a == p.completion_b} if labels else set()
    counts = LabelCounts(total=len(labels))
    for label in labels:
        if is_simulated(label.annotator):
            counts.simulated += 1
        else:
            counts.human += 1
        if label.choice in USABLE_CHOICES and label.pair_id in same:
            counts.identical += 1
        elif label.choice in ("A", "B"):
            counts.preferences += 1
        elif label.choice == "tie":
            counts.ties += 1
        elif label.choice == "both_bad":
            counts.both_bad += 1
        else:
            counts.skips += 1
    ranked = [r for r in RankingStore(ctx.store).current(annotator) if r.choice == "rank"]
    counts.rankings, counts.ranking_pairs = len(ranked), sum(len(r.ranks) * (len(r.ranks) - 1) // 2 for r in ranked)
    return counts


def enough_labels(ctx: AppContext) -> int:
    """Usable labels below which a reward model is usually near chance: the app's label target (AppContext)."""
    return ctx.label_target


def labels_markdown(counts: LabelCounts, needed: int) -> str:
    """Usable labels next to the total, what each kind of label does, and a warning while there are too few."""
    parts = [f"**{counts.usable} usable** for the reward model ({counts.preferences} A/B + {counts.ties} ties, a tie "
             f"trains as half a win each side) of {counts.total} labels"
             + (f", + {counts.ranking_pairs} pairs of {counts.rankings} ranking{'s' * (counts.rankings != 1)}"
                if counts.rankings else "")]
    unused = [f"{n} {name}" for n, name in ((counts.both_bad, "both bad"), (counts.skips, "skipped"),
                                           (counts.identical, "on identical replies")) if n]
    if unused:
        parts.append(f"not trained on: {', '.join(unused)}")
    if counts.simulated:
        parts.append(f"{counts.human} by people, {counts.simulated} simulated")
    text = " · ".join(parts) + "."
    if counts.usable < needed:
        text += (f"\n\n**Too few labels yet:** below ~{needed} usable labels the reward model is near chance, and RL "
                 f"on it teaches little. {needed - counts.usable} more to go (rank more, or top up with a simulated "
                 "persona below).")
    return text


# -- estimates ------------------------------------------------------------------------------------------------------

def estimate_markdown(value: float | None, low: float | None, high: float | None, n: int, unit: str = "pairs") -> str:
    """"0.67 (95% CI 0.00-1.00, n = 3 pairs; too few to tell)": every interval with its n, flagged when small."""
    if value is None or n == 0 or (isinstance(value, float) and math.isnan(value)):
        return f"– (n = 0 {unit})"
    text = f"{value:.2f} (95% CI {low:.2f}–{high:.2f}, n = {n} {unit}"
    return text + (f"; too few to tell, aim for {TOO_FEW_N}+)" if n < TOO_FEW_N else ")")


# -- the reward model's view of a labelled pair ---------------------------------------------------------------------

def verdict(choice: str, p_a: float | None) -> str:
    """"agrees", "disagrees", "unsure" (P(A>B) within DISAGREE_MARGIN of 0.5) or "" (not an A/B vote, no RM)."""
    if p_a is None or choice not in ("A", "B"):
        return ""
    p_chosen = p_a if choice == "A" else 1.0 - p_a
    if abs(p_chosen - 0.5) < DISAGREE_MARGIN:
        return "unsure"
    return "agrees" if p_chosen > 0.5 else "disagrees"


VERDICT_TEXT = {"agrees": "The reward model **agrees** with you.",
                "disagrees": "The reward model **disagrees** with you (it prefers the other side).",
                "unsure": f"The reward model cannot tell these apart (P within {DISAGREE_MARGIN} of 0.5).", "": ""}


# -- one line per tab: what is happening, what next -----------------------------------------------------------------

def rank_guidance(counts: LabelCounts, needed: int, has_reward_model: bool, rank_k: bool = False) -> str:
    """`rank_k`: the Rank tab is in "rank K" mode (order K answers instead of picking one of two)."""
    if counts.usable < needed and rank_k:
        step = ("Order the answers best first (keys 1-9, then Enter or *Submit ranking*; ties as 3=1). A ranking "
                "of K answers teaches the reward model C(K, 2) pairs (6 for K = 4, from reading 4 texts); when the "
                "warning above is gone, train it in the *Reward model* tab.")
    elif counts.usable < needed:
        step = ("Pick the reply you prefer (keys 1-5). Every A/B vote or tie teaches the reward model your taste; "
                "when the warning above is gone, train it in the *Reward model* tab. Or switch the mode to *rank K*: "
                "order K answers best first; one ranking of 4 gives 6 pairs for reading 4 texts (a pair costs 2).")
    elif not has_reward_model:
        step = "Enough labels: train the reward model in the *Reward model* tab."
    else:
        step = "Keep ranking (tick active selection to label where the reward model is least sure), or retrain."
    return f"**Now:** {step}"


def reward_guidance(counts: LabelCounts, needed: int, has_reward_model: bool, running: bool) -> str:
    if running:
        return "**Now:** the reward model is training in the background; the curves fill in as it logs."
    if counts.usable < 4:
        return ("**Now:** label some pairs in the *Rank* tab first; the reward model learns from A/B votes, ties "
                "and rankings of K answers.")
    if not has_reward_model:
        note = "" if counts.usable >= needed else f" (with {counts.usable} usable labels expect near-chance accuracy)"
        return f"**Now:** train the reward model on your labels{note}."
    return ("**Next:** check its accuracy below (agreement with your held-out labels), then run RL in the *RL "
            "fine-tuning* tab, or retrain after more labels.")


def rl_guidance(has_reward_model: bool, has_tuned: bool, running: bool) -> str:
    if running:
        return "**Now:** RL is running: the policy samples replies, the reward model scores them, the policy moves."
    if not has_reward_model:
        return "**Now:** train a reward model first (or pick dpo, which learns from the labels directly)."
    if has_tuned:
        return "**Next:** compare the tuned policy with the base in the *Compare* tab, or start a new run."
    return "**Now:** start an RL run; the quick preset's step count is a good first try."


def compare_guidance(has_tuned: bool, has_report: bool) -> str:
    if not has_tuned:
        return "**Now:** nothing to compare yet: run RL in the *RL fine-tuning* tab first."
    if not has_report:
        return "**Now:** press *Evaluate* for win rates on held-out prompts, or blind-test the two policies below."
    return "**Next:** blind-test the tuned policy against the base below; your votes give its win rate."
