"""Stage 1, from scratch: pretrain a tiny causal LM on plain text, to see what pretraining does.

The model is a randomly initialised Llama; by default a small BPE vocabulary (SmolLM2's algorithm and special
tokens) is learnt from the corpus first. TRL's SFTTrainer does the
language modelling (next-token cross-entropy on packed blocks of text). Samples are taken before
and after training from the same prompts and seed so the change is visible.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench.callbacks import RunMetricsCallback
from workbench.data import builtin_corpus_path, load_texts
from workbench.generation import SamplingConfig, generate
from workbench.models import load_tokenizer, no_library_bars
from workbench.runs import RunDir, write_json_atomic

# Model sizes (the embedding is tied with the output layer).
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
    "small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4),
}


@dataclass
class PretrainConfig:
    text: str = "builtin"  # .txt/.jsonl/.csv file, a `datasets` folder or name, or "builtin" (the bundled stories)
    text_column: str = "text"  # column holding the text in tabular sources
    preset: str = "tiny"  # "tiny" (~1.2 M parameters with the ~2k vocabulary) or "small" (~5 M)
    tokenizer: str = "train"  # "train": a new small BPE vocabulary learnt from the corpus; or a model name/path
    vocab_size: int = 2048  # upper bound for tokenizer="train" (~2k on the built-in corpus); 49k would dominate compute
    max_steps: int = 200  # loss falls from ln(vocab) ~ 7.6 towards ~2
    seq_len: int = 128  # tokens per packed block
    batch_size: int = 16  # blocks per optimiser step
    learning_rate: float = 3e-3  # high, as is usual for very small transformers
    warmup_steps: int = 20
    weight_decay: float = 0.1
    seed: int = 0
    bf16: bool = False  # bf16 autocast; fine on CPUs with native bf16, off by default for exact reproducibility
    sample_prompts: list[str] = field(default_factory=lambda: ["Once upon a time", "The little dog", "It was a rainy day"])
    sample_tokens: int = 40
    logging_steps: int = 10

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        for name in ("max_steps", "seq_len", "batch_size", "sample_tokens", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class PretrainResult:
    model_dir: Path
    n_parameters: int
    n_texts: int
    initial_loss: float
    final_loss: float
    seconds: float
    samples_before: list[str]
    samples_after: list[str]

    def summary(self) -> dict:
        return {"model_dir": str(self.model_dir), "n_parameters": self.n_parameters, "n_texts": self.n_texts,
                "initial_loss": self.initial_loss, "final_loss": self.final_loss, "seconds": round(self.seconds, 2)}


def build_model(preset: str, tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **PRESETS[preset],
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _samples(model, tokenizer, config: PretrainConfig) -> list[str]:
    sampling = SamplingConfig(max_new_tokens=config.sample_tokens, temperature=0.8, top_p=0.95, seed=config.seed,
                              use_chat_template=False)
    model.eval()
    completions = generate(model, tokenizer, list(config.sample_prompts), sampling)
    return [f"{p} {c.text}" for p, c in zip(config.sample_prompts, completions)]


def pretrain(config: PretrainConfig, out: str | Path) -> PretrainResult:
    """Train from scratch; writes `<out>/pretrain/{config.json,model/,samples.json}` and metrics."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    run = RunDir(out)
    stage_dir = run.stage_dir("pretrain")
    source = builtin_corpus_path() if config.text == "builtin" else config.text
    texts = load_texts(source, column=config.text_column)
    tokenizer = load_tokenizer("smollm2-135m-instruct" if config.tokenizer == "train" else config.tokenizer)
    if config.tokenizer == "train":  # same BPE algorithm and special tokens as SmolLM2, merges learnt on this text
        tokenizer = tokenizer.train_new_from_iterator(texts, vocab_size=config.vocab_size)
    model = build_model(config.preset, tokenizer, config.seed)
    run.save_config("pretrain", config, n_parameters=model.num_parameters(), n_texts=len(texts))
    run.clear_metrics("pretrain")  # a fresh run: the loss curve must not mix with an earlier one

    samples_before = _samples(model, tokenizer, config)
    args = SFTConfig(
        output_dir=str(stage_dir / "checkpoints"),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        bf16=config.bf16,
        gradient_checkpointing=False,  # TRL's default is True; a tiny model needs no activation recompute
        max_length=config.seq_len,
        packing=True,
        packing_strategy="wrapped",  # classic pretraining: concatenate everything, cut into equal blocks
        dataset_text_field="text",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    with no_library_bars():  # the training bar stays; dataset maps and model saves draw none
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}), processing_class=tokenizer,
            callbacks=[RunMetricsCallback(run, "pretrain", "pretrain")],
        )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        model_dir = stage_dir / "model"
        trainer.save_model(str(model_dir))
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    tokenizer.save_pretrained(str(model_dir))
    samples_after = _samples(trainer.model, tokenizer, config)
    result = PretrainResult(
        model_dir=model_dir, n_parameters=model.num_parameters(), n_texts=len(texts),
        initial_loss=losses[0] if losses else math.nan, final_loss=losses[-1] if losses else math.nan,
        seconds=seconds, samples_before=samples_before, samples_after=samples_after,
    )
    write_json_atomic(stage_dir / "samples.json", {"before": samples_before, "after": samples_after, **result.summary()})
    return result
