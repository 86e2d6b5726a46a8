"""`workbench pipeline`: every stage end to end with a simulated labeler — pairs -> labels -> RM -> RL -> evaluate.

Presets size the run for the machine: `smoke` (tiny models, seconds; for tests), `quick` (the real default models
in about a quarter of an hour on 2 CPU cores), `gpu` (a 0.5B Hub policy, 2,000 labels and 300 RL steps for one
80 GB GPU). Any field can be overridden.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from workbench.shaping import AnswerShaping
from workbench.runs import RunDir, write_json_atomic


@dataclass
class PipelinePreset:
    policy: str = "smollm2-135m-instruct"
    reward_backbone: str = "minilm-l6"
    oracle: str = "helpful-upbeat-concise"
    labeler_noise: float = 0.1  # Bradley-Terry temperature of the simulated annotator
    n_pairs: int = 320  # labels; how they were chosen: docs/design.md, "The quick preset"
    pair_max_new_tokens: int = 64  # a budget: shaping ends replies at a sentence end (~20 words)
    pair_batch_size: int = 16
    rm_epochs: float = 1.0  # one pass: three memorise the noisy labels (see RewardModelConfig)
    algo: str = "rloo"
    # RL steps and learning rate: the variants measured are in docs/design.md, "The quick preset"
    rl_steps: int = 28
    beta: float = 0.05
    learning_rate: float = 5e-5
    prompts_per_step: int = 4
    num_generations: int = 4
    max_new_tokens: int = 48  # RL and evaluation budget; shaped replies mostly end before it
    lora: bool = False
    # ppo (--algo ppo): a value head on the policy and 2 epochs keep its step near RLOO's (docs/design.md, "PPO")
    value_init: str = "policy"
    ppo_epochs: int = 2
    save_steps: int = 14  # the step-14 checkpoint becomes a point on the over-optimisation plot
    # weights after step 2: an RL point inside best-of-8's KL range, so both are compared at a KL both measured
    snapshot_steps: tuple[int, ...] = (2,)
    eval_prompts: int = 85  # all held-out prompts: the gold win rate CI is +-0.14 on 40, ~+-0.1 on 85
    bon_prompts: int = 8
    bon_max_n: int = 8
    bf16: bool | None = None  # bf16 for RM and RL training; None = where bf16 math is native (GPUs, AVX512-BF16/AMX CPUs)
    seed: int = 0
    # an RM whose validation accuracy's 95 % CI reaches chance cannot be trusted: RL then takes this share of its
    # learning rate, so it cannot over-optimise a near-random proxy as hard as a trusted one
    weak_rm_lr_scale: float = 0.25
    shaping: AnswerShaping = field(default_factory=AnswerShaping)  # one answer shape for pairs, RL and evaluation

    def __post_init__(self) -> None:
        if isinstance(self.shaping, dict):
            self.shaping = AnswerShaping.from_dict(self.shaping)
        if not 0 < self.weak_rm_lr_scale <= 1:
            raise ValueError(f"weak_rm_lr_scale must be in (0, 1], got {self.weak_rm_lr_scale}")


PRESETS: dict[str, PipelinePreset] = {
    "quick": PipelinePreset(),
    # One 80 GB GPU (needs the Hub or a local copy of the policy): a 0.5B policy, 10x the labels, longer RL.
    "gpu": PipelinePreset(policy="Qwen/Qwen2.5-0.5B-Instruct", reward_backbone="minilm-l6", n_pairs=2000,
                          pair_max_new_tokens=64, pair_batch_size=64, rm_epochs=2.0, rl_steps=300, learning_rate=1e-6,
                          prompts_per_step=16, num_generations=8, max_new_tokens=64, save_steps=50,
                          snapshot_steps=(10,), eval_prompts=85,
                          bon_prompts=32, bon_max_n=64, bf16=True),
    "smoke": PipelinePreset(policy="tiny-random-llama", reward_backbone="tiny-random-llama", n_pairs=24,
                            pair_max_new_tokens=8, rm_epochs=1.0, rl_steps=2, max_new_tokens=8, save_steps=1,
                            snapshot_steps=(), eval_prompts=4, bon_prompts=2, bon_max_n=4),
}


def get_preset(name: str, **overrides) -> PipelinePreset:
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in fields(PipelinePreset)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"Unknown pipeline setting(s) {unknown}; known: {sorted(known)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def reward_model_trust(accuracy) -> dict:
    """Whether RL should trust the RM: its validation accuracy's 95 % CI lies above chance (0.5)."""
    trusted = accuracy.low > 0.5
    why = (f"The reward model's validation accuracy {accuracy.value:.2f} (95 % CI {accuracy.low:.2f}-"
           f"{accuracy.high:.2f}) " + ("is above chance." if trusted else "includes chance (0.5): it may be "
                                       "ranking at random, and RL would over-optimise noise."))
    return {"trusted": trusted, "why": why}


def pair_config(preset: PipelinePreset):
    """How the pipeline samples the pairs to label."""
    from workbench.preferences import PairConfig

    return PairConfig(max_new_tokens=preset.pair_max_new_tokens, seed=preset.seed, batch_size=preset.pair_batch_size,
                      shaping=preset.shaping)


def reward_config(preset: PipelinePreset):
    from workbench.reward import RewardModelConfig

    return RewardModelConfig(backbone=preset.reward_backbone, epochs=preset.rm_epochs, seed=preset.seed,
                             oracle=preset.oracle, bf16=preset.bf16, save_checkpoints=False)


