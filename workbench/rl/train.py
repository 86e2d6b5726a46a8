"""Stage 3: optimise the policy against the reward model with a KL penalty, using TRL's trainers.

  rloo  RLOOTrainer (Ahmadian et al. 2024): reward r = r_RM(x, y) - beta * sum_t log(pi/pi_ref), advantage =
        r minus the mean reward of the other completions of the same prompt (leave-one-out baseline).
  grpo  GRPOTrainer (Shao et al. 2024): group-normalised advantages, beta * KL added to the loss.
  ppo   `workbench.rl.ppo.PPOTrainer` (Schulman et al. 2017, Ziegler et al. 2019): a value model, GAE advantages,
        the clipped surrogate; the workbench's own (TRL 1.16 has no PPO), same run files as the others.
  dpo   DPOTrainer (Rafailov et al. 2023): no sampling and no reward model, straight from preference pairs.

Writes <out>/rl/{config.json, checkpoints/, samples.jsonl, policy/} and rl rows in <out>/metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import StoppingCriteriaList, TrainerCallback

from workbench.callbacks import RunMetricsCallback
from workbench.data import PromptRecord, builtin_prompts
from workbench.distributed import per_process, process_info
from workbench.generation import SentenceStop, completion_text, sentence_stopping_criterion, with_system_prompt
from workbench.models import load_tokenizer, no_library_bars, resolve_bf16, resolve_model
from workbench.rl.config import RLConfig
from workbench.rl.rewards import GoldRewardLogger, eos_penalty, load_reward_classifier
from workbench.runs import RunDir, write_json_atomic

POLICY_MANIFEST = "workbench_policy.json"


@dataclass
class RLResult:
    policy_dir: Path
    global_step: int
    seconds: float
    resumed_from: int | None  # the checkpoint step a resumed run started from

    def summary(self) -> dict:
        return {"policy_dir": str(self.policy_dir), "global_step": self.global_step,
                "seconds": round(self.seconds, 2), "resumed_from": self.resumed_from}


def as_messages(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


class PolicySnapshots(TrainerCallback):
    """After each of `steps`, the policy's weights (or LoRA adapter) go to <folder>/step-N: a cheap point for the
    over-optimisation plot, without the optimiser state a resumable checkpoint carries. Written to a temporary
    folder and renamed, so a reader never sees half a snapshot."""

    def __init__(self, trainer, steps, folder: Path):
        self.trainer, self.steps, self.folder = trainer, set(steps), Path(folder)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step not in self.steps:
            return
        target = self.folder / f"step-{state.global_step}"
        partial = self.folder / f".step-{state.global_step}.partial"
        self.trainer.save_model(str(partial))  # gathers sharded weights; writes on the main process
        if state.is_world_process_zero:
            shutil.rmtree(target, ignore_errors=True)  # a resumed run redoes the steps after its checkpoint
            os.replace(partial, target)


def snapshot_dirs(stage_dir: Path) -> list[Path]:
    """The complete policy snapshots of an RL run, by step."""
    found = [p for p in (Path(stage_dir) / "snapshots").glob("step-*") if re.fullmatch(r"step-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def complete_checkpoints(folder: Path) -> list[Path]:
    """The checkpoint-N folders whose save finished (trainer_state.json is written last), by step."""
    done = [p for p in Path(folder).glob("checkpoint-*")
            if re.fullmatch(r"checkpoint-\d+", p.name) and (p / "trainer_state.json").exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint-N."""
    done = complete_checkpoints(folder)
    return done[-1] if done else None


