"""Stage 1, optional: supervised fine-tuning of the policy on extra text with TRL's SFTTrainer.

Accepted rows (TRL's formats): {"text"}, {"messages"}, {"prompt", "completion"} (plain or chat).
For prompt-completion rows the loss covers only the completion, as TRL does by default.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.callbacks import RunMetricsCallback
from workbench.data import PromptFileError, read_rows
from workbench.distributed import per_process, process_info
from workbench.models import load_policy, no_library_bars
from workbench.runs import RunDir

FORMATS = ({"text"}, {"messages"}, {"prompt", "completion"})


@dataclass
class SFTRunConfig:
    data: str  # .jsonl/.json/.csv file, or a `datasets` folder/name
    model: str = "smollm2-135m-instruct"
    max_steps: int = 50  # a few minutes on 2 CPU cores for the 135M model
    batch_size: int = 4
    learning_rate: float = 2e-5  # usual full fine-tuning rate for a small instruct model
    max_length: int = 256
    seed: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = False  # TRL 1.16 turns it on by default: ~1/3 more compute to save memory
    logging_steps: int = 5

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "max_length", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def load_sft_rows(source: str) -> list[dict]:
    """Rows in one of TRL's SFT formats, validated: the error names the row and the missing field."""
    rows = read_rows(source)
    if not rows:
        raise PromptFileError(f"{source}: no rows.")
    keys = set(rows[0])
    fmt = next((f for f in FORMATS if f <= keys), None)
    if fmt is None:
        raise PromptFileError(
            f"{source}: row 1 has columns {sorted(keys)}; SFT needs 'text', 'messages', or 'prompt' + 'completion'."
        )
    for number, row in enumerate(rows, start=1):
        for key in fmt:
            value = row.get(key)
            if not value or (isinstance(value, str) and not value.strip()):
                raise PromptFileError(f"{source}: row {number}: field {key!r} is missing or empty.")
    return [{k: row[k] for k in fmt} for row in rows]


def supervised_finetune(config: SFTRunConfig, out: str | Path) -> dict:
    """Fine-tune and save to `<out>/sft/model`; returns a summary dict."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    run = RunDir(out)
    stage_dir = run.stage_dir("sft")
    rows = load_sft_rows(config.data)
    model, tokenizer = load_policy(config.model)
    model.train()
    num_processes, is_main = process_info()  # under `accelerate launch`, only the main process writes run files
    if is_main:
        run.save_config("sft", config, n_rows=len(rows))
        run.clear_metrics("sft")
    args = SFTConfig(
        output_dir=str(stage_dir / "checkpoints"),
        max_steps=config.max_steps,
        per_device_train_batch_size=per_process(config.batch_size, num_processes, "batch_size"),  # same global batch
        learning_rate=config.learning_rate,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        bf16=config.bf16,
        gradient_checkpointing=config.gradient_checkpointing,  # TRL's default is True
        max_length=config.max_length,
        use_cpu=not torch.cuda.is_available(),
    )
    with no_library_bars():  # the training bar stays; dataset maps and model saves draw none
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, callbacks=[RunMetricsCallback(run, "sft", "sft")])
        started = time.perf_counter()
        trainer.train()
        model_dir = stage_dir / "model"
        trainer.save_model(str(model_dir))  # writes on the main process only
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    if is_main:
        tokenizer.save_pretrained(str(model_dir))
    return {"model_dir": str(model_dir), "n_rows": len(rows), "steps": trainer.state.global_step,
            "initial_loss": losses[0], "final_loss": losses[-1], "seconds": round(time.perf_counter() - started, 2)}
