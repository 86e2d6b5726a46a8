"""Claim: on shaped answers of the default policy, the reward model learns from few labels and approaches its
ceiling (issue 18). Goals, mean of 3 label seeds, labeler T = 0.1: `upbeat-concise` >= 0.70 gold accuracy at 50
labels and >= 0.80 at 400 (ceiling ~0.90); `positive` >= 0.85 at 100; active selection reaches random selection's
400-label accuracy with <= 250 labels; the default kind scores >= 200 texts/s and trains on 400 pairs in <= 60 s.

Prints one JSON line: the learning curves (`workbench.reward.learning_curve`) per labeler x kind x selection
(mean over seeds, 95% t-interval), the linear-BT-on-gold-features ceiling, the fine-tuned MiniLM reward model
(round 1's default) as the baseline in the same run, each also on the clear held-out pairs only (gold
difference >= 0.5, `clear_gold_accuracy`), training time on 400 pairs and scoring throughput of the
default kind; writes the figure to <out>/learning_curves.html and every point to <out>/curve_points.json.

Default (documented subset, ~30 min on 2 cores): the embedding-head kinds and the ceiling for every labeler and
seed at 25..800 labels, random and active; the fine-tuned baseline for upbeat-concise at 50/100/200/400.
`--full`: also 1600 labels, the baseline for every labeler and size, and the policy-architecture kind.
Pairs are generated once (make_pairs' defaults, shaping included) and cached in <out>; labels are simulated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from workbench.models import load_policy, resolve_bf16
from workbench.oracles import DEFAULT_ORACLE, ORACLES
from workbench.reward import RewardModel, RewardModelConfig, train_reward_model
from workbench.reward.kinds import choose_kind
from workbench.reward.learning_curve import CLEAR_MARGIN, CurveConfig, learning_curves, summarise_curves
from workbench.reward.pair_cache import cached_pairs, label_pairs

LABELERS = tuple(dict.fromkeys(("positive", "concise", "upbeat-concise", DEFAULT_ORACLE)))


def point(summary: list[dict], labeler: str, kind: str, n: int, selection: str = "random") -> float | None:
    return next((r["gold_accuracy"] for r in summary if (r["labeler"], r["kind"], r["selection"], r["n_labels"])
                 == (labeler, kind, selection, n)), None)


def auto_point(summary: list[dict], labeler: str, n: int) -> float | None:
    """Gold accuracy of the kind `auto` picks at n labels (the default kind)."""
    return point(summary, labeler, choose_kind("auto", None, n).kind, n)


def active_labels_to_match(summary: list[dict], labeler: str, kind: str, target_n: int = 400) -> int | None:
    """Fewest labels at which active selection reaches random selection's accuracy at target_n (None: never)."""
    target = point(summary, labeler, kind, target_n)
    reached = sorted(r["n_labels"] for r in summary if (r["labeler"], r["kind"], r["selection"]) ==
                     (labeler, kind, "active") and target is not None and r["gold_accuracy"] >= target)
    return reached[0] if reached else None