def _truncate_samples(path: Path, after_step: int) -> None:
    """A resumed run redoes the steps after its checkpoint: drop their samples so each step appears once."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= after_step:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError):  # a line cut by a crash
            continue
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".samples.")
    with os.fdopen(fd, "w") as handle:
        handle.writelines(kept)
    os.replace(tmp, path)


def _common_args(config: RLConfig, output_dir: Path) -> dict:
    bf16 = resolve_bf16(config.bf16)
    return dict(
        output_dir=str(output_dir),
        max_steps=config.steps,
        learning_rate=config.lora_learning_rate if config.lora else config.learning_rate,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        save_only_model=False,  # optimizer and RNG state too: a resumed run continues exactly
        report_to="none",
        seed=config.seed,
        bf16=bf16,
        gradient_checkpointing=config.gradient_checkpointing,  # TRL's default is True
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        # fp32 master weights on every device; bf16 autocast does the math. In bf16 weights an Adam step of ~lr
        # rounds away: at lr 1e-6 (the gpu preset) it can move 0.4 % of SmolLM2-135M's weights, at 5e-5 8 %
        model_init_kwargs={"dtype": "float32"},
    )


class ShapedGeneration:
    """Mixin for TRL's online trainers: sample completions under the trainer's autocast, shaped like every other
    stage's answers (`generation.AnswerShaping`).

    Autocast: TRL 1.16 scores completions (old and reference log-probs, the loss) under `accelerator.autocast()` but
    calls `generate` outside it, so with bf16=True the sampler ran in fp32 while everything after it ran in bf16.
    Sampling under the same autocast is 1.6x faster on a bf16 CPU and samples from the distribution the log-probs
    are then computed for.
    Shaping: each row stops at its first sentence end (a stopping criterion handed to `generate`), and the returned
    ids are cut there. TRL builds the completion mask from the returned lengths, so the log-probs, the KL and the
    loss cover exactly the tokens the policy sampled: nothing after the stop, no padding, no added EOS."""

    answer_stop: SentenceStop | None = None  # set by `_online_trainer`

    def _generate_single_turn(self, *args, **kwargs):
        stop = self.answer_stop if self.answer_stop is not None and self.answer_stop.active else None
        model = self.accelerator.unwrap_model(self.model_wrapped)
        with self.accelerator.autocast(), _sentence_stopping(model, stop):  # autocast is a no-op without bf16
            result = super()._generate_single_turn(*args, **kwargs)
        if stop is None:
            return result
        # RLOO returns the completion ids; GRPO (ids, sampler log-probs or None)
        ids, logprobs = (result, None) if not isinstance(result, tuple) else result
        kept = [stop.cut(row)[0] for row in ids]
        if logprobs is not None:
            logprobs = [row[: len(k)] for row, k in zip(logprobs, kept)]
        return kept if not isinstance(result, tuple) else (kept, logprobs)


@contextlib.contextmanager
def _sentence_stopping(model, stop: SentenceStop | None):
    """While inside, `model.generate` also stops each row at its sentence end (TRL passes no stopping criteria)."""
    if stop is None:
        yield
        return
    original = model.generate

    def generate(*args, **kwargs):
        width = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else args[0].shape[1]
        criteria = StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
        criteria.append(sentence_stopping_criterion(stop, width))
        return original(*args, stopping_criteria=criteria, **kwargs)

    own = vars(model).get("generate")  # an instance attribute already shadowing the method (kept afterwards)
    model.generate = generate  # an instance attribute shadows the method for this call only
    try:
        yield
    finally:
        if own is not None:
            model.generate = own
        else:
            del model.generate


def with_shaped_generation(trainer_cls: type) -> type:
    return type(trainer_cls.__name__, (ShapedGeneration, trainer_cls), {"__doc__": trainer_cls.__doc__})


def _peft_config(config: RLConfig):
    if not config.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=2 * config.lora_r, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")


def _online_trainer(config: RLConfig, policy_path: str, tokenizer, prompts: list[PromptRecord], run: RunDir):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    stage_dir = run.stage_dir("rl")
    rm_model, rm_tokenizer = load_reward_classifier(config.reward, normalize=config.normalize_rewards)
    eos_ids = sorted({tokenizer.eos_token_id} - {None})
    stop = SentenceStop(tokenizer, eos_ids, config.shaping)
    reward_funcs, weights, processors = [rm_model], [1.0], [rm_tokenizer]
    if config.eos_penalty > 0:
        reward_funcs.append(eos_penalty(config.eos_penalty, eos_ids, stop))
        weights.append(1.0)
        processors.append(None)
    if config.oracle:
        reward_funcs.append(GoldRewardLogger(config.oracle, stage_dir / "samples.jsonl", eos_ids, stop))
        weights.append(0.0)  # logged, never optimised: the gold stays an honest judge
        processors.append(None)
    sampling = dict(
        # completions per optimiser step, over all processes (TRL groups them across processes for the baseline)
        per_device_train_batch_size=per_process(config.prompts_per_step * config.num_generations, process_info()[0],
                                                "prompts_per_step * num_generations"),
        num_generations=config.num_generations,
        max_completion_length=config.max_new_tokens,
        temperature=config.temperature,
        top_p=1.0, top_k=0,  # plain tempered sampling, so log(pi/pi_ref) is exact for the sampled tokens
        beta=config.beta,
        reward_weights=weights,
        log_completions=False,
    )
    system_prompt = config.shaping.active_system_prompt  # pi and pi_ref both see it: the KL stays exact
    dataset = Dataset.from_dict({"prompt": [with_system_prompt(r.prompt, system_prompt) for r in prompts]})
    if config.algo == "rloo":
        args = RLOOConfig(**_common_args(config, stage_dir / "checkpoints"), **sampling)
        trainer_cls = with_shaped_generation(RLOOTrainer)
    else:
        args = GRPOConfig(**_common_args(config, stage_dir / "checkpoints"), **sampling)
        trainer_cls = with_shaped_generation(GRPOTrainer)
    trainer = trainer_cls(model=policy_path, reward_funcs=reward_funcs, args=args, train_dataset=dataset,
                          processing_class=tokenizer, reward_processing_classes=processors,
                          peft_config=_peft_config(config), callbacks=[RunMetricsCallback(run, "rl", config.algo)])
    trainer.answer_stop = stop
    return trainer


def dpo_rows(preference_rows: list[dict], system_prompt: str | None = None) -> list[dict]:
    """Preference rows as conversations, so DPO sees the prompts through the chat template (and the shaping's system
    prompt), as generation does."""
    return [{"prompt": with_system_prompt(r["prompt"], system_prompt),
             "chosen": [{"role": "assistant", "content": completion_text(r["chosen"])}],
             "rejected": [{"role": "assistant", "content": completion_text(r["rejected"])}]}
            for r in preference_rows]


def _dpo_trainer(config: RLConfig, policy_path: str, tokenizer, preference_rows: list[dict], run: RunDir):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if not preference_rows:
        raise ValueError("algo='dpo' trains on preference pairs: pass a preference store or an exported dataset "
                         "with at least one A/B label (e.g. --prefs runs/NAME/preferences.sqlite).")
    args = DPOConfig(**_common_args(config, run.stage_dir("rl") / "checkpoints"), beta=config.beta,
                     per_device_train_batch_size=per_process(max(config.prompts_per_step * config.num_generations // 2, 1),
                                                             process_info()[0], "DPO pairs per step"),
                     max_length=config.max_length)
    return DPOTrainer(model=policy_path, args=args, train_dataset=Dataset.from_list(dpo_rows(preference_rows, config.shaping.active_system_prompt)),
                      processing_class=tokenizer, peft_config=_peft_config(config),
                      callbacks=[RunMetricsCallback(run, "rl", config.algo)])


def build_trainer(config: RLConfig, run: RunDir, prompts: list[PromptRecord] | None = None,
                  preference_rows: list[dict] | None = None, reward_fn=None):
    """The configured trainer (not yet trained): RLOOTrainer, GRPOTrainer, DPOTrainer, or the workbench's PPOTrainer.
    `reward_fn(prompts, completions) -> scores` replaces the reward model's score (ppo only; for tests)."""
    if reward_fn is not None and config.algo != "ppo":
        raise ValueError("reward_fn is supported by algo='ppo' only")
    if config.algo == "ppo":
        from workbench.rl.ppo import PPOTrainer

        return PPOTrainer(config, run, prompts or builtin_prompts("train"), reward_fn=reward_fn)
    policy_path = resolve_model(config.policy).path
    tokenizer = load_tokenizer(config.policy)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.algo == "dpo":
        return _dpo_trainer(config, policy_path, tokenizer, preference_rows or [], run)
    return _online_trainer(config, policy_path, tokenizer, prompts or builtin_prompts("train"), run)


