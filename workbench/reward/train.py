"""Stage 2: train a reward model of one kind (kinds.py) on preference pairs.

Loss (Bradley-Terry, as in Ouyang et al. 2022 eq. 1): -log sigmoid(r(x, y_chosen) - r(x, y_rejected)).
Fine-tuned kinds train through TRL's RewardTrainer; the embedding head is fitted directly (embedding_head.py).
The input text is `reward_text(prompt, completion)` (its order is written to the manifest), the same at training
and scoring time.

Ties (rows with choice "tie") count as half a win for each side: the head fits target 0.5; RewardTrainer, which
has no soft labels, sees a tie as both orderings (-log s(d) - log s(-d) = twice the 0.5-target loss, so a tie
weighs as much as two preferences there). They are counted in the result, never dropped silently.
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
from workbench.models import load_reward_backbone, no_library_bars, resolve_bf16
from workbench.reward.kinds import FINE_TUNED, KindChoice, choose_kind
from workbench.reward.label_curve import CURVE_FILE
from workbench.reward.score import COMPLETION_FIRST, MANIFEST, RewardModel, default_text_format, reward_text
from workbench.runs import RunDir, write_json_atomic


@dataclass
class RewardModelConfig:
    kind: str = "auto"  # embedding-head | minilm-l6 | policy | ensemble | auto (by label count, kinds.py)
    backbone: str | None = None  # None: the kind's own (kinds.DEFAULT_BACKBONE); e.g. "tiny-random-llama" in tests
    epochs: float = 1.0  # fine-tuned kinds: one pass, MiniLM memorises noisy labels in three (docs/design.md)
    learning_rate: float = 1e-4  # fine-tuned kinds (docs/design.md, "Reward-model defaults")
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
    oracle: str | None = "helpful-upbeat-concise"  # gold labeler for the gold accuracy; None to skip
    resume: bool = False  # continue from the last complete checkpoint in <out>/reward/checkpoints
    head_l2: float = 1e4  # embedding head's prior precision: strong, then Platt-scaled (docs/reward_models.md, "Head L2")
    ensemble_size: int = 5  # K members of the ensemble kind
    ensemble_member: str = "embedding-head"  # kind of each member: embedding-head (shared encoder) or fine-tuned
    ranking_weight: str = "per-ranking"  # a ranking's pairs weigh 1/C(K,2) each, as InstructGPT (listwise.py)
    ranking_loss: str = "pairs"  # pairs (BT on a ranking's pairs) | plackett-luce (listwise; embedding-head kinds)

    def __post_init__(self) -> None:
        from workbench.reward.kinds import KINDS

        if self.kind not in KINDS:
            raise ValueError(f"RewardModelConfig.kind={self.kind!r}; choose one of {', '.join(KINDS)}.")
        if self.ensemble_member not in ("embedding-head", *FINE_TUNED) or self.ensemble_size < 2:
            raise ValueError(f"ensemble_member must be embedding-head, {' or '.join(FINE_TUNED)} and ensemble_size "
                             f">= 2; got {self.ensemble_member!r}, {self.ensemble_size}.")
        if self.head_l2 <= 0:
            raise ValueError(f"head_l2 must be > 0, got {self.head_l2}")
        from workbench.reward.listwise import RANKING_LOSSES, RANKING_WEIGHTS

        if self.ranking_weight not in RANKING_WEIGHTS or self.ranking_loss not in RANKING_LOSSES:
            raise ValueError(f"ranking_weight must be one of {RANKING_WEIGHTS} and ranking_loss one of "
                             f"{RANKING_LOSSES}; got {self.ranking_weight!r}, {self.ranking_loss!r}.")
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
    kind: str = "minilm-l6"  # the kind trained (never "auto")
    kind_reason: str = ""  # why that kind (auto's rule, or "asked for")
    n_ties: int = 0  # tie rows among the pairs given (trained as half a win each side; not evaluated)

    def summary(self) -> dict:
        return {"model_dir": str(self.model_dir), "kind": self.kind, "kind_reason": self.kind_reason,
                "n_pairs": self.n_pairs, "n_ties": self.n_ties, "n_train": self.n_train,
                "n_val": self.n_val, "n_dropped_too_long": self.n_dropped_too_long,
                "accuracy": self.accuracy.value, "accuracy_ci": [self.accuracy.low, self.accuracy.high],
                "n_evaluated": self.accuracy.n,  # the A/B pairs both accuracies are measured on (ties are not)
                "gold_accuracy": self.gold_accuracy.value if self.gold_accuracy else None,
                "gold_accuracy_ci": [self.gold_accuracy.low, self.gold_accuracy.high] if self.gold_accuracy else None,
                "seconds": round(self.seconds, 2)}


def is_validation(row: dict, val_fraction: float) -> bool:
    """By a hash of the pair's texts; for pairs of a ranking, of the ranking (all its pairs in one split)."""
    ranked = row.get("ranking_id") is not None
    key = json.dumps([row["prompt"], row["ranking_id"]] if ranked else [row["prompt"], row["chosen"], row["rejected"]],
                     sort_keys=True).encode()
    return int(hashlib.sha256(key).hexdigest(), 16) % 10_000 < val_fraction * 10_000


