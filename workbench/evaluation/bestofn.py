"""Best-of-n sampling as a KL-matched baseline, and the over-optimisation curves of Gao et al. (2022).

Best-of-n: draw n completions from the base policy, keep the one the reward model scores highest. Its KL from
the base sampling distribution is analytic (Stiennon et al. 2020; Hilton & Gao 2022):
    KL_bon(n) = ln n - (n - 1) / n
Gao et al. plot the gold reward gain against d = sqrt(KL) and fit
    best-of-n:  R(d) = d (alpha - beta d)
    RL:         R(d) = d (alpha - beta ln d)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from workbench.data import PromptRecord
from workbench.generation import SamplingConfig, generate, prompt_text, sampling_precision
from workbench.oracles import get_oracle


def bon_kl(n: int) -> float:
    """KL(best-of-n || base) in nats: ln n - (n - 1) / n."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def expected_best_of_n(selection_scores, values, n: int) -> float:
    """Unbiased E[value of the completion with the highest selection score among n of the N samples drawn].

    Sort the N samples by selection score; the i-th smallest (1-based) is the best of a uniformly random n-subset
    with probability C(i-1, n-1) / C(N, n). Using all N samples this way has far less variance than one draw."""
    selection_scores, values = np.asarray(selection_scores, dtype=float), np.asarray(values, dtype=float)
    total = len(selection_scores)
    if not 1 <= n <= total:
        raise ValueError(f"need 1 <= n <= {total} samples, got n={n}")
    order = np.argsort(selection_scores, kind="stable")
    weights = np.array([math.comb(i - 1, n - 1) for i in range(1, total + 1)], dtype=float) / math.comb(total, n)
    return float(np.dot(weights, values[order]))


@dataclass
class BestOfNResult:
    rows: list[dict]  # one per n: {n, kl, sqrt_kl, proxy, gold}; proxy/gold are means over prompts
    samples_per_prompt: int


def best_of_n_curve(policy, tokenizer, reward_model, prompts: list[PromptRecord], max_n: int = 16,
                    sampling: SamplingConfig | None = None, oracle: str = "helpful-upbeat-concise",
                    bf16: bool | None = False) -> BestOfNResult:
    """Sample `max_n` completions per prompt from the base policy and estimate best-of-n for n = 1, 2, 4, ..., max_n.
    `bf16`: sample under bf16 autocast (None = where bf16 math is native); fp32 by default, like the RL side."""
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    sampling = sampling or SamplingConfig(top_p=1.0, top_k=0)
    gold = get_oracle(oracle)
    repeated = [r.prompt for r in prompts for _ in range(max_n)]
    with sampling_precision(bf16):
        completions = generate(policy, tokenizer, repeated, sampling)
    texts = [c.text for c in completions]
    proxy = np.array(reward_model.score(repeated, texts)).reshape(len(prompts), max_n)
    gold_scores = np.array([gold(prompt_text(p), t) for p, t in zip(repeated, texts)]).reshape(len(prompts), max_n)
    rows = []
    n = 1
    while n <= max_n:
        rows.append({
            "n": n, "kl": bon_kl(n), "sqrt_kl": math.sqrt(bon_kl(n)),
            "proxy": float(np.mean([expected_best_of_n(proxy[i], proxy[i], n) for i in range(len(prompts))])),
            "gold": float(np.mean([expected_best_of_n(proxy[i], gold_scores[i], n) for i in range(len(prompts))])),
        })
        n *= 2
    return BestOfNResult(rows, max_n)


def fit_overoptimisation(sqrt_kl, reward_gain, form: str) -> dict:
    """Least-squares (alpha, beta) of R(d) = d(alpha - beta d) ("bon") or d(alpha - beta ln d) ("rl").

    Both are linear in (alpha, beta): R = alpha * d - beta * g(d) with g(d) = d^2 or d ln d."""
    d, r = np.asarray(sqrt_kl, dtype=float), np.asarray(reward_gain, dtype=float)
    keep = d > 0  # R(0) = 0 by construction; d ln d is undefined at 0
    d, r = d[keep], r[keep]
    if len(d) < 2:
        raise ValueError(f"need at least two points with KL > 0 to fit, got {len(d)}")
    if form == "bon":
        g = d**2
    elif form == "rl":
        g = d * np.log(d)
    else:
        raise ValueError(f"form must be 'bon' or 'rl', got {form!r}")
    design = np.stack([d, -g], axis=1)  # (points, 2)
    (alpha, beta), *_ = np.linalg.lstsq(design, r, rcond=None)
    return {"form": form, "alpha": float(alpha), "beta": float(beta)}


