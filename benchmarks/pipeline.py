"""Claim: `workbench pipeline --preset quick` (smollm2-135m-instruct, minilm-l6, the default gold labeler) runs
every stage in <= 15 min on 2 CPU cores; the tuned policy beats the base by GOLD (win rate >= 0.70, lower CI bound
> 0.5) on every seed given (`--seeds 0 1 2`); and the workbench's RL step is no slower than a plain TRL RLOOTrainer
script with identical settings (ratio <= 1.0, measured in the same run, on the first seed). RL is reported next to
best-of-n at equal sampling compute and next to the best best-of-n measured (Gao et al. 2022 find RL the less
KL-efficient of the two, so beating best-of-n at the same KL is not a goal). With `--algo ppo` the same plain
RLOOTrainer is the reference for PPO's step (goal: <= 1.5x, the price of the value model and the epochs), and
`--compare-with` an RLOO run's JSON line checks PPO's gold win rate against RLOO's CI.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
from pathlib import Path

import torch


def plain_trl_steps(policy: str, reward_dir: str, preset, out: Path, steps: int) -> list[dict]:
    """Per-step time and mean completion length of a plain TRL RLOOTrainer with the same policy, reward model,
    sampling and precision settings as the workbench's RL stage."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from workbench.data import builtin_prompts
    from workbench.models import resolve_bf16, resolve_model
    from workbench.rl import RLConfig
    from workbench.rl.rewards import load_reward_classifier

    # every RM kind as the torch sequence classifier TRL calls (an embedding head or ensemble is no HF checkpoint);
    # unnormalised, as a plain script would load it
    rm, rm_tokenizer = load_reward_classifier(reward_dir, normalize=False)
    policy_path = resolve_model(policy).path
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    rows: list[dict] = []

    class StepTimes(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "step_time" in logs:
                rows.append({"step_time": float(logs["step_time"]),
                             "mean_length": float(logs.get("completions/mean_length", "nan"))})

    args = RLOOConfig(output_dir=str(out), max_steps=steps, learning_rate=preset.learning_rate, logging_steps=1,
                      save_strategy="no", report_to="none", seed=preset.seed, use_cpu=True,
                      per_device_train_batch_size=preset.prompts_per_step * preset.num_generations,
                      num_generations=preset.num_generations, max_completion_length=preset.max_new_tokens,
                      temperature=0.7, top_p=1.0, top_k=0, beta=preset.beta,
                      # the workbench's precision and checkpointing (TRL's defaults are bf16=True, which is ~7x
                      # slower on a CPU without bf16 units, and gradient_checkpointing=True)
                      bf16=resolve_bf16(preset.bf16), gradient_checkpointing=RLConfig.gradient_checkpointing,
                      model_init_kwargs={"dtype": "float32"})
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": r.text}] for r in builtin_prompts("train")]})
    trainer = RLOOTrainer(model=policy_path, reward_funcs=[rm], args=args, train_dataset=dataset,
                          processing_class=tokenizer, reward_processing_classes=[rm_tokenizer], callbacks=[StepTimes()])
    trainer.train()
    return rows


def step_comparison(workbench_rows: list[dict], plain_rows: list[dict]) -> dict:
    """Median step time over steps 2..k on both sides (step 1 includes warm-up), and the same per generated token:
    both sample at the same settings, but after step 1 their samples (and so their lengths) differ."""
    def medians(rows: list[dict]) -> tuple[float, float]:
        steps = rows[1:] or rows
        return (statistics.median(r["step_time"] for r in steps),
                statistics.median(r["step_time"] / r["mean_length"] for r in steps))

    (wb_step, wb_token), (plain_step, plain_token) = medians(workbench_rows), medians(plain_rows)
    return {"workbench": round(wb_step, 2), "plain_trl": round(plain_step, 2), "ratio": round(wb_step / plain_step, 3),
            "workbench_per_length_token": round(wb_token, 4), "plain_trl_per_length_token": round(plain_token, 4),
            "ratio_per_length_token": round(wb_token / plain_token, 3),
            "workbench_mean_lengths": [round(r["mean_length"], 1) for r in workbench_rows],
            "plain_trl_mean_lengths": [round(r["mean_length"], 1) for r in plain_rows]}


def parse_overrides(items: list[str]) -> dict:
    """FIELD=VALUE strings -> {field: value}, each value read as JSON when it parses (numbers, booleans)."""
    overrides = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE, e.g. rl_steps=8")
        try:
            overrides[field] = json.loads(value)
        except json.JSONDecodeError:
            overrides[field] = value
    return overrides


def reuse_pairs(source: Path, out: Path, preset) -> None:
    """Copy the pairs (not the labels) of a finished run into a new store under `out` and label them with this
    preset's simulated labeler, so `run_pipeline` finds its labels collected and goes on from the reward model."""
    from workbench.oracles import SimulatedLabeler
    from workbench.preferences import PreferenceStore
    from workbench.preferences.simulate import label_with

    with PreferenceStore(source / "prefs.sqlite") as old:
        pairs = old.pairs()
    out.mkdir(parents=True, exist_ok=True)
    with PreferenceStore(out / "prefs.sqlite") as store:
        store.add_pairs(pairs)
        label_with(store, pairs, SimulatedLabeler(preset.oracle, temperature=preset.labeler_noise, seed=preset.seed))


def seed_result(seed: int, headline: dict) -> dict:
    """One pipeline run's numbers: gold and proxy wins, RL next to best-of-n, and the gaming indicators."""
    report = json.loads(Path(headline["eval_path"]).read_text())
    gaming = report.get("gaming", {})
    return {
        "seed": seed,
        "seconds": headline["seconds"],
        "rm_gold_accuracy": headline["rm_gold_accuracy"],
        "rm_trust": headline.get("rm_trust"),
        "gold_win_rate": headline["gold_win_rate"],
        "proxy_win_rate": headline["proxy_win_rate"],
        "gold_mean": {k: round(v["value"], 3) for k, v in headline["gold"].items()},
        "words_mean": headline["words"],
        "kl": headline["kl"],
        "rl_vs_bon": headline["rl_vs_bon"] or {},
        "best_of_n": report.get("best_of_n"),
        # gaming indicators (workbench.evaluation.gaming): a gold win read against stock phrases and task failures
        "gold_win_rate_by_oracle": gaming.get("win_rate_gold_by_oracle"),
        "task_fail_share": {k: v["share"] for k, v in gaming.get("task_fail", {}).items()},
        "top_stock_phrase": (gaming.get("top_rising_ngrams") or [None])[0],
        "top_phrase_share": gaming.get("top_phrase_share", 1.0),
        "words_change": gaming.get("words", {}).get("change"),
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/bench_pipeline")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--algo", help="the RL algorithm (default: the preset's, rloo); ppo is compared with RLOO")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="pipeline seeds (labels, RM, RL)")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override preset fields (e.g. rl_steps=8 eval_prompts=24): a reduced run, reported as such")
    parser.add_argument("--reuse-pairs-from", help="a finished run folder of this benchmark: its generated pairs are "
                        "labelled afresh by each seed's simulated labeler (pair generation is the slowest stage on a "
                        "CPU without bf16 units); with the same seed these are exactly its labels")
    parser.add_argument("--compare-with", help="a JSON line printed by an RLOO run of this benchmark (for --algo ppo)")
    parser.add_argument("--compare-steps", type=int, default=6,
                        help="first steps compared (workbench vs plain TRL), step 1 excluded as warm-up")
    args = parser.parse_args()

    from workbench.models import resolve_bf16
    from workbench.pipeline import get_preset, run_pipeline
    from workbench.runs import RunDir

    overrides = parse_overrides(args.set)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    per_seed, steps = [], None
    for seed in args.seeds:
        preset = get_preset(args.preset, algo=args.algo, seed=seed, **overrides)
        seed_out = out / f"seed{seed}" if len(args.seeds) > 1 else out
        if args.reuse_pairs_from:
            reuse_pairs(Path(args.reuse_pairs_from), seed_out, preset)
        with contextlib.redirect_stdout(sys.stderr):  # trainer chatter off stdout: stdout carries one JSON line
            headline = run_pipeline(preset, seed_out)
            if steps is None:
                # the same phase of training on both sides: the first k steps (later steps' completion lengths
                # drift as the policy learns, so a median over all steps would compare different workloads)
                workbench_rows = [{"step_time": r[f"{preset.algo}/step_time"],
                                   "mean_length": r[f"{preset.algo}/completions/mean_length"]}
                                  for r in RunDir(seed_out).read_metrics("rl")
                                  if f"{preset.algo}/step_time" in r][:args.compare_steps]
                plain_rows = plain_trl_steps(preset.policy, str(seed_out / "reward" / "model"), preset,
                                             seed_out / "plain_trl", args.compare_steps)
                steps = step_comparison(workbench_rows, plain_rows)
        per_seed.append(seed_result(seed, headline))
    first = per_seed[0]
    wins = [row["gold_win_rate"] for row in per_seed]
    result = {
        "benchmark": "pipeline",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text(),
                    "load_avg_at_end": round(os.getloadavg()[0], 2)},
        "preset": args.preset,
        "algo": preset.algo,
        "seeds": args.seeds,
        "pairs_reused_from": args.reuse_pairs_from,
        "overrides": overrides or None,  # a reduced run: its numbers are not the preset's
        **{k: v for k, v in first.items() if k != "seed"},
        "per_seed": per_seed if len(per_seed) > 1 else None,
        "bf16": resolve_bf16(preset.bf16),
        "rl_step_seconds": steps,
        "goals": {
            # not judged when the pairs were reused: the total then leaves out their generation
            "total_le_15_min": None if args.reuse_pairs_from else all(row["seconds"]["total"] <= 900
                                                                      for row in per_seed),
            "gold_win_rate_ge_0.70_and_ci_above_0.5": all(w["value"] >= 0.70 and w["low"] > 0.5 for w in wins),
            "every_seed_gold_win_ci_above_0.5": all(w["low"] > 0.5 for w in wins),
            "step_time_ratio_le_1": steps["ratio"] <= 1.0,
            "step_time_per_length_token_ratio_le_1": steps["ratio_per_length_token"] <= 1.0,
            "tuned_task_fail_lt_0.10": all(row["task_fail_share"].get("tuned") is not None  # 0.0 is a pass
                                           and row["task_fail_share"]["tuned"] < 0.10 for row in per_seed),
            "top_stock_phrase_in_lt_0.10_of_tuned": all(row["top_phrase_share"] < 0.10 for row in per_seed),
        },
    }
    if preset.algo == "ppo":  # PPO's step against the plain RLOOTrainer's: same samples, plus a value model and epochs
        for key in ("step_time_ratio_le_1", "step_time_per_length_token_ratio_le_1"):
            del result["goals"][key]
        result["goals"]["ppo_step_time_le_1.5x_rloo"] = steps["ratio"] <= 1.5
        result["goals"]["ppo_step_time_per_length_token_le_1.5x_rloo"] = steps["ratio_per_length_token"] <= 1.5
        compare_text = Path(args.compare_with).read_text().strip() if args.compare_with and \
            Path(args.compare_with).exists() else ""
        if args.compare_with and not compare_text:  # e.g. the RLOO run is still going: keep this run's line
            print(f"[pipeline] {args.compare_with} holds no JSON line yet: no RLOO comparison.", file=sys.stderr)
        if compare_text:
            rloo = json.loads(compare_text.splitlines()[-1])
            result["rloo"] = {"gold_win_rate": rloo["gold_win_rate"], "kl": rloo["kl"],
                              "rl_step_seconds": rloo["rl_step_seconds"]["workbench"]}
            result["ppo_step_over_workbench_rloo_step"] = round(
                steps["workbench"] / rloo["rl_step_seconds"]["workbench"], 3)
            # "at least RLOO's, within its CI": PPO's estimate is not below the lower end of RLOO's interval
            result["goals"]["ppo_gold_win_ge_rloo_within_ci"] = (first["gold_win_rate"]["value"]
                                                                 >= rloo["gold_win_rate"]["low"])
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