def is_tie(row: dict) -> bool:
    return row.get("choice") == "tie"


def train_reward_model(rows: list[dict], config: RewardModelConfig, out: str | Path) -> RewardTrainResult:
    """Train on rows {prompt, chosen, rejected[, choice]}; writes <out>/reward/{config.json, model/, eval.json}
    (and checkpoints/ for fine-tuned kinds). A row with choice "tie" is a tie between its two sides."""
    from transformers import set_seed

    if not rows:
        raise ValueError("No preference pairs to train on: label some pairs first (A/B choices).")
    run = RunDir(out)
    stage_dir = run.stage_dir("reward")
    choice = choose_kind(config.kind, config.backbone, len(rows))
    head = choice.kind == "embedding-head" or (choice.kind == "ensemble" and config.ensemble_member == "embedding-head")
    if config.ranking_loss == "plackett-luce" and not head:  # RewardTrainer's loss is pairwise (see listwise.py)
        raise ValueError(f"ranking_loss='plackett-luce' is implemented for the embedding-head kinds, not {choice.kind!r}; "
                         "use kind='embedding-head' (or ensemble of heads), or ranking_loss='pairs'.")
    set_seed(config.seed)  # a new score head is drawn after this, before the Trainer seeds its own run
    train_rows = [r for r in rows if not is_validation(r, config.val_fraction)]
    val_rows = [r for r in rows if is_validation(r, config.val_fraction)]
    if not train_rows:
        raise ValueError(f"All {len(rows)} pairs fell into the validation split; label more pairs.")
    num_processes, is_main = process_info()  # under `accelerate launch`, only the main process writes run files
    model_dir = stage_dir / "model"
    started = time.perf_counter()
    with no_library_bars():  # the training bar stays; model saves and dataset maps draw none
        if head:
            model, tokenizer, n_dropped, extra, curve = _fit_embedding_head(train_rows, config, choice)
            text_format = COMPLETION_FIRST
            if is_main:
                run.save_config("reward", config, kind=choice.kind, n_pairs=len(rows), n_train=len(train_rows),
                                n_val=len(val_rows), n_dropped_too_long=n_dropped)
                run.clear_metrics("reward")
                write_json_atomic(stage_dir / CURVE_FILE, curve)
                model.save(model_dir, tokenizer)
        elif choice.kind == "ensemble":
            model, tokenizer, n_dropped, extra = _train_ensemble(train_rows, config, model_dir)
            text_format = default_text_format(tokenizer)
            if is_main:
                run.save_config("reward", config, kind=choice.kind, n_pairs=len(rows), n_train=len(train_rows),
                                n_val=len(val_rows), n_dropped_too_long=n_dropped)
                tokenizer.save_pretrained(str(model_dir))
        else:
            model, tokenizer, n_dropped = _fine_tune(run, train_rows, config, choice, len(rows), len(val_rows),
                                                     num_processes, is_main)
            text_format, extra = default_text_format(tokenizer), {}
            if is_main:
                tokenizer.save_pretrained(str(model_dir))
    seconds = time.perf_counter() - started
    if is_main and not head:  # the curve of an earlier head would describe another model
        (stage_dir / CURVE_FILE).unlink(missing_ok=True)

    scorer = RewardModel(model, tokenizer, max_length=config.max_length, bf16=False, text_format=text_format)
    evaluated = [r for r in (val_rows or train_rows) if not is_tie(r)]  # with val_fraction=0: training accuracy
    diagnostics = diagnose_reward_model(scorer, evaluated or train_rows, config.oracle, config.seed)
    # Score statistics over the labelled completions (samples of the policy that made the pairs): stage 3
    # normalises rewards with them so that beta means the same thing for every reward model.
    scores = torch.tensor(diagnostics["scores"])
    accuracy = Estimate(**diagnostics["accuracy"])
    gold = Estimate(**diagnostics["gold_accuracy"]) if config.oracle else None
    result = RewardTrainResult(model_dir, len(rows), len(train_rows), len(val_rows), n_dropped, accuracy, gold,
                               seconds, choice.kind, choice.reason, sum(map(is_tie, rows)))
    if not is_main:
        return result
    write_json_atomic(model_dir / MANIFEST, {"kind": choice.kind, "kind_reason": choice.reason,
                                             "backbone": choice.backbone, "max_length": config.max_length,
                                             "text_format": text_format, "n_ties": result.n_ties, **extra,
                                             "score_stats": {"mean": float(scores.mean()),
                                                             "std": float(scores.std()) if len(scores) > 1 else 1.0,
                                                             "n": len(scores)}})
    write_json_atomic(stage_dir / "eval.json", {**result.summary(), "evaluated_on": "val" if val_rows else "train",
                                               "ece": diagnostics["ece"],
                                               "length_correlation": diagnostics["length_correlation"]})
    return result


