"""Claims: (1) answer shaping makes >= 90 % of the default model's replies complete (EOS or a sentence end) on 64
held-out prompts, at <= 1.3x the time of today's 48-token unshaped pair (2 sides, one batch), also for the RL
samples of the quick preset's first step; (2) workbench.generation adds no overhead over plain `model.generate`,
and reaches >= 25 tok/s at batch 1 and >= 120 tok/s at batch 8 (48 new tokens, raw sampling, 2 CPU cores).

Prints one JSON line. Both paths run the same prompts, seeds and sampling settings in the same process;
each measurement is the best of `--repeats` runs after a warm-up. bf16 is measured too, with a quality
check: the bf16 model's per-token log-probs of the fp32 samples, against the fp32 model's own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from workbench.data import builtin_prompts
from workbench.generation import (
    AnswerShaping,
    SamplingConfig,
    completion_logprobs,
    format_prompt,
    generate,
)
from workbench.models import cpu_has_native_bf16, load_policy

NEW_TOKENS = 48


def plain_generate(model, tokenizer, prompts, batch_size, seed):
    """The baseline: what a user would write with transformers alone. Returns the number of new tokens."""
    torch.manual_seed(seed)
    produced = 0
    for start in range(0, len(prompts), batch_size):
        texts = [format_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=True, temperature=0.7, top_p=0.95,
                                 top_k=50, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = out[:, batch["input_ids"].shape[1] :]
        # count tokens up to and including the first EOS in each row
        for row in new.tolist():
            produced += next((i + 1 for i, t in enumerate(row) if t == tokenizer.eos_token_id), len(row))
    return produced


def workbench_generate(model, tokenizer, prompts, batch_size, seed):
    config = SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=0.7, top_p=0.95, seed=seed, batch_size=batch_size,
                            shaping=AnswerShaping.off())  # the same work as plain_generate: raw sampling
    return sum(len(c.token_ids) for c in generate(model, tokenizer, prompts, config))


def best_rate(fn, model, tokenizer, prompts, batch_size, repeats):
    rates = []
    for repeat in range(repeats):
        started = time.perf_counter()
        tokens = fn(model, tokenizer, prompts, batch_size, seed=repeat)
        rates.append(tokens / (time.perf_counter() - started))
    return max(rates)


def measure(model, tokenizer, prompts, repeats):
    workbench_generate(model, tokenizer, prompts[:2], 2, seed=0)  # warm-up: first call pays one-off costs
    result = {}
    for batch_size, subset in ((1, prompts[:4]), (8, prompts[:8])):
        ours = best_rate(workbench_generate, model, tokenizer, subset, batch_size, repeats)
        plain = best_rate(plain_generate, model, tokenizer, subset, batch_size, repeats)
        result[f"batch{batch_size}"] = {"workbench_tok_s": round(ours, 1), "plain_generate_tok_s": round(plain, 1),
                                        "ratio": round(ours / plain, 3)}
    return result


def bf16_quality(fp32_model, bf16_model, tokenizer, prompts):
    """Mean |log p_bf16 - log p_fp32| per token on fp32 samples, and both mean log-probs (nats/token)."""
    samples = generate(fp32_model, tokenizer, prompts, SamplingConfig(max_new_tokens=NEW_TOKENS, seed=123))
    ids = [c.token_ids for c in samples]
    lp32 = completion_logprobs(fp32_model, tokenizer, prompts, ids)
    lp16 = completion_logprobs(bf16_model, tokenizer, prompts, ids)
    flat32 = torch.tensor([x for row in lp32 for x in row])
    flat16 = torch.tensor([x for row in lp16 for x in row])
    greedy32 = generate(fp32_model, tokenizer, prompts, SamplingConfig(max_new_tokens=24, temperature=0))
    greedy16 = generate(bf16_model, tokenizer, prompts, SamplingConfig(max_new_tokens=24, temperature=0))
    return {
        "mean_abs_logprob_diff": round(float((flat16 - flat32).abs().mean()), 4),
        "fp32_mean_logprob": round(float(flat32.mean()), 4),
        "bf16_mean_logprob": round(float(flat16.mean()), 4),
        "greedy_identical_fraction": sum(a.token_ids == b.token_ids for a, b in zip(greedy32, greedy16)) / len(prompts),
        "bf16_sample": greedy16[0].text,
    }


def completeness(completions) -> dict:
    """Share of replies that ended by themselves, their mean words, and how they ended."""
    n = len(completions)
    reasons = {r: sum(c.stop_reason == r for c in completions) for r in ("eos", "sentence", "length")}
    return {"complete_share": round(sum(c.finished for c in completions) / n, 3),
            "mean_words": round(sum(len(c.text.split()) for c in completions) / n, 1), "n": n, "stop_reasons": reasons}


def pair_seconds(model, tokenizer, prompts, config: SamplingConfig) -> float:
    """Mean wall time of one pair: both sides of a prompt decoded in one batch of 2, as the Rank tab does."""
    started = time.perf_counter()
    for number, prompt in enumerate(prompts):
        generate(model, tokenizer, [prompt, prompt], replace(config, seed=number, batch_size=2))
    return (time.perf_counter() - started) / len(prompts)


def shaping(model, tokenizer, n_prompts: int, timed_pairs: int) -> dict:
    """Shaped vs today's 48-token unshaped sampling, pair settings (temperature 1.0, top-p 0.95), same prompts."""
    from workbench.pipeline import get_preset
    from workbench.preferences.pairs import PairConfig
    from workbench.preferences.simulate import prompts_for

    prompts = [r.prompt for r in builtin_prompts("heldout")[:n_prompts]]
    pair = PairConfig()
    shaped = SamplingConfig(max_new_tokens=pair.max_new_tokens, temperature=pair.temperature, top_p=pair.top_p,
                            batch_size=16, shaping=pair.shaping)
    raw = replace(shaped, max_new_tokens=NEW_TOKENS, shaping=AnswerShaping.off())
    pair_seconds(model, tokenizer, prompts[:1], shaped)  # warm-up
    result = {"shaping": pair.shaping.to_dict(), "max_new_tokens": pair.max_new_tokens,
              "shaped": completeness(generate(model, tokenizer, prompts, shaped)),
              "unshaped_48": completeness(generate(model, tokenizer, prompts, raw))}
    result["shaped"]["pair_seconds"] = round(pair_seconds(model, tokenizer, prompts[:timed_pairs], shaped), 2)
    result["unshaped_48"]["pair_seconds"] = round(pair_seconds(model, tokenizer, prompts[:timed_pairs], raw), 2)
    result["pair_time_ratio"] = round(result["shaped"]["pair_seconds"] / result["unshaped_48"]["pair_seconds"], 3)
    # RL's first step samples from the base policy (the first update comes after it): the same distribution
    preset = get_preset("quick")
    n_rl = preset.prompts_per_step * preset.num_generations
    rl_prompts = [r.prompt for r in prompts_for(preset.prompts_per_step) for _ in range(preset.num_generations)]
    rl = SamplingConfig(max_new_tokens=preset.max_new_tokens, temperature=0.7, top_p=1.0, top_k=0,
                        batch_size=n_rl, shaping=preset.shaping)
    result["rl_step1_quick"] = completeness(generate(model, tokenizer, rl_prompts, rl))
    result["rl_step1_quick_unshaped"] = completeness(generate(
        model, tokenizer, rl_prompts, replace(rl, max_new_tokens=40, shaping=AnswerShaping.off())))
    return result


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-prompts", type=int, default=64, help="held-out prompts for the completeness share")
    parser.add_argument("--timed-pairs", type=int, default=16, help="pairs timed per setting")
    parser.add_argument("--shaping-only", action="store_true", help="skip the throughput and bf16 measurements")
    args = parser.parse_args()
    prompts = [r.prompt for r in builtin_prompts("heldout")[:8]]
    fp32_model, tokenizer = load_policy(args.model, dtype="float32")
    flags = sorted(set(re.findall(r"avx512_bf16|amx_bf16|avx512f|avx2", Path("/proc/cpuinfo").read_text())))
    result = {"benchmark": "generation", "model": args.model, "new_tokens": NEW_TOKENS,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, native bf16: {cpu_has_native_bf16()}",
              "cpu_flags": flags, "torch_threads": torch.get_num_threads(),
              "answer_shaping": shaping(fp32_model, tokenizer, args.n_prompts, args.timed_pairs)}
    shaped = result["answer_shaping"]
    goals = {"complete_share>=0.90": shaped["shaped"]["complete_share"] >= 0.90,
             "pair_time_ratio<=1.3": shaped["pair_time_ratio"] <= 1.3,
             "rl_step1_complete_share>=0.90": shaped["rl_step1_quick"]["complete_share"] >= 0.90}
    if args.shaping_only:
        result["goals_met"] = goals
        return result
    result["fp32"] = measure(fp32_model, tokenizer, prompts, args.repeats)
    bf16_model, _ = load_policy(args.model, dtype="bfloat16")
    result["bf16"] = measure(bf16_model, tokenizer, prompts, args.repeats)
    result["bf16_quality"] = bf16_quality(fp32_model, bf16_model, tokenizer, prompts)
    goals |= {"ratio>=1.0 (3% timing noise allowed)": min(result[d][b]["ratio"] for d in ("fp32", "bf16") for b in ("batch1", "batch8")) >= 0.97,
             "batch1>=25tok/s": max(result[d]["batch1"]["workbench_tok_s"] for d in ("fp32", "bf16")) >= 25,
             "batch8>=120tok/s": max(result[d]["batch8"]["workbench_tok_s"] for d in ("fp32", "bf16")) >= 120}
    result["goals_met"] = goals
    return result


if __name__ == "__main__":
    with contextlib.redirect_stdout(sys.stderr):  # progress and trainer logs to stderr: stdout is the JSON line
        result = main()
    print(json.dumps(result))
