"""`workbench evaluate`: base vs tuned, best-of-n baseline, RL checkpoints, over-optimisation fits -> eval.json."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workbench.data import builtin_prompts
from workbench.evaluation.bestofn import (best_of_n_curve, bon_gold_at, fit_overoptimisation, matched_rl_vs_bon,
                                         rl_vs_bon_summary)
from workbench.evaluation.gaming import gaming_indicators
from workbench.evaluation.policy_eval import PolicyEvalConfig, evaluate_policies, token_logratios
from workbench.shaping import AnswerShaping
from workbench.models import load_policy
from workbench.reward.score import RewardModel
from workbench.rl.train import POLICY_MANIFEST, complete_checkpoints, snapshot_dirs
from workbench.runs import write_json_atomic


@dataclass
class EvaluateConfig:
    base: str = "smollm2-135m-instruct"
    policy: str = ""  # folder of the tuned policy (runs/<name>/rl/policy)
    reward: str = ""  # folder of the reward model (runs/<name>/reward/model)
    oracle: str = "helpful-upbeat-concise"
    n_prompts: int = 64
    max_new_tokens: int = 64  # token budget; `shaping` ends most replies at a sentence end before it
    temperature: float = 0.7
    seed: int = 0
    bon_prompts: int = 16  # held-out prompts for the best-of-n baseline (max_n samples each)
    bon_max_n: int = 16  # 0 skips best-of-n
    checkpoints: bool = True  # also place the saved RL checkpoints on the over-optimisation plot
    bf16: bool | None = False  # fp32 sampling, the policies exactly as saved (see `PolicyEvalConfig.bf16`)
    shaping: AnswerShaping = field(default_factory=AnswerShaping)  # as the pairs and RL samples were shaped

    def __post_init__(self) -> None:
        if isinstance(self.shaping, dict):
            self.shaping = AnswerShaping.from_dict(self.shaping)
        if not self.policy or not self.reward:
            raise ValueError("evaluate needs both policy=<runs/NAME/rl/policy> and reward=<runs/NAME/reward/model>")
        if self.bon_max_n and self.bon_max_n & (self.bon_max_n - 1):
            raise ValueError(f"bon_max_n must be a power of two (1, 2, 4, ...) or 0, got {self.bon_max_n}")


def load_checkpoint_policy(checkpoint: Path, base_name: str, dtype: str = "float32", device: str = "cpu"):
    """A Trainer checkpoint as a plain model: full weights, or base + LoRA adapter merged."""
    if (checkpoint / "adapter_config.json").exists():
        from peft import PeftModel

        base, _ = load_policy(base_name, dtype=dtype, device=device)
        return PeftModel.from_pretrained(base, str(checkpoint)).merge_and_unload().eval()
    model, _ = load_policy(str(checkpoint), dtype=dtype, device=device)
    return model


def rl_completions(policy_dir: Path) -> int | None:
    """Completions the RL run sampled while training (steps x prompts per step x generations), from its config."""
    config = policy_dir.parent / "config.json"
    if not config.exists():
        return None
    data = json.loads(config.read_text())
    if data.get("algo") == "dpo" or not all(k in data for k in ("steps", "prompts_per_step", "num_generations")):
        return None
    return int(data["steps"]) * int(data["prompts_per_step"]) * int(data["num_generations"])


def intermediate_policies(policy_dir: Path) -> list[tuple[str, Path]]:
    """(name, folder) of the RL run's complete checkpoints and snapshots before its final policy, by step."""
    stage_dir = policy_dir.parent
    manifest = policy_dir / POLICY_MANIFEST
    final_step = json.loads(manifest.read_text()).get("steps") if manifest.exists() else None
    found = {int(p.name.split("-")[1]): (p.name, p)
             for p in snapshot_dirs(stage_dir) + complete_checkpoints(stage_dir / "checkpoints")}  # checkpoints win
    return [found[step] for step in sorted(found) if step != final_step]