def rl_config(preset: PipelinePreset, reward_dir: str | Path, learning_rate: float):
    """Stage 3's config; `learning_rate` is the preset's, scaled down for an untrusted RM (`reward_model_trust`)."""
    from workbench.rl import RLConfig

    scale = learning_rate / preset.learning_rate  # the trust rule scales LoRA's rate alike
    return RLConfig(policy=preset.policy, reward=str(reward_dir), algo=preset.algo, steps=preset.rl_steps,
                    beta=preset.beta, learning_rate=learning_rate, lora=preset.lora,
                    lora_learning_rate=RLConfig.lora_learning_rate * scale, value_init=preset.value_init,
                    ppo_epochs=preset.ppo_epochs, prompts_per_step=preset.prompts_per_step,
                    num_generations=preset.num_generations, max_new_tokens=preset.max_new_tokens, oracle=preset.oracle,
                    seed=preset.seed, save_steps=preset.save_steps, snapshot_steps=preset.snapshot_steps,
                    bf16=preset.bf16, shaping=preset.shaping)


def trust_lr_scale(trust: dict, weak_rm_lr_scale: float = PipelinePreset.weak_rm_lr_scale) -> float:
    """The factor on RL's learning rate for an RM judged by `reward_model_trust` (the pipeline and the app)."""
    return 1.0 if trust["trusted"] else weak_rm_lr_scale


def rl_learning_rate(preset: PipelinePreset, trust: dict) -> float:
    return preset.learning_rate * trust_lr_scale(trust, preset.weak_rm_lr_scale)


def evaluate_config(preset: PipelinePreset, policy_dir: str | Path, reward_dir: str | Path, base: str | None = None):
    """The evaluation of a tuned policy; `base` defaults to the preset's policy (the RL run's reference)."""
    from workbench.evaluation.report import EvaluateConfig

    return EvaluateConfig(base=base or preset.policy, policy=str(policy_dir), reward=str(reward_dir),
                          oracle=preset.oracle, n_prompts=preset.eval_prompts, max_new_tokens=preset.max_new_tokens,
                          seed=preset.seed, bon_prompts=preset.bon_prompts, bon_max_n=preset.bon_max_n,
                          shaping=preset.shaping)


def run_pipeline(preset: PipelinePreset, out: str | Path, show_progress: bool = False) -> dict:
    """Run all stages into the run directory `out`; returns (and writes to <out>/pipeline.json) the headline."""
    from workbench.evaluation.report import evaluate_run
    from workbench.models import load_policy
    from workbench.oracles import SimulatedLabeler
    from workbench.preferences import PreferenceStore, export_preferences
    from workbench.preferences.simulate import collect_simulated_preferences
    from workbench.reward import train_reward_model
    from workbench.rl import train_policy

    run = RunDir(Path(out).resolve())
    run.save_config("pipeline", preset)
    seconds: dict[str, float] = {}
    started_all = time.perf_counter()

    started = time.perf_counter()
    import torch

    # pairs to label are sampled in bf16 where bf16 math is native: 1.5x faster on 2 CPU cores, and bf16 vs fp32
    # next-token distributions differ by KL 0.001 nats/token (measured), so they are still samples of the policy
    policy = load_policy(preset.policy, dtype="auto", device="cuda" if torch.cuda.is_available() else "cpu")
    labeler = SimulatedLabeler(preset.oracle, temperature=preset.labeler_noise, seed=preset.seed)
    with PreferenceStore(run.root / "prefs.sqlite") as store:
        if store.count_labels() < preset.n_pairs:  # a re-run reuses the labels already collected
            collect_simulated_preferences(store, policy, preset.n_pairs, labeler, pair_config(preset),
                                          model_name=preset.policy, show_progress=show_progress)
        dataset, export_report = export_preferences(store)
    del policy
    rows = dataset.to_list()
    seconds["labels"] = time.perf_counter() - started

    started = time.perf_counter()
    rm = train_reward_model(rows, reward_config(preset), out)
    seconds["reward_model"] = time.perf_counter() - started

    started = time.perf_counter()
    rl_dir = run.stage_dir("rl")
    if (rl_dir / "policy").exists():
        raise FileExistsError(f"{rl_dir} already holds a tuned policy; choose another --out for a new pipeline run")
    trust = reward_model_trust(rm.accuracy)
    learning_rate = rl_learning_rate(preset, trust)
    if not trust["trusted"]:
        print(f"[workbench] {trust['why']} RL runs at {preset.weak_rm_lr_scale:g}x its learning rate.", file=sys.stderr)
    rl = train_policy(rl_config(preset, rm.model_dir, learning_rate), out, preference_rows=rows)
    seconds["rl"] = time.perf_counter() - started

    started = time.perf_counter()
    report = evaluate_run(evaluate_config(preset, rl.policy_dir, rm.model_dir), show_progress=show_progress)
    seconds["evaluate"] = time.perf_counter() - started
    seconds["total"] = time.perf_counter() - started_all

    headline = {
        "out": str(run.root),
        "preset": asdict(preset),
        "n_labels": export_report["n_rows"],
        "rm_accuracy": rm.accuracy.value,
        "rm_gold_accuracy": rm.gold_accuracy.value if rm.gold_accuracy else None,
        "rm_trust": {**trust, "rl_learning_rate": learning_rate},
        "rl_steps": rl.global_step,
        "gold_win_rate": report["win_rate_gold"],
        "proxy_win_rate": report["win_rate_proxy"],
        "gold": report["gold"],
        "proxy": report["proxy"],
        "kl": report["kl"],
        "words": report["words"],
        "rl_vs_bon": report.get("rl_vs_bon"),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "eval_path": report["path"],
    }
    write_json_atomic(run.root / "pipeline.json", headline)
    return headline
