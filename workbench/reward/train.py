"""Stage 2: train a reward model on preference pairs with TRL's RewardTrainer.

Loss (Bradley-Terry, as in Ouyang et al. 2022 eq. 1): -log sigmoid(r(x, y_chosen) - r(x, y_rejected)).
The input text is `reward_text(prompt, completion)` (its order is written to the manifest), the same at training
and scoring time.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.callbacks import RunMetricsCallback
from workbench.distributed import per_process, process_info
from workbench.evaluation.metrics import Estimate
from workbench.evaluation.reward_diagnostics import diagnose_reward_model
from workbench.generation import completion_text
from workbench.models import load_reward_backbone, resolve_bf16
from workbench.reward.score import MANIFEST, RewardModel, default_text_format, reward_text
from workbench.runs import RunDir, write_json_atomic


@dataclass
class RewardModelConfig:
    backbone: str = "minilm-l6"  # or the policy's architecture, e.g. "smollm2-135m-instruct"
    epochs: float = 1.0  # one pass: MiniLM memorises 400 noisy pairs in 3 (training accuracy up to 1.00)
    learning_rate: float = 1e-4  # measured on 400 pairs, 3 seeds: gold 0.67-0.69 (3 epochs at 3e-4: 0.61-0.70)
    batch_size: int = 16  # pairs per step
    max_length: int = 256  # tokens of prompt + completion; longer pairs are dropped and counted
    val_fraction: float = 0.2  # held-out share, chosen by a hash of the pair's texts (stable across runs)
    seed: int = 0
    bf16: bool | None = None  # bf16 autocast; None = on where bf16 math is native (`models.resolve_bf16`)
    gradient_checkpointing: bool = False  # TRL 1.16 turns it on by default: ~1/3 more compute to save memory
    center_rewards_coefficient: float | None = 0.01  # keeps scores near 0 (Eisenstein et al. 2023)
    save_steps: int = 50  # checkpoint every N steps (safetensors + optimizer state), for resume
    save_checkpoints: bool = True  # False: only the final model (learning curves, quick experiments)
    logging_steps: int = 5
    oracle: str | None = "upbeat-concise"  # gold labeler for the gold accuracy; None to skip
    resume: bool = False  # continue from the last complete checkpoint in <out>/reward/checkpoints

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.epochs <= 0 or self.batch_size < 1 or self.max_length < 8:
            raise ValueError("epochs must be > 0, batch_size >= 1 and max_length >= 8")


@dataclass
class RewardTrainResult:
    model_dir: Path
    n_pairs: int  # pairs given
    n_train: int
    n_val: int
    n_dropped_too_long: int
    accuracy: Estimate  # on the validation pairs, against the labels (ties 0.5)
    gold_accuracy: Estimate | None  # on the validation pairs, against the gold reward's preference
    seconds: float

    def summary(self) -> dict:
        return {"model_dir": str(self.model_dir), "n_pairs": self.n_pairs, "n_train": self.n_train,
                "n_val": self.n_val, "n_dropped_too_long": self.n_dropped_too_long,
                "accuracy": self.accuracy.value, "accuracy_ci": [self.accuracy.low, self.accuracy.high],
                "gold_accuracy": self.gold_accuracy.value if self.gold_accuracy else None,
                "gold_accuracy_ci": [self.gold_accuracy.low, self.gold_accuracy.high] if self.gold_accuracy else None,
                "seconds": round(self.seconds, 2)}


def is_validation(row: dict, val_fraction: float) -> bool:
    key = json.dumps([row["prompt"], row["chosen"], row["rejected"]], sort_keys=True).encode()
    return int(hashlib.sha256(key).hexdigest(), 16) % 10_000 < val_fraction * 10_000


def train_reward_model(rows: list[dict], config: RewardModelConfig, out: str | Path) -> RewardTrainResult:
    """Train on rows {prompt, chosen, rejected}; writes <out>/reward/{config.json, model/, checkpoints/, eval.json}."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    if not rows:
        raise ValueError("No preference pairs to train on: label some pairs first (A/B choices).")
    run = RunDir(out)
    stage_dir = run.stage_dir("reward")
    set_seed(config.seed)  # the new score head is drawn here, before the Trainer seeds its own run
    model, tokenizer = load_reward_backbone(config.backbone)
    train_rows = [r for r in rows if not is_validation(r, config.val_fraction)]
    val_rows = [r for r in rows if is_validation(r, config.val_fraction)]
    if not train_rows:
        raise ValueError(f"All {len(rows)} pairs fell into the validation split; label more pairs.")

    text_format = default_text_format(tokenizer)

    def as_texts(subset: list[dict]) -> dict[str, list[str]]:
        return {side: [reward_text(tokenizer, r["prompt"], completion_text(r[side]), text_format) for r in subset]
                for side in ("chosen", "rejected")}

    train_texts = as_texts(train_rows)
    # RewardTrainer silently drops pairs longer than max_length: count them here (+1 for the appended EOS)
    lengths = [max(len(tokenizer(c)["input_ids"]), len(tokenizer(r)["input_ids"])) + 1
               for c, r in zip(train_texts["chosen"], train_texts["rejected"])]
    n_dropped = sum(length > config.max_length for length in lengths)
    num_processes, is_main = process_info()  # under `accelerate launch`, only the main process writes run files
    if is_main:
        run.save_config("reward", config, n_pairs=len(rows), n_train=len(train_rows), n_val=len(val_rows),
                        n_dropped_too_long=n_dropped)

    args = RewardConfig(
        output_dir=str(stage_dir / "checkpoints"),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=per_process(config.batch_size, num_processes, "batch_size"),  # same global batch
        learning_rate=config.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0.1,  # a float below 1 is a fraction of the total steps
        max_length=config.max_length,
        center_rewards_coefficient=config.center_rewards_coefficient,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if config.save_checkpoints else "no",
        save_steps=config.save_steps,
        save_total_limit=2,
        save_only_model=False,  # optimizer + RNG state too, so a resumed run continues exactly
        report_to="none",
        seed=config.seed,
        bf16=resolve_bf16(config.bf16),
        gradient_checkpointing=config.gradient_checkpointing,  # TRL's default is True
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_dict(train_texts),
                            processing_class=tokenizer, callbacks=[RunMetricsCallback(run, "reward", "rm")])
    checkpoints = sorted((stage_dir / "checkpoints").glob("checkpoint-*"))
    if not (config.resume and checkpoints) and is_main:
        run.clear_metrics("reward")  # a fresh run; a resumed one continues its metrics
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=bool(config.resume and checkpoints))
    seconds = time.perf_counter() - started

    model_dir = stage_dir / "model"
    trainer.save_model(str(model_dir))  # writes on the main process only
    if is_main:
        tokenizer.save_pretrained(str(model_dir))
    scorer = RewardModel(trainer.model, tokenizer, max_length=config.max_length, bf16=False, text_format=text_format)
    evaluated = val_rows or train_rows  # with val_fraction=0 the numbers are training accuracy
    diagnostics = diagnose_reward_model(scorer, evaluated, config.oracle, config.seed)
    # Score statistics over the labelled completions (samples of the policy that made the pairs): stage 3
    # normalises rewards with them so that beta means the same thing for every reward model.
    scores = torch.tensor(diagnostics["scores"])
    accuracy = Estimate(**diagnostics["accuracy"])
    gold = Estimate(**diagnostics["gold_accuracy"]) if config.oracle else None
    result = RewardTrainResult(model_dir, len(rows), len(train_rows), len(val_rows), n_dropped, accuracy, gold, seconds)
    if not is_main:
        return result
    write_json_atomic(model_dir / MANIFEST, {"backbone": config.backbone, "max_length": config.max_length,
                                             "text_format": text_format,
                                             "score_stats": {"mean": float(scores.mean()),
                                                             "std": float(scores.std()) if len(scores) > 1 else 1.0,
                                                             "n": len(scores)}})
    write_json_atomic(stage_dir / "eval.json", {**result.summary(), "evaluated_on": "val" if val_rows else "train",
                                               "ece": diagnostics["ece"],
                                               "length_correlation": diagnostics["length_correlation"]})
    return result
