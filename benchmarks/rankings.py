"""Claim (issue 21): ranking K = 4 answers at once teaches the reward model more per text a person reads than pairs.
Goal: rankings of 4 reach the pair mode's gold accuracy with <= 60 % of the texts read.

Effort = texts read: a pair is 2 texts, a ranking of 4 is 4. Both modes read THE SAME texts: sets of 4 shaped
answers per train prompt (`make_ranking_sets`, cached in <out>), where the pair mode labels completions (1, 2) and
(3, 4) of each set as two pairs (Bradley-Terry draws) and the ranking mode ranks all 4 (a Plackett-Luce draw, same
T) and trains on its 6 pairs. At n texts read, both use the first n / 4 sets of a seed's random order. The reward
model is the embedding-head kind (frozen MiniLM + exact BT head), trained as `train_reward_model` does: ranking
pairs weighted 1/C(K, 2) each ("per-ranking", InstructGPT), and for comparison every pair weight 1 ("per-pair")
and the listwise Plackett-Luce loss. Gold accuracy over every pair of the held-out sets (C(4, 2) per set).

Prints one JSON line: mean gold accuracy (3 label seeds) per mode and texts read, and `texts_to_match`, the fewest
texts at which each ranking mode reaches the pair mode's accuracy at the largest size (interpolated in log texts).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch

from workbench.data import builtin_prompts
from workbench.generation import prompt_text
from workbench.oracles import DEFAULT_ORACLE, SimulatedLabeler, gold_scores
from workbench.preferences.pairs import PairConfig
from workbench.preferences.rankings import make_ranking_sets, ranking_pairs
from workbench.preferences.simulate import prompts_for
from workbench.runs import write_json_atomic

K = 4
MODES = ("pairs", "rank4-per-ranking", "rank4-per-pair", "rank4-plackett-luce")


def cached_sets(path: Path, n: int, split: str, policy_name: str, seed: int) -> list[dict]:
    """n sets {prompt, completions} of K answers from the built-in `split` prompts (cycled, fresh seeds each
    pass), generated once with make_ranking_sets' defaults and cached at `path`."""
    config = PairConfig(batch_size=32, seed=seed)
    settings = {"pair_config": json.loads(json.dumps(asdict(config))), "k": K, "policy": policy_name}
    if path.exists():
        cached = json.loads(path.read_text())
        if cached["settings"] == settings and len(cached["sets"]) >= n:
            return cached["sets"][:n]
    from workbench.models import load_policy

    policy, began = load_policy(policy_name), time.perf_counter()
    records, per_round, sets = prompts_for(int(n * 1.1) + 2, split), len(builtin_prompts(split)), []
    for start in range(0, len(records), 16):  # 16 prompts (64 answers) per call, so progress shows
        round_config = PairConfig(batch_size=32, seed=seed + 1000 * (start // per_round) + start)
        sets += [{"prompt": s.prompt, "completions": list(s.completions)}
                 for s in make_ranking_sets(records[start : start + 16], policy, K, round_config)]
        print(f"{split}: {len(sets)} sets after {start + 16} prompts, {time.perf_counter() - began:.0f} s", flush=True)
    if len(sets) < n:
        raise RuntimeError(f"only {len(sets)} sets of {K} distinct answers from {len(records)} prompts; raise n.")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"settings": settings, "sets": sets})
    return sets[:n]


def features(sets: list[dict], max_length: int):
    """Embedding-head raw features of every answer, (n_sets, K, D), each text embedded once."""
    from workbench.reward.embedding_head import EmbeddingHeadRewardModel, text_features
    from workbench.reward.train import load_reward_encoder

    encoder, tokenizer = load_reward_encoder("minilm-l6")
    probe = EmbeddingHeadRewardModel(encoder, tokenizer)
    flat = text_features(probe, tokenizer, [s["prompt"] for s in sets for _ in range(K)],
                         [c for s in sets for c in s["completions"]], max_length)
    return flat.reshape(len(sets), K, -1), encoder, tokenizer


def labelled_rows(sets: list[dict], index: list[int], labeler: SimulatedLabeler, mode: str) -> list[dict]:
    """Rows {prompt, chosen, rejected, choice, ranking_id, sides} for the sets `index`: two BT-labelled pairs per
    set (answers 1-2, 3-4) in the pair mode, a Plackett-Luce ranking's 6 pairs otherwise. `sides` = (set, k, k')."""
    rows = []
    for number in index:
        prompt, answers = prompt_text(sets[number]["prompt"]), sets[number]["completions"]
        if mode == "pairs":
            for a, b in ((0, 1), (2, 3)):
                choice = labeler.choose(prompt, answers[a], answers[b])
                won, lost = (b, a) if choice == "B" else (a, b)
                rows.append({"prompt": prompt, "chosen": answers[won], "rejected": answers[lost], "choice": choice,
                             "sides": (number, won, lost)})
            continue
        ranks = labeler.rank(prompt, answers)
        for i, j, outcome in ranking_pairs(tuple(ranks)):
            won, lost = (j, i) if outcome == "B" else (i, j)
            rows.append({"prompt": prompt, "chosen": answers[won], "rejected": answers[lost], "choice": outcome,
                         "ranking_id": number, "sides": (number, won, lost)})
    return rows