def _fit_embedding_head(train_rows: list[dict], config: RewardModelConfig, choice: KindChoice):
    """Embed every distinct text once, then fit the head(s) exactly (embedding_head.fit_heads)."""
    from workbench.generation import prompt_text
    from workbench.reward.embedding_head import EmbeddingHeadRewardModel, fit_heads, head_manifest, text_features
    from workbench.reward.label_curve import label_curve
    from workbench.reward.listwise import ranking_weights

    encoder, tokenizer = load_reward_encoder(choice.backbone)
    n_heads = config.ensemble_size if choice.kind == "ensemble" else 1
    model = EmbeddingHeadRewardModel(encoder, tokenizer, n_heads)
    prompts = [r["prompt"] for r in train_rows]
    chosen = text_features(model, tokenizer, prompts, [completion_text(r["chosen"]) for r in train_rows],
                           config.max_length)
    rejected = text_features(model, tokenizer, prompts, [completion_text(r["rejected"]) for r in train_rows],
                             config.max_length)
    targets = torch.tensor([0.5 if is_tie(r) else 1.0 for r in train_rows])
    weights = ranking_weights(train_rows, config.ranking_weight)
    if config.ranking_loss == "plackett-luce":  # listwise: each ranking one likelihood term (listwise.py)
        from workbench.reward.listwise import fit_heads_plackett_luce

        fit_heads_plackett_luce(model, chosen, rejected, train_rows, config.head_l2, config.seed)
    else:  # a ranking's pairs share its weight (listwise.ranking_weights); plain pairs weigh 1
        fit_heads(model, chosen, rejected, targets, config.head_l2, config.seed, weights=weights)
    extra = {"head": head_manifest(model, config.head_l2)}
    if choice.kind == "ensemble":
        extra["ensemble_member"], extra["ensemble_size"] = "embedding-head", n_heads
    gold = None
    if config.oracle:
        from workbench.oracles import gold_scores

        texts = [completion_text(r[side]) for side in ("chosen", "rejected") for r in train_rows]
        gold = torch.tensor(gold_scores(config.oracle, [prompt_text(p) for p in prompts] * 2, texts))
    curve = label_curve(chosen, rejected, targets, config.head_l2, seed=config.seed, weights=weights,
                        gold_chosen=None if gold is None else gold[: len(train_rows)],
                        gold_rejected=None if gold is None else gold[len(train_rows) :])
    return model, tokenizer, 0, extra, curve  # nothing is dropped: texts are truncated (the prompt first)