def evaluate_run(config: EvaluateConfig, out: str | Path | None = None, show_progress: bool = False) -> dict:
    """Everything issue-level users read after RL; written to `out` (default <policy>/../eval.json).
    `show_progress`: a progress bar per sampling call (base, tuned, each checkpoint, best-of-n)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    base, tokenizer = load_policy(config.base, device=device)
    tuned, _ = load_policy(config.policy, device=device)
    rm = RewardModel.load(config.reward)
    eval_config = PolicyEvalConfig(n_prompts=config.n_prompts, max_new_tokens=config.max_new_tokens,
                                   temperature=config.temperature, seed=config.seed, oracle=config.oracle,
                                   bf16=config.bf16, shaping=config.shaping, show_progress=show_progress)
    heldout = builtin_prompts("heldout")
    result = evaluate_policies(base, tuned, tokenizer, rm, eval_config, heldout)
    summary = result["summary"]
    first = result["tuned_samples"][0]
    # the evaluation's own settings (bon_prompts, bon_max_n, paths) next to the sampler's, which summary["config"] holds
    report = {**summary, "config": {**asdict(config), **summary.get("config", {})}, "table": result["table"],
              "token_logratios": {"prompt": first["prompt"],
                                  "tokens": token_logratios(tuned, base, tokenizer, first["prompt"], first["token_ids"],
                                                            config.temperature, config.shaping.active_system_prompt)}}
    table = result["table"]  # stock phrases, task failures, length change: read the gold win rate against them
    report["gaming"] = gaming_indicators([r["prompt"] for r in table], [r["base"] for r in table],
                                         [r["tuned"] for r in table], seed=config.seed)
    # RL points for the over-optimisation plot: the base (d = 0), saved checkpoints, the final policy
    rl_points = [{"name": "base", "sqrt_kl": 0.0, "kl": 0.0, "gold": summary["gold"]["base"]["value"],
                  "proxy": summary["proxy"]["base"]["value"]}]
    if config.checkpoints:
        for name, model_dir in intermediate_policies(Path(config.policy)):
            model = load_checkpoint_policy(model_dir, config.base, device=device)
            point = evaluate_policies(base, model, tokenizer, rm, eval_config, heldout,
                                      base_samples=result["base_samples"])["summary"]
            rl_points.append({"name": name, "kl": point["kl"]["value"],
                              "sqrt_kl": math.sqrt(max(point["kl"]["value"], 0.0)),
                              "gold": point["gold"]["tuned"]["value"], "proxy": point["proxy"]["tuned"]["value"]})
            del model
    rl_points.append({"name": "final", "kl": summary["kl"]["value"], "sqrt_kl": math.sqrt(max(summary["kl"]["value"], 0.0)),
                      "gold": summary["gold"]["tuned"]["value"], "proxy": summary["proxy"]["tuned"]["value"]})
    report["rl_points"] = rl_points
    if config.bon_max_n:
        bon = best_of_n_curve(base, tokenizer, rm, heldout[: config.bon_prompts], config.bon_max_n,
                              eval_config.sampling(), config.oracle, bf16=eval_config.bf16)
        report["best_of_n"] = bon.rows
        start_gold, start_proxy = bon.rows[0]["gold"], bon.rows[0]["proxy"]
        fits = {}
        for metric, start in (("gold", start_gold), ("proxy", start_proxy)):
            if len(bon.rows) >= 3:
                fits[f"bon_{metric}"] = fit_overoptimisation([r["sqrt_kl"] for r in bon.rows],
                                                             [r[metric] - start for r in bon.rows], "bon")
            base_value = rl_points[0][metric]
            if sum(p["sqrt_kl"] > 0 for p in rl_points) >= 2:
                fits[f"rl_{metric}"] = fit_overoptimisation([p["sqrt_kl"] for p in rl_points],
                                                            [p[metric] - base_value for p in rl_points], "rl")
        report["fits"] = fits
        final = rl_points[-1]
        bon_max_sqrt_kl = bon.rows[-1]["sqrt_kl"]
        # RL vs best-of-n at matched KL, both as gains over their own n = 1 / base gold (same sampler, other seeds)
        report["rl_vs_bon"] = {
            "sqrt_kl": final["sqrt_kl"],
            "rl_gold_gain": final["gold"] - rl_points[0]["gold"],
            "bon_gold_gain_at_same_kl": bon_gold_at(bon.rows, final["sqrt_kl"]) - start_gold,
            "bon_extrapolated": final["sqrt_kl"] > bon_max_sqrt_kl,  # beyond the largest n: clamped at n = max_n
        }
        report["rl_vs_bon"]["matched"] = matched_rl_vs_bon(rl_points, bon.rows)  # None: RL beyond best-of-n's KL
        report["rl_vs_bon"].update(rl_vs_bon_summary(final, rl_points[0]["gold"], bon.rows,
                                                     rl_completions(Path(config.policy)), config.n_prompts))
    destination = Path(out) if out else Path(config.policy).parent / "eval.json"
    write_json_atomic(destination, report)
    report["path"] = str(destination)
    return report
