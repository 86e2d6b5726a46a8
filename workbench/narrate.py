"""Sentences computed from a run's own numbers, for the notebooks' prose.

A notebook's text must never promise what its run did not do ("the loss falls", "the curve rises steeply"): a
sentence about a number is computed from that number here, next to the cell that shows it. A change counts as a
rise or a fall only when it is larger than twice its standard error (first third of the values vs the last third),
so noisy curves are called level instead of being read as trends.
"""

from __future__ import annotations

import math

import numpy as np

LN2 = math.log(2)  # the Bradley-Terry loss of a model that scores both sides alike


MIN_PER_THIRD = 2  # values in each third, to estimate the noise a trend must beat


def change(values: list[float]) -> tuple[float, float, str]:
    """(mean of the first third, mean of the last third, "rose" | "fell" | "stayed level") of a noisy series;
    (first value, last value, "too few points") below 6 values."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if x.size == 0:
        raise ValueError("change() needs at least one number")
    k = x.size // 3
    if k < MIN_PER_THIRD:  # no estimate of the noise: no trend claimed either way
        return float(x[0]), float(x[-1]), "too few points"
    first, last = x[:k], x[-k:]
    se = math.sqrt(first.var(ddof=1) / k + last.var(ddof=1) / k)
    delta = last.mean() - first.mean()
    word = "stayed level" if abs(delta) <= max(2 * se, 1e-9) else ("rose" if delta > 0 else "fell")
    return float(first.mean()), float(last.mean()), word


def describe_change(values: list[float], what: str, digits: int = 3) -> str:
    first, last, word = change(values)
    span = f"{first:.{digits}f} → {last:.{digits}f}"
    if word == "too few points":
        return f"{what} went {span} (only {len(values)} values: too few to tell a trend from noise)"
    return f"{what} {word} ({span}, first third vs last third)" if word != "stayed level" else \
        f"{what} stayed level within its noise ({span}, first third vs last third)"


def loss_sentence(losses: list[float]) -> str:
    """What a reward model's logged training loss did, and whether it ever left chance (ln 2)."""
    if not losses:
        return "No training loss was logged."
    first, last, word = change(losses)
    text = describe_change(losses, f"The training loss over {len(losses)} logged steps")
    if abs(last - LN2) < 0.01:
        return (f"{text}: it ended at chance, ln 2 ≈ 0.693, so the model still scores both sides of a pair almost "
                f"alike and has learnt little from these labels in this many steps.")
    if word == "fell":
        return f"{text}: the model learnt to separate the training pairs (training batches, so this is optimistic)."
    return f"{text}."


def learning_curve_sentence(n_labels: list[int], values: list[float], lows: list[float], highs: list[float],
                            what: str = "gold accuracy") -> str:
    """First vs last point of a learning curve with their CIs, and whether it still climbs at the right edge."""
    if not n_labels:
        return "No learning-curve point was measured."
    order = np.argsort(n_labels)
    n, v, lo, hi = ([seq[i] for i in order] for seq in (n_labels, values, lows, highs))
    text = f"The {what} went from {v[0]:.2f} at {n[0]} labels to {v[-1]:.2f} at {n[-1]}"
    if len(n) == 1:
        text = f"The {what} is {v[0]:.2f} at {n[0]} labels"
    elif lo[-1] <= hi[0] and lo[0] <= hi[-1]:
        text += ": the two points' 95 % CIs overlap, so this run cannot tell whether the extra labels helped"
    else:
        text += ": a clear " + ("rise" if v[-1] > v[0] else "fall")
    if lo[-1] <= 0.5:
        text += f"; the last point's CI ({lo[-1]:.2f}–{hi[-1]:.2f}) still includes chance (0.5)"
    if len(n) >= 3:
        step = v[-1] - v[-2]
        text += (f"; it is still rising at the right edge ({v[-2]:.2f} → {v[-1]:.2f}), so more labels would likely help"
                 if step > 0.02 else
                 f"; it is flat over its last doubling ({v[-2]:.2f} → {v[-1]:.2f}): more of the same labels helps "
                 f"little here, a better model or cleaner, more varied pairs would help more")
    return text + "."


