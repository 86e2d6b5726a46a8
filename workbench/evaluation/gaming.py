"""Gaming indicators: signs that a gold win came from pleasing the labeler rather than answering better.

Read next to the gold win rate of every evaluation:
  top rising n-grams   the 1-3 word phrases whose count of replies containing them rose most from base to tuned:
                       rise = #tuned replies with g - #base replies with g (a stock phrase the policy learned);
                       a shorter n-gram found in exactly the same replies as a longer listed one is left out
  task failures        share of replies with task_following(x, y) < 0.5 (no answer, or off the prompt's topic),
                       base and tuned, with the tuned replies' reasons
  length change        mean words per reply, tuned - base (RL against a length-sensitive gold shortens replies)
  win rate by oracle   the tuned policy's gold win rate by the new default and by the round-1 `upbeat-concise`:
                       a win only the prompt-blind gold sees is a win for gaming
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from workbench.evaluation.metrics import bootstrap_ci, pairwise_outcomes
from workbench.oracles import ON_TASK, STOPWORDS, gold_scores, non_answer_reason, word_tokens

COMPARED_ORACLES = ("helpful-upbeat-concise", "upbeat-concise")


def reply_ngrams(text: str, n_max: int = 3) -> set[tuple[str, ...]]:
    """The distinct 1..n_max word n-grams of a reply, within its clauses (not across . ! ? , ; :), that are not
    made of stop words only."""
    grams = set()
    for clause in re.split(r"[.!?,;:]+", text):
        words = word_tokens(clause)
        grams |= {tuple(words[i : i + n]) for n in range(1, n_max + 1) for i in range(len(words) - n + 1)}
    return {g for g in grams if not all(w in STOPWORDS for w in g)}


def top_rising_ngrams(base_texts: list[str], tuned_texts: list[str], top: int = 10, n_max: int = 3) -> list[dict]:
    """[{"ngram", "tuned", "base", "rise", "tuned_share"}] by rise, longer n-grams first on a tie."""
    base_sets = [reply_ngrams(t, n_max) for t in base_texts]
    tuned_sets = [reply_ngrams(t, n_max) for t in tuned_texts]
    base_counts = Counter(g for s in base_sets for g in s)
    tuned_counts = Counter(g for s in tuned_sets for g in s)
    ranked = sorted((g for g in tuned_counts if tuned_counts[g] - base_counts[g] > 0),
                    key=lambda g: (-(tuned_counts[g] - base_counts[g]), -len(g), g))
    chosen: list[tuple[str, ...]] = []
    for gram in ranked:
        # same replies as a longer listed phrase that contains it: the same finding, said shorter
        if any(len(c) > len(gram) and _contains(c, gram) and tuned_counts[c] == tuned_counts[gram] for c in chosen):
            continue
        chosen.append(gram)
        if len(chosen) == top:
            break
    n = max(len(tuned_texts), 1)
    return [{"ngram": " ".join(g), "tuned": tuned_counts[g], "base": base_counts[g],
             "rise": tuned_counts[g] - base_counts[g], "tuned_share": round(tuned_counts[g] / n, 3)} for g in chosen]


def _contains(longer: tuple[str, ...], shorter: tuple[str, ...]) -> bool:
    return any(longer[i : i + len(shorter)] == shorter for i in range(len(longer) - len(shorter) + 1))


def task_failures(prompts: list[str], texts: list[str]) -> dict:
    """Share of replies off task (task_following < 0.5) and why: a non-answer reason, else 'off topic'."""
    scores = gold_scores("task", prompts, texts)
    reasons = Counter(non_answer_reason(p, t) or "off topic or missing what was asked"
                      for p, t, s in zip(prompts, texts, scores) if s < ON_TASK)
    return {"share": round(sum(s < ON_TASK for s in scores) / max(len(texts), 1), 3),
            "n": len(texts), "reasons": dict(reasons.most_common())}


def gaming_indicators(prompts: list[str], base_texts: list[str], tuned_texts: list[str], top: int = 10,
                      seed: int = 0) -> dict:
    """All indicators for one before/after evaluation (prompts as the gold sees them: the user's text)."""
    if not len(prompts) == len(base_texts) == len(tuned_texts):
        raise ValueError(f"gaming_indicators: {len(prompts)} prompts, {len(base_texts)} base and "
                         f"{len(tuned_texts)} tuned replies; pass one of each per prompt")
    rising = top_rising_ngrams(base_texts, tuned_texts, top)
    words = {name: float(np.mean([len(t.split()) for t in texts])) if texts else float("nan")
             for name, texts in (("base", base_texts), ("tuned", tuned_texts))}
    win_rates = {}
    for oracle in COMPARED_ORACLES:
        tuned, base = gold_scores(oracle, prompts, tuned_texts), gold_scores(oracle, prompts, base_texts)
        win_rates[oracle] = bootstrap_ci(pairwise_outcomes(tuned, base), seed=seed).to_dict()
    return {"top_rising_ngrams": rising,
            "top_phrase_share": rising[0]["tuned_share"] if rising else 0.0,
            "task_fail": {"base": task_failures(prompts, base_texts), "tuned": task_failures(prompts, tuned_texts)},
            "words": {**words, "change": words["tuned"] - words["base"]},
            "win_rate_gold_by_oracle": win_rates}


def gaming_markdown(gaming: dict, top: int = 5) -> str:
    """A short markdown summary for the app and notebooks."""
    fail = gaming["task_fail"]
    lines = [f"**Gaming indicators** · tuned replies failing the task term: **{fail['tuned']['share']:.0%}** "
             f"(base {fail['base']['share']:.0%}) · words {gaming['words']['base']:.1f} → "
             f"{gaming['words']['tuned']:.1f}",
             ""]
    rising = gaming["top_rising_ngrams"][:top]
    lines += (["| phrase | tuned replies | base replies |", "|---|---|---|"]
              + [f"| {g['ngram']} | {g['tuned']} | {g['base']} |" for g in rising]) if rising else [
        "No phrase is in more tuned replies than base replies."]
    wins = gaming.get("win_rate_gold_by_oracle", {})
    if wins:
        lines += ["", "Gold win rate by oracle: " + " · ".join(
            f"{name} {w['value']:.2f} [{w['low']:.2f}, {w['high']:.2f}]" for name, w in wins.items())]
    return "\n".join(lines)