def default_kind_timing(train_pairs: list[dict], eval_pairs: list[dict], out: Path, n: int = 400) -> dict:
    """Train the default kind (auto) on n labelled pairs and score the eval texts (best of 3 passes)."""
    rows = label_pairs(train_pairs[:n], "upbeat-concise", 0.1, seed=0)
    config = RewardModelConfig(save_checkpoints=False, oracle=None, val_fraction=0.0)
    result = train_reward_model(rows, config, out / "timing")
    rm = RewardModel.load(result.model_dir)
    prompts = [p["prompt"] for p in eval_pairs] * 2
    texts = [p["a"] for p in eval_pairs] + [p["b"] for p in eval_pairs]
    rm.score(prompts[:8], texts[:8])  # warm-up
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        rm.score(prompts, texts)
        rates.append(len(texts) / (time.perf_counter() - started))
    return {"kind": result.kind, "kind_reason": result.kind_reason, "n_pairs": len(rows),
            "train_seconds": round(result.seconds, 1), "texts_per_s": round(max(rates), 1), "n_texts": len(texts),
            "bf16": rm.bf16}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_reward_model")
    parser.add_argument("--full", action="store_true", help="every kind, labeler and size up to 1600 (hours)")
    parser.add_argument("--sizes", help="comma-separated label counts (default 25..800; --full adds 1600)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--labelers", default=",".join(LABELERS), help=f"any of {', '.join(ORACLES)}")
    parser.add_argument("--baseline-sizes", default="50,100,200,400", help="fine-tuned MiniLM points ('' for none)")
    parser.add_argument("--eval-pairs", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.1, help="labeler temperature (realistic annotator)")
    parser.add_argument("--no-timing", action="store_true", help="skip the 400-pair training/scoring timing")
    args = parser.parse_args()
    sizes = tuple(int(s) for s in (args.sizes or ("25,50,100,200,400,800,1600" if args.full else
                                                  "25,50,100,200,400,800")).split(","))
    seeds = tuple(int(s) for s in args.seeds.split(","))
    labelers = tuple(args.labelers.split(","))
    out = Path(args.out)

    started = time.perf_counter()
    policy = lambda: load_policy("smollm2-135m-instruct")  # noqa: E731 - loaded only if the cache is missing
    eval_pairs = cached_pairs(out / "pairs_heldout.json", policy, args.eval_pairs, split="heldout")
    train_pairs = cached_pairs(out / "pairs_train.json", policy, max(sizes), split="train")
    pair_seconds = time.perf_counter() - started

    def log(message: str) -> None:
        print(f"[reward_model] {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    head_config = CurveConfig(labelers=labelers, kinds=("embedding-head", "ensemble"), sizes=sizes, seeds=seeds,
                              temperature=args.noise)
    rows = learning_curves(train_pairs, eval_pairs, head_config, out / "models", progress=log)
    head_seconds = time.perf_counter() - started

    started = time.perf_counter()
    baseline_sizes = sizes if args.full else tuple(int(s) for s in args.baseline_sizes.split(",") if s)
    baseline_kinds = ("minilm-l6", "policy") if args.full else ("minilm-l6",)
    if baseline_sizes:
        baseline_config = CurveConfig(labelers=labelers if args.full else ("upbeat-concise",), kinds=baseline_kinds,
                                      sizes=baseline_sizes, seeds=seeds, temperature=args.noise, active=False)
        rows += [r for r in learning_curves(train_pairs, eval_pairs, baseline_config, out / "models", progress=log)
                 if r["kind"] != "gold-features"]  # the ceiling is already measured above
    baseline_seconds = time.perf_counter() - started
    summary = summarise_curves(rows)
    (out / "curve_points.json").write_text(json.dumps(rows, indent=1))
    from workbench.plots import reward_learning_curves

    reward_learning_curves(summary).write_html(str(out / "learning_curves.html"), include_plotlyjs="cdn")
    timing = {} if args.no_timing else default_kind_timing(train_pairs, eval_pairs, out)

    matched = active_labels_to_match(summary, "upbeat-concise", "embedding-head")
    clear_pairs = {r["labeler"]: r["n_clear_pairs"] for r in rows}  # held-out pairs clear_gold_accuracy is on
    goals = {
        "upbeat-concise@50>=0.70": (auto_point(summary, "upbeat-concise", 50) or 0) >= 0.70,
        "upbeat-concise@400>=0.80": (auto_point(summary, "upbeat-concise", 400) or 0) >= 0.80,
        "positive@100>=0.85": (auto_point(summary, "positive", 100) or 0) >= 0.85,
        "active_matches_random@400_with<=250": matched is not None and matched <= 250,
    }
    if timing:
        goals["scoring>=200texts/s"] = timing["texts_per_s"] >= 200
        goals["train_seconds@400<=60"] = timing["train_seconds"] <= 60
    return {
        "benchmark": "reward_model", "policy": "smollm2-135m-instruct", "labeler_noise": args.noise,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, bf16 native: {resolve_bf16(None)}",
        "torch_threads": torch.get_num_threads(), "full": args.full,
        "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs), "pair_seconds": round(pair_seconds, 1),
        "head_curve_seconds": round(head_seconds, 1), "baseline_curve_seconds": round(baseline_seconds, 1),
        "clear_margin": CLEAR_MARGIN, "clear_eval_pairs": clear_pairs, "curves": summary,
        "auto_kind": {str(n): choose_kind("auto", None, n).kind for n in sizes},
        "active_labels_to_match_random@400": matched,
        "default_kind_timing": timing,
        "goals_met": goals,
    }


if __name__ == "__main__":
    with contextlib.redirect_stdout(sys.stderr):  # progress and trainer logs to stderr: stdout is the JSON line
        result = main()
    print(json.dumps(result))
