"""Claim: workbench.generation adds no overhead over plain `model.generate`, and reaches >= 25 tok/s at
batch 1 and >= 120 tok/s at batch 8 (48 new tokens, smollm2-135m-instruct, 2 CPU cores).

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
import sys
import time

import torch

from workbench.data import builtin_prompts
from workbench.generation import (
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
    config = SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=0.7, top_p=0.95, seed=seed, batch_size=batch_size)
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


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    prompts = [r.prompt for r in builtin_prompts("heldout")[:8]]
    fp32_model, tokenizer = load_policy(args.model, dtype="float32")
    result = {"benchmark": "generation", "model": args.model, "new_tokens": NEW_TOKENS,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, native bf16: {cpu_has_native_bf16()}",
              "torch_threads": torch.get_num_threads(), "fp32": measure(fp32_model, tokenizer, prompts, args.repeats)}
    bf16_model, _ = load_policy(args.model, dtype="bfloat16")
    result["bf16"] = measure(bf16_model, tokenizer, prompts, args.repeats)
    result["bf16_quality"] = bf16_quality(fp32_model, bf16_model, tokenizer, prompts)
    goals = {"ratio>=1.0 (3% timing noise allowed)": min(result[d][b]["ratio"] for d in ("fp32", "bf16") for b in ("batch1", "batch8")) >= 0.97,
             "batch1>=25tok/s": max(result[d]["batch1"]["workbench_tok_s"] for d in ("fp32", "bf16")) >= 25,
             "batch8>=120tok/s": max(result[d]["batch8"]["workbench_tok_s"] for d in ("fp32", "bf16")) >= 120}
    result["goals_met"] = goals
    return result


if __name__ == "__main__":
    with contextlib.redirect_stdout(sys.stderr):  # progress and trainer logs to stderr: stdout is the JSON line
        result = main()
    print(json.dumps(result))