def overoptimisation_curve(fit: dict, sqrt_kl) -> np.ndarray:
    d = np.asarray(sqrt_kl, dtype=float)
    g = d**2 if fit["form"] == "bon" else d * np.log(np.where(d > 0, d, 1.0))
    return fit["alpha"] * d - fit["beta"] * g


def bon_gold_at(rows: list[dict], sqrt_kl: float) -> float:
    """Best-of-n gold reward at a given sqrt(KL), interpolated between measured n (clamped at the ends)."""
    xs = [row["sqrt_kl"] for row in rows]
    return float(np.interp(sqrt_kl, xs, [row["gold"] for row in rows]))


def matched_rl_vs_bon(rl_points: list[dict], bon_rows: list[dict]) -> dict | None:
    """RL vs best-of-n at a KL both have measured: the RL point (after the base, rl_points[0]) with the largest
    sqrt(KL) inside best-of-n's range, each side as a gold gain over its own start (the base; n = 1).
    None when every RL point lies beyond the largest n, where best-of-n would only be extrapolated."""
    top = bon_rows[-1]["sqrt_kl"]
    inside = [p for p in rl_points[1:] if 0 < p["sqrt_kl"] <= top]
    if not inside:
        return None
    point = max(inside, key=lambda p: p["sqrt_kl"])
    return {"name": point["name"], "sqrt_kl": point["sqrt_kl"],
            "rl_gold_gain": point["gold"] - rl_points[0]["gold"],
            "bon_gold_gain": bon_gold_at(bon_rows, point["sqrt_kl"]) - bon_rows[0]["gold"]}


def bon_gold_at_n(rows: list[dict], n: float) -> float:
    """Best-of-n gold reward at a (fractional) n, interpolated in ln n between measured n (clamped at the ends)."""
    return float(np.interp(math.log(max(n, 1.0)), [math.log(row["n"]) for row in rows], [row["gold"] for row in rows]))


def rl_vs_bon_summary(rl_final: dict, rl_base_gold: float, bon_rows: list[dict], rl_completions: int | None,
                      n_prompts: int) -> dict:
    """RL next to best-of-n, stated as Gao et al. (2022) find it (RL is the less KL-efficient of the two):

    (a) RL's gold gain next to the best best-of-n measured (its n, gain and KL);
    (b) both at equal sampling compute: RL sampled `rl_completions` completions while training and one per prompt
        to answer, so over `n_prompts` answered prompts best-of-n may draw n_equal = 1 + rl_completions / n_prompts
        per prompt (interpolated in ln n between measured n; `clamped` when beyond the largest n measured);
    (c) the gold gain per nat of KL of each (RL's KL is the Monte-Carlo estimate, best-of-n's the analytic one)."""
    start = bon_rows[0]["gold"]
    gains = [{"n": row["n"], "kl": row["kl"], "gold_gain": row["gold"] - start} for row in bon_rows]
    best = max(gains, key=lambda row: row["gold_gain"])
    rl_gain, rl_kl = rl_final["gold"] - rl_base_gold, rl_final["kl"]
    per_nat = lambda gain, kl: gain / kl if kl > 0 else None  # noqa: E731
    summary = {
        "rl_gold_gain": rl_gain, "rl_kl": rl_kl, "rl_gain_per_nat": per_nat(rl_gain, rl_kl),
        "best_bon": {**best, "gain_per_nat": per_nat(best["gold_gain"], best["kl"])},
        "rl_ge_best_bon": rl_gain >= best["gold_gain"],
    }
    if rl_completions:
        n_equal = 1 + rl_completions / n_prompts
        gain = bon_gold_at_n(bon_rows, n_equal) - start
        kl = bon_kl(min(n_equal, bon_rows[-1]["n"]))
        summary["equal_compute"] = {"rl_completions": rl_completions, "n_prompts": n_prompts, "bon_n": n_equal,
                                    "bon_gold_gain": gain, "bon_gain_per_nat": per_nat(gain, kl),
                                    "clamped": n_equal > bon_rows[-1]["n"], "rl_ge_bon": rl_gain >= gain}
    return summary