def load_reward_encoder(name_or_path: str):
    """The frozen sentence encoder (no classification head) and its tokenizer, for the embedding head."""
    from transformers import AutoModel

    from workbench.models import load_tokenizer, no_library_bars, resolve_model

    tokenizer = load_tokenizer(name_or_path)
    with no_library_bars():
        encoder = AutoModel.from_pretrained(resolve_model(name_or_path).path, trust_remote_code=False)
    return encoder.eval(), tokenizer


def _train_ensemble(train_rows: list[dict], config: RewardModelConfig, model_dir: Path):
    """K fine-tuned members, seed + k on bootstrap resample k, each a complete reward model under model_dir."""
    from dataclasses import replace

    from workbench.reward.ensemble import EnsembleRewardModel, bootstrap, member_dir

    members, n_dropped = [], 0
    for k in range(config.ensemble_size):
        member_config = replace(config, kind=config.ensemble_member, seed=config.seed + k, val_fraction=0.0,
                                save_checkpoints=False, resume=False)
        result = train_reward_model(bootstrap(train_rows, config.seed + k), member_config, model_dir / member_dir(k))
        members.append(RewardModel.load(result.model_dir, bf16=False))
        n_dropped = max(n_dropped, result.n_dropped_too_long)
    paths = [str(Path(member_dir(k)) / "reward" / "model") for k in range(config.ensemble_size)]
    extra = {"ensemble_member": config.ensemble_member, "ensemble_size": config.ensemble_size, "members": paths}
    return EnsembleRewardModel([m.model for m in members]), members[0].tokenizer, n_dropped, extra


def _fine_tune(run: RunDir, train_rows: list[dict], config: RewardModelConfig, choice: KindChoice, n_rows: int,
               n_val: int, num_processes: int, is_main: bool):
    """TRL's RewardTrainer on the backbone as a sequence classifier; returns (model, tokenizer, n_dropped)."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    stage_dir = run.stage_dir("reward")
    model, tokenizer = load_reward_backbone(choice.backbone)
    text_format = default_text_format(tokenizer)
    # a tie is both orderings: half a win for each side (RewardTrainer has no soft labels)
    pairs = [(r["prompt"], r["chosen"], r["rejected"]) for r in train_rows]
    pairs += [(r["prompt"], r["rejected"], r["chosen"]) for r in train_rows if is_tie(r)]
    train_texts = {side: [reward_text(tokenizer, p[0], completion_text(p[i]), text_format) for p in pairs]
                   for i, side in ((1, "chosen"), (2, "rejected"))}
    # RewardTrainer silently drops pairs longer than max_length: count them here (+1 for the appended EOS)
    lengths = [max(len(tokenizer(c)["input_ids"]), len(tokenizer(r)["input_ids"])) + 1
               for c, r in zip(train_texts["chosen"], train_texts["rejected"])]
    n_dropped = sum(length > config.max_length for length in lengths)
    if is_main:
        run.save_config("reward", config, kind=choice.kind, n_pairs=n_rows, n_train=len(train_rows), n_val=n_val,
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
    trainer.train(resume_from_checkpoint=bool(config.resume and checkpoints))
    trainer.save_model(str(stage_dir / "model"))  # writes on the main process only
    return trainer.model, tokenizer, n_dropped