def fit_and_score(model, rows, mode, train_features, eval_a, eval_b, l2: float):
    """Fit the head on `rows` as train_reward_model does for `mode`; held-out scores of both sides."""
    from workbench.reward.embedding_head import fit_heads
    from workbench.reward.listwise import fit_heads_plackett_luce, ranking_weights

    chosen = torch.stack([train_features[n, w] for n, w, _ in (r["sides"] for r in rows)])
    rejected = torch.stack([train_features[n, l] for n, _, l in (r["sides"] for r in rows)])
    targets = torch.tensor([0.5 if r["choice"] == "tie" else 1.0 for r in rows])
    if mode == "rank4-plackett-luce":
        fit_heads_plackett_luce(model, chosen, rejected, rows, l2)
    else:
        weights = ranking_weights(rows, "per-pair" if mode in ("pairs", "rank4-per-pair") else "per-ranking")
        fit_heads(model, chosen, rejected, targets, l2, weights=weights)
    with torch.no_grad():
        return model.head_scores(eval_a)[:, 0], model.head_scores(eval_b)[:, 0]


def texts_to_match(curve: dict[int, float], target: float) -> float | None:
    """Fewest texts read at which `curve` reaches `target`, interpolated linearly in log(texts); None if never."""
    points = sorted(curve.items())
    if points[0][1] >= target:
        return float(points[0][0])
    for (n0, a0), (n1, a1) in zip(points, points[1:]):
        if a1 >= target > a0:
            fraction = (target - a0) / (a1 - a0)
            return round(math.exp(math.log(n0) + fraction * (math.log(n1) - math.log(n0))), 1)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_rankings")
    parser.add_argument("--texts", default="100,200,400,800", help="texts read per point")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--eval-sets", type=int, default=60, help="held-out sets (6 gold pairs each)")
    parser.add_argument("--oracle", default=DEFAULT_ORACLE)
    parser.add_argument("--noise", type=float, default=0.1, help="labeler temperature T (both modes)")
    parser.add_argument("--policy", default="smollm2-135m-instruct")
    parser.add_argument("--cache-only", action="store_true", help="generate the cached sets and stop")
    args = parser.parse_args()
    from workbench.reward.embedding_head import EmbeddingHeadRewardModel
    from workbench.reward.learning_curve import gold_agreement
    from workbench.reward.train import RewardModelConfig

    texts = sorted(int(t) for t in args.texts.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    started = time.perf_counter()
    train = cached_sets(out / "sets_train.json", max(texts) // K, "train", args.policy, 0)
    held_out = cached_sets(out / "sets_heldout.json", args.eval_sets, "heldout", args.policy, 7)
    generation_seconds = time.perf_counter() - started
    if args.cache_only:
        print(json.dumps({"n_train_sets": len(train), "n_heldout_sets": len(held_out),
                          "seconds": round(generation_seconds, 1)}))
        return
    started = time.perf_counter()
    rm = RewardModelConfig()
    train_features, encoder, tokenizer = features(train, rm.max_length)
    eval_features = features(held_out, rm.max_length)[0]
    pairs = [(n, i, j) for n in range(len(held_out)) for i in range(K) for j in range(i + 1, K)]
    eval_a = torch.stack([eval_features[n, i] for n, i, _ in pairs])
    eval_b = torch.stack([eval_features[n, j] for n, _, j in pairs])
    prompts = [prompt_text(held_out[n]["prompt"]) for n, _, _ in pairs]
    gold = torch.tensor(gold_scores(args.oracle, prompts * 2, [held_out[n]["completions"][i] for n, i, _ in pairs]
                                    + [held_out[n]["completions"][j] for n, _, j in pairs]))
    gold_a, gold_b = gold[: len(pairs)], gold[len(pairs) :]
    gold_scores(args.oracle, [prompt_text(s["prompt"]) for s in train for _ in range(K)],
                [c for s in train for c in s["completions"]])  # batched embedding of the gold, cached
    embed_seconds = time.perf_counter() - started
    model = EmbeddingHeadRewardModel(encoder, tokenizer)
    points = []
    for seed in seeds:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        for mode in MODES:
            labeler = SimulatedLabeler(args.oracle, temperature=args.noise, seed=seed)
            rows = labelled_rows(train, order[: max(texts) // K], labeler, "pairs" if mode == "pairs" else "rank")
            per_set = 2 if mode == "pairs" else K * (K - 1) // 2
            for n_texts in texts:
                subset = rows[: (n_texts // K) * per_set]  # the first n / 4 sets: n texts read in either mode
                scores_a, scores_b = fit_and_score(model, subset, mode, train_features, eval_a, eval_b, rm.head_l2)
                points.append({"seed": seed, "mode": mode, "texts_read": n_texts, "n_pairs": len(subset),
                               "gold_accuracy": round(gold_agreement(scores_a, scores_b, gold_a, gold_b), 4)})
    curves = {mode: {n: round(sum(p["gold_accuracy"] for p in points if (p["mode"], p["texts_read"]) == (mode, n))
                              / len(seeds), 4) for n in texts} for mode in MODES}
    target = curves["pairs"][max(texts)]
    match = {mode: texts_to_match(curves[mode], target) for mode in MODES[1:]}
    write_json_atomic(out / "points.json", points)
    print(json.dumps({
        "benchmark": "rankings", "oracle": args.oracle, "noise": args.noise, "k": K, "seeds": seeds,
        "n_train_sets": len(train), "n_eval_pairs": len(pairs), "gold_accuracy": curves,
        "pairs_accuracy_at_max": target, "texts_to_match": match,
        "share_of_texts_to_match": {m: None if v is None else round(v / max(texts), 3) for m, v in match.items()},
        "goal_rank4_le_60pct": (match["rank4-per-ranking"] or math.inf) <= 0.6 * max(texts),
        "seconds": {"generation": round(generation_seconds, 1), "embedding": round(embed_seconds, 1),
                    "fits": round(time.perf_counter() - started - embed_seconds, 1)},
        "machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
