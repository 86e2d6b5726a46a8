"""Reward-model and RL tabs: start/stop training subprocesses, read their curves, diagnose and use the RM."""

from __future__ import annotations

import json
import shutil
import time

from apps.context import AppContext
from apps.handlers import (
    MAX_COMPLETION_CHARS,
    MAX_PROMPT_CHARS,
    InputError,
    check_choice,
    check_number,
    check_text,
)
from apps.jobs import JobError, python_command, read_tail
from workbench import plots
from workbench.preferences import export_preferences
from workbench.reward.train import RewardModelConfig
from workbench.rl.config import ALGORITHMS
from workbench.rl.train import last_checkpoint

MIN_RM_PAIRS = 4  # A/B labels needed before a reward model is worth training
MAX_RM_EPOCHS = 20
DEFAULT_RM_EPOCHS = RewardModelConfig.epochs
MAX_RL_STEPS = 2000
ORACLE = "helpful-upbeat-concise"  # the simulated labeler whose gold reward the app shows next to the proxy
RM_METRICS = ("rm/loss", "rm/accuracy", "rm/margin")
SAMPLES_SHOWN = 8


# -- reward model -----------------------------------------------------------------------------------------------

def reward_command(ctx: AppContext, epochs: float) -> list[str]:
    return python_command("train-rm", "--db", str(ctx.store.path), "--out", str(ctx.root), "--backbone",
                          ctx.reward_backbone, "--epochs", str(epochs), "--json")


def start_reward_training(ctx: AppContext, epochs) -> str:
    epochs = check_number("Epochs", epochs, 0.1, MAX_RM_EPOCHS)
    _, report = export_preferences(ctx.store)
    if report["n_rows"] < MIN_RM_PAIRS:
        raise InputError(f"Only {report['n_rows']} A/B labels so far; label at least {MIN_RM_PAIRS} pairs "
                         "(ties, both-bad and skips do not teach a reward model) in the Rank tab first.")
    try:
        ctx.jobs.start("reward", reward_command(ctx, epochs))
    except JobError as error:
        raise InputError(str(error)) from None
    return f"Training started on {report['n_rows']} labelled pairs."


def job_markdown(status: dict, what: str) -> str:
    state, seconds = status["state"], status["seconds"]
    if state == "idle":
        return f"No {what} job started from this app yet."
    if state == "running":
        return f"⏳ **{what} running** ({seconds:.0f} s) — {status['progress'] or 'starting…'}"
    if state == "stopped":
        return f"⏹ **{what} stopped** after {seconds:.0f} s."
    if state == "failed":
        return f"❌ **{what} failed** (exit code {status['returncode']}):\n```\n{status['error']}\n```"
    result = status["result"] or {}
    shown = {k: v for k, v in result.items() if isinstance(v, (int, float, str)) and k != "export"}
    return f"✅ **{what} finished** in {seconds:.0f} s. " + ", ".join(f"{k}: {_fmt(v)}" for k, v in shown.items())


def reward_curves(ctx: AppContext):
    rows = ctx.run.read_metrics("reward")
    return (plots.metric_curve(rows, ["rm/loss"], title="Reward model: training loss"),
            plots.metric_curve(rows, ["rm/accuracy"], title="Reward model: training accuracy"))


def reward_summary(ctx: AppContext) -> str:
    path = ctx.root / "reward" / "eval.json"
    if not path.exists():
        return "No reward model in this run yet."
    report = json.loads(path.read_text())
    lines = [(f"**Reward model** ({report['n_train']} training pairs, evaluated on {report.get('evaluated_on', 'val')}, "
             f"n = {report['n_val'] or report['n_train']}):"),
             f"- accuracy vs labels: {_ci(report['accuracy'], report['accuracy_ci'])}"]
    if report.get("kind"):  # models trained before kinds existed have none
        lines.insert(1, f"- kind: **{report['kind']}** ({report.get('kind_reason', '')}); ties trained as half a "
                        f"win each side: {report.get('n_ties', 0)}")
    if report.get("gold_accuracy") is not None:
        lines.append(f"- agreement with the gold labeler: {_ci(report['gold_accuracy'], report['gold_accuracy_ci'])}")
    lines.append(f"- calibration error (ECE): {_fmt(report.get('ece'))} · score/length correlation: "
                 f"{_fmt(report.get('length_correlation'))}")
    return "\n".join(lines)


def reward_diagnostics(ctx: AppContext) -> dict:
    """Diagnostics of the current RM on the labels collected so far (held-out split when there is one)."""
    from workbench.evaluation.reward_diagnostics import diagnose_reward_model
    from workbench.reward.train import is_validation

    rm = ctx.reward_model()
    if rm is None:
        raise InputError("No reward model yet: train one first.")
    rows = export_preferences(ctx.store)[0].to_list()
    if not rows:
        raise InputError("No A/B labels to evaluate the reward model on.")
    held_out = [r for r in rows if is_validation(r, 0.2)]
    diagnostics = diagnose_reward_model(rm, held_out or rows, ORACLE)
    split = "held-out" if held_out else "training (no held-out labels yet)"
    text = (f"On {diagnostics['n_pairs']} {split} pairs: accuracy {_estimate(diagnostics['accuracy'])}, "
            f"gold agreement {_estimate(diagnostics['gold_accuracy'])}, ECE {diagnostics['ece']:.3f}, "
            f"score/length correlation {_fmt(diagnostics['length_correlation'])}.")
    from workbench.generation import completion_text
    from workbench.reward.uncertainty import pair_preferences

    evaluated = held_out or rows
    preferences = pair_preferences(rm, [r["prompt"] for r in evaluated], [completion_text(r["chosen"]) for r in evaluated],
                                   [completion_text(r["rejected"]) for r in evaluated])
    stds = sorted(p.std for p in preferences)
    if preferences[0].source != "none":  # a single fine-tuned model has no posterior to report
        text += (f" Uncertainty of P(A≻B) ({preferences[0].source}): median std {stds[len(stds) // 2]:.3f}, "
                 f"largest {stds[-1]:.3f}.")
    return {"text": text,
            "histograms": plots.score_histograms(diagnostics["scores_chosen"], diagnostics["scores_rejected"]),
            "calibration": plots.calibration_diagram(diagnostics["calibration"]),
            "length": plots.score_vs_length(diagnostics["lengths"], diagnostics["scores"])}