def train_policy(config: RLConfig, out: str | Path, prompts: list[PromptRecord] | None = None,
                 preference_rows: list[dict] | None = None, reward_fn=None) -> RLResult:
    """Run stage 3 and save the tuned policy (LoRA adapters merged) to <out>/rl/policy."""
    run = RunDir(out)
    stage_dir = run.stage_dir("rl")
    checkpoints = stage_dir / "checkpoints"
    resume_from = last_checkpoint(checkpoints) if config.resume else None
    if config.resume and resume_from is None and checkpoints.exists() and any(checkpoints.iterdir()):
        raise FileNotFoundError(f"--resume: no complete checkpoint in {checkpoints} (an interrupted save is ignored)")
    if not config.resume and last_checkpoint(checkpoints) is not None:
        raise FileExistsError(f"{stage_dir} already holds an RL run. Fix: pass --resume to continue it, "
                              "or choose another --out.")
    resumed_step = None
    is_main = process_info()[1]  # under `accelerate launch`, only the main process touches run files
    if resume_from is not None:
        state = json.loads((resume_from / "trainer_state.json").read_text())
        resumed_step = state["global_step"]
        if state.get("max_steps") not in (None, config.steps):
            # the restored scheduler would run the extra steps at its final learning rate (0 for linear decay)
            raise ValueError(f"--resume continues the same run: steps must stay {state['max_steps']} "
                             f"(got {config.steps}). To train longer, start a new run from {stage_dir / 'policy'}.")
        if is_main:
            run.clear_metrics("rl", after_step=resumed_step)
            _truncate_samples(stage_dir / "samples.jsonl", resumed_step)
    elif is_main:
        run.clear_metrics("rl")
        (stage_dir / "samples.jsonl").unlink(missing_ok=True)
        shutil.rmtree(stage_dir / "snapshots", ignore_errors=True)
    if is_main:
        run.save_config("rl", config)

    with no_library_bars():  # the training bar stays; model saves and dataset maps draw none
        trainer = build_trainer(config, run, prompts, preference_rows, reward_fn)
        if config.snapshot_steps:
            trainer.add_callback(PolicySnapshots(trainer, config.snapshot_steps, stage_dir / "snapshots"))
        tokenizer = trainer.processing_class
        started = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        seconds = time.perf_counter() - started

        policy_dir = stage_dir / "policy"
        if config.lora:
            if trainer.accelerator.is_main_process:
                trainer.model.merge_and_unload().save_pretrained(str(policy_dir))
        else:
            trainer.save_model(str(policy_dir))  # gathers sharded weights (FSDP/ZeRO-3); writes on the main process
        if trainer.accelerator.is_main_process:
            tokenizer.save_pretrained(str(policy_dir))
            write_json_atomic(policy_dir / POLICY_MANIFEST, {"base": config.policy,
                                                             "algo": config.algo, "beta": config.beta,
                                                             "steps": trainer.state.global_step, "lora": config.lora})
    return RLResult(policy_dir, trainer.state.global_step, seconds, resumed_step)
