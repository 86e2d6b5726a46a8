"""Claim: the default labeler `helpful-upbeat-concise` agrees with the hand-judged agreement set on >= 0.90 of its
pairs (the round-1 `upbeat-concise` on far fewer), and labelling stays cheap: <= 10 s of gold per 1,000 replies on
2 CPU cores. Also measures what pointwise mutual information under the base policy would cost instead
(log p(y | x) - log p(y | generic prompt): two SmolLM2-135M forward passes per reply).

Prints one JSON line.  Run: HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/oracles.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time

import torch


def cpu_flags() -> str:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return "unknown"
    return "avx512_bf16" if "avx512_bf16" in flags else ("avx2" if "avx2" in flags else "no avx2")


def gold_cost_per_1000(oracle: str, pairs: list[dict]) -> dict:
    """Seconds of gold per 1,000 distinct replies, prompts' embeddings already cached (they repeat in practice):
    wall clock, and process CPU time / threads (what an otherwise idle machine's wall clock would be)."""
    from workbench import oracles

    prompts = [p["prompt"] for p in pairs] * 2
    replies = [p["a"] for p in pairs] + [p["b"] for p in pairs]
    embedder = oracles._embedder() if oracle in oracles.EMBEDDING_ORACLES else None
    if embedder is not None:
        embedder.cache.clear()
        embedder.embed(sorted(set(prompts)))
    start, cpu = time.perf_counter(), time.process_time()
    oracles.gold_scores(oracle, prompts, replies)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"wall": round(wall / len(replies) * 1000, 2),
            "cpu_per_thread": round(cpu / torch.get_num_threads() / len(replies) * 1000, 2)}


def pmi_cost_per_1000(pairs: list[dict], n: int = 8) -> dict:
    """Seconds per 1,000 replies for PMI under the base policy: two batched forward passes per reply."""
    from workbench.generation import completion_logprobs
    from workbench.models import load_policy

    model, tokenizer = load_policy("smollm2-135m-instruct")
    prompts, replies = [p["prompt"] for p in pairs[:n]], [p["a"] for p in pairs[:n]]
    ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in replies]
    completion_logprobs(model, tokenizer, prompts[:2], ids[:2])  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        completion_logprobs(model, tokenizer, prompts, ids)  # log p(y | x)
        completion_logprobs(model, tokenizer, ["Say something."] * n, ids)  # log p(y | generic prompt)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"wall": round(wall / n * 1000, 1), "cpu_per_thread": round(cpu / torch.get_num_threads() / n * 1000, 1)}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-pmi", action="store_true", help="skip the PMI cost measurement (loads SmolLM2)")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    from workbench.evaluation.agreement import agreement_pairs, labeler_agreement
    from workbench.oracles import ORACLES

    pairs = agreement_pairs()
    with contextlib.redirect_stdout(sys.stderr):
        agreement = labeler_agreement(list(ORACLES), pairs)
        cost = {name: gold_cost_per_1000(name, pairs) for name in ("helpful-upbeat-concise", "task", "upbeat-concise")}
        pmi = None if args.no_pmi else pmi_cost_per_1000(pairs)
    default = agreement["helpful-upbeat-concise"]["agreement"]
    result = {
        "benchmark": "oracles",
        "machine": {"cpu": platform.processor() or platform.machine(), "flags": cpu_flags(),
                    "threads": torch.get_num_threads(), "cores": os.cpu_count(),
                    "load_avg_1min": round(os.getloadavg()[0], 2)},
        "n_pairs": len(pairs),
        "agreement": {name: {**{k: round(v, 3) if isinstance(v, float) else v for k, v in row["agreement"].items()},
                             "by_contrast": row["by_contrast"]} for name, row in agreement.items()},
        "misses_default": agreement["helpful-upbeat-concise"]["misses"],
        "seconds_per_1000_replies": {**cost, "pmi_base_policy": pmi},
        "goals": {"default_agreement_ge_0.90": default["value"] >= 0.90,
                  # CPU time per thread: the wall clock is only meaningful on an otherwise idle machine
                  "default_cost_le_10s_per_1000": cost["helpful-upbeat-concise"]["cpu_per_thread"] <= 10.0},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