def score_text(ctx: AppContext, prompt, completion) -> float:
    prompt = check_text("Prompt", prompt, MAX_PROMPT_CHARS)
    completion = check_text("Completion", completion, MAX_COMPLETION_CHARS, allow_empty=True)
    rm = ctx.reward_model()
    if rm is None:
        raise InputError("No reward model yet: train one in this tab first.")
    return float(rm.score([prompt], [completion])[0])


# -- RL ---------------------------------------------------------------------------------------------------------

def rl_command(ctx: AppContext, algo: str, steps: int, beta: float, lora: bool, resume: bool) -> list[str]:
    args = ["train-rl", "--policy", ctx.policy.name, "--out", str(ctx.root), "--algo", algo, "--steps", str(steps),
            "--beta", str(beta), "--json"]
    args += ["--prefs", str(ctx.store.path)] if algo == "dpo" else ["--reward", str(ctx.reward_dir)]
    return python_command(*args, *(["--lora"] if lora else []), *(["--resume"] if resume else []))


def start_rl(ctx: AppContext, algo, steps, beta, lora, resume: bool = False, archive_previous: bool = False) -> str:
    algo = check_choice("Algorithm", algo, ALGORITHMS)
    steps = check_number("Steps", steps, 1, MAX_RL_STEPS, integer=True)
    beta = check_number("β", beta, 0.0, 1.0)
    lora, resume = bool(lora), bool(resume)
    if algo != "dpo" and not ctx.has_reward_model():
        raise InputError(f"{algo} optimises the reward model: train one in the Reward model tab first (or use dpo).")
    checkpoints = ctx.root / "rl" / "checkpoints"
    previous = last_checkpoint(checkpoints) if checkpoints.is_dir() else None
    if resume and previous is None:
        raise InputError("Nothing to resume: this run has no complete RL checkpoint yet.")
    if resume:
        saved = json.loads((previous / "trainer_state.json").read_text()).get("max_steps")
        steps = saved or steps  # a resumed run keeps its step count
    if not resume and previous is not None:
        if not archive_previous:
            raise InputError(f"This run already holds an RL run ({previous.name}). Press Resume to continue it, "
                             "or tick 'Archive the previous RL run' to start over.")
        if ctx.jobs.status("rl")["state"] == "running":
            raise InputError("An RL job is running; stop it before archiving its run.")
        shutil.move(str(ctx.root / "rl"), str(ctx.root / f"rl-archived-{time.strftime('%Y%m%d-%H%M%S')}"))
    try:
        ctx.jobs.start("rl", rl_command(ctx, algo, steps, beta, lora, resume))
    except JobError as error:
        raise InputError(str(error)) from None
    return f"{'Resumed' if resume else 'Started'} {algo} for {steps} steps (β = {beta:g}{', LoRA' if lora else ''})."


def stop_rl(ctx: AppContext) -> str:
    stopped = ctx.jobs.stop("rl")
    return "RL run stopped; press Resume to continue from its last checkpoint." if stopped else "No RL run is running."


def rl_algo(ctx: AppContext, fallback: str = "rloo") -> str:
    config = ctx.root / "rl" / "config.json"
    try:
        return json.loads(config.read_text())["algo"] if config.exists() else fallback
    except (json.JSONDecodeError, KeyError):
        return fallback


def rl_curves(ctx: AppContext):
    algo = rl_algo(ctx)
    return plots.rl_curves(ctx.run.read_metrics("rl"), algo)


def latest_samples(ctx: AppContext, n: int = SAMPLES_SHOWN) -> list[list]:
    """The last n samples of <run>/rl/samples.jsonl as rows [step, prompt, completion, gold]."""
    lines = read_tail(ctx.root / "rl" / "samples.jsonl", 65_536).splitlines()
    rows = []
    for line in reversed(lines):
        try:
            sample = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows.append([sample.get("step"), _short(sample.get("prompt")), _short(sample.get("completion")),
                     _fmt(sample.get("gold"))])
        if len(rows) == n:
            break
    return rows


# -- formatting -------------------------------------------------------------------------------------------------

def _short(value, limit: int = 300) -> str:
    if isinstance(value, list):  # chat messages
        value = value[-1].get("content", "") if value else ""
    text = str(value or "")
    return text if len(text) <= limit else text[:limit] + "…"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "–" if value is None else str(value)


def _ci(value, interval) -> str:
    return f"{value:.3f} (95% CI {interval[0]:.3f}–{interval[1]:.3f})" if value is not None else "–"


def _estimate(estimate: dict | None) -> str:
    return "–" if not estimate else _ci(estimate["value"], [estimate["low"], estimate["high"]])