def calibration_sentence(bins: list[dict], ece: float) -> str:
    """How spread the predicted P(A > B) are, and whether the model is over- or under-confident (bins from
    `evaluation.metrics.calibration_bins`)."""
    total = sum(b["n"] for b in bins)
    if not total:
        return "No pair was scored."
    weights = np.asarray([b["n"] for b in bins], dtype=float) / total
    predicted = np.asarray([b["mean_predicted"] for b in bins])
    observed = np.asarray([b["observed"] for b in bins])
    side = np.sign(predicted - 0.5)  # the side each bin favours
    said = float(weights @ np.abs(predicted - 0.5)) + 0.5  # how sure it says it is, for the side it favours
    right = float(weights @ (side * (observed - 0.5))) + 0.5  # how often that side won
    near = float(sum(b["n"] for b in bins if 0.4 <= b["mean_predicted"] <= 0.6)) / total
    text = (f"Its predictions span {min(b['bin_low'] for b in bins):.1f}–{max(b['bin_high'] for b in bins):.1f} "
            f"({near:.0%} of the {total} pairs between 0.4 and 0.6), hence {len(bins)} point(s) in the diagram. "
            f"On average it gives the side it favours P = {said:.2f}, and that side wins {right:.2f} of the time: ")
    if right - said > 0.03:
        text += "**under-confident** (its score gaps are too small for how often it is right)"
    elif said - right > 0.03:
        text += "**over-confident** (its score gaps are too large for how often it is right)"
    else:
        text += "roughly **calibrated**"
    return text + f"; ECE = {ece:.3f}."


def ranking_sentence(texts: list[str], proxy: list[float], gold: list[float]) -> str:
    """Which text each scorer puts first, and on how many pairs of the texts they agree."""
    pairs = [(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))]
    agree = sum((proxy[i] - proxy[j]) * (gold[i] - gold[j]) > 0 for i, j in pairs)
    top_proxy, top_gold = int(np.argmax(proxy)), int(np.argmax(gold))
    short = lambda t: t if len(t) <= 60 else t[:57] + "..."  # noqa: E731
    text = f"The reward model puts “{short(texts[top_proxy])}” first"
    text += (", as the gold does" if top_proxy == top_gold else f"; the gold puts “{short(texts[top_gold])}” first")
    return text + f". The two agree on the order of {agree} of the {len(pairs)} pairs of these texts."


def rl_sentence(rows: list[dict], algo: str) -> str:
    """What an RL run's proxy reward, gold reward and cut-off share did (rows from RunDir.read_metrics)."""
    series = {key: [r[f"{algo}/{key}"] for r in rows if r.get(f"{algo}/{key}") is not None]
              for key in ("reward", "rewards/gold/mean", "rewards/eos_penalty/mean")}
    if len(series["reward"]) < 3 * MIN_PER_THIRD:
        return f"{len(series['reward'])} logged step(s): too few to tell a trend from the sampling noise."
    parts = [describe_change(series["reward"], "the reward the optimiser saw (proxy + EOS penalty)")]
    if series["rewards/gold/mean"]:
        parts.append(describe_change(series["rewards/gold/mean"], "the gold reward of its samples"))
    if series["rewards/eos_penalty/mean"]:  # TRL's clipped_ratio counts replies stopped at a sentence end as cut off
        parts.append(describe_change(series["rewards/eos_penalty/mean"], "the EOS penalty (0 when every reply ends)", 2))
    text = f"Over {len(series['reward'])} steps, " + "; ".join(parts) + "."
    proxy = change(series["reward"])[2]
    gold = change(series["rewards/gold/mean"])[2] if series["rewards/gold/mean"] else None
    if proxy == "rose" and gold == "rose":
        return text + " The policy learnt what the labeler wanted, as far as these small per-step samples show."
    if proxy == "rose":
        return text + (" The proxy rose without the gold: the policy pleases the reward model in ways the labeler "
                       "does not reward (or the gold gain is within the noise of these small samples).")
    return text + (" The proxy did not rise: with this reward model, learning rate and number of steps RL found "
                   "nothing it could climb that stands out from the sampling noise.")


def distance_sentence(kl_nats: float) -> str:
    """How far a tuned policy moved from its base, in words a newcomer can picture."""
    factor = math.exp(min(kl_nats, 50))
    where = ("barely moved" if kl_nats < 0.5 else "moved a moderate distance" if kl_nats < 3 else "moved far")
    return (f"The tuned policy {where} from the base: KL = {kl_nats:.2f} nats, i.e. its typical reply is about "
            f"{factor:.3g}× likelier under the tuned policy than under the base.")
