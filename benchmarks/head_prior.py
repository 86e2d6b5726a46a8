"""Claim (issue 18, reward-model defaults): on real shaped answers the embedding head needs a strong prior; with the
default head_l2 (strong, then Platt-scaled) its gold accuracy rises with labels, with a weak one (l2 = 10) it does not.

Reads the sets of 4 shaped answers that `benchmarks/rankings.py` caches (run it, or `--cache-only`, first): every
pair of the training sets is a labelled pair (T = 0.1, seeds 0-2), every pair of the held-out sets an evaluation
pair. MiniLM features are computed once; each point is one exact head fit (`fit_heads`, Platt scale included).
Prints one JSON line: mean gold accuracy and held-out log-loss (against the labeler's choices) per prior and size,
with the baseline l2 = 10 in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import torch

from workbench.generation import prompt_text
from workbench.oracles import DEFAULT_ORACLE, SimulatedLabeler, gold_scores


def set_pairs(path: Path) -> list[tuple]:
    """(prompt, a, b) for every pair of every cached set; a set's first two disjoint pairs come first."""
    sets = json.loads(path.read_text())["sets"]
    order = [(0, 1), (2, 3), (0, 2), (1, 3), (0, 3), (1, 2)]
    return [(s["prompt"], s["completions"][i], s["completions"][j]) for s in sets for i, j in order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="runs/bench_rankings", help="rankings.py's --out (sets_*.json)")
    parser.add_argument("--sizes", default="60,120,240,480,960")
    parser.add_argument("--l2", default="10,100,1000,10000", help="priors compared; 10 is the old default")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--oracle", default=DEFAULT_ORACLE)
    args = parser.parse_args()
    from workbench.reward.embedding_head import EmbeddingHeadRewardModel, fit_heads, text_features
    from workbench.reward.learning_curve import gold_agreement
    from workbench.reward.train import RewardModelConfig, load_reward_encoder

    started = time.perf_counter()
    train, held_out = set_pairs(Path(args.sets) / "sets_train.json"), set_pairs(Path(args.sets) / "sets_heldout.json")
    encoder, tokenizer = load_reward_encoder("minilm-l6")
    model = EmbeddingHeadRewardModel(encoder, tokenizer)
    max_length = RewardModelConfig.max_length

    def features(pairs, side):
        return text_features(model, tokenizer, [p[0] for p in pairs], [p[side] for p in pairs], max_length)
    train_a, train_b, eval_a, eval_b = features(train, 1), features(train, 2), features(held_out, 1), features(held_out, 2)
    gold = torch.tensor(gold_scores(args.oracle, [prompt_text(p) for p, _, _ in held_out] * 2,
                                    [a for _, a, _ in held_out] + [b for _, _, b in held_out]))
    gold_a, gold_b = gold[: len(held_out)], gold[len(held_out) :]
    embed_seconds = time.perf_counter() - started
    sizes = [n for n in (int(s) for s in args.sizes.split(",")) if n <= len(train)]
    priors = [float(v) for v in args.l2.split(",")]
    points = []
    for seed in (int(s) for s in args.seeds.split(",")):
        labeler = SimulatedLabeler(args.oracle, temperature=0.1, seed=seed)
        a_wins = torch.tensor([labeler.choose(prompt_text(p), a, b) == "A" for p, a, b in train])
        eval_labels = torch.tensor([labeler.choose(prompt_text(p), a, b) == "A" for p, a, b in held_out]).double()
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        for n in sizes:
            index = torch.tensor(order[:n])
            wins = a_wins[index][:, None]
            chosen = torch.where(wins, train_a[index], train_b[index])
            rejected = torch.where(wins, train_b[index], train_a[index])
            for l2 in priors:
                fit_heads(model, chosen, rejected, torch.ones(n), l2, seed)
                margin = (model.head_scores(eval_a)[:, 0] - model.head_scores(eval_b)[:, 0]).detach().double()
                p = torch.sigmoid(margin).clamp(1e-6, 1 - 1e-6)
                log_loss = float(-(eval_labels * p.log() + (1 - eval_labels) * (1 - p).log()).mean())
                points.append({"seed": seed, "n": n, "l2": l2, "log_loss": log_loss,
                               "gold_accuracy": gold_agreement(margin.float(), torch.zeros(len(margin)), gold_a, gold_b)})

    def mean(key, n, l2):
        values = [p[key] for p in points if (p["n"], p["l2"]) == (n, l2)]
        return round(sum(values) / len(values), 4)
    accuracy = {f"{l2:g}": {n: mean("gold_accuracy", n, l2) for n in sizes} for l2 in priors}
    default = f"{RewardModelConfig.head_l2:g}"
    print(json.dumps({
        "benchmark": "head_prior", "oracle": args.oracle, "n_train_pairs": len(train), "n_eval_pairs": len(held_out),
        "default_l2": RewardModelConfig.head_l2, "gold_accuracy": accuracy,
        "held_out_log_loss": {f"{l2:g}": {n: mean("log_loss", n, l2) for n in sizes} for l2 in priors},
        "default_minus_l2_10": {n: round(accuracy[default][n] - accuracy["10"][n], 4) for n in sizes}
        if default in accuracy and "10" in accuracy else None,
        "seconds": {"embedding": round(embed_seconds, 1), "fits": round(time.perf_counter() - started - embed_seconds, 1)},
        "machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
