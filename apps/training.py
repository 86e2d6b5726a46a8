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
from workbench.preferences import export_preferences, export_ranking_pairs
from workbench.reward.train import RewardModelConfig
from workbench.rl.config import ALGORITHMS
from workbench.pipeline import PipelinePreset
from workbench.rl.train import last_checkpoint

MIN_RM_PAIRS = 4  # A/B labels needed before a reward model is worth training
MAX_RM_EPOCHS = 20
DEFAULT_RM_EPOCHS = RewardModelConfig.epochs
MAX_RL_STEPS = 2000
ORACLE = "helpful-upbeat-concise"  # the simulated labeler whose gold reward the app shows next to the proxy
RM_METRICS = ("rm/loss", "rm/accuracy", "rm/margin")
SAMPLES_SHOWN = 8
NEW_RUN_LABEL = "New run (archive the previous RL run)"
QUICK_RL_STEPS = PipelinePreset.rl_steps  # the Steps field starts at the quick preset's count


# -- reward model -----------------------------------------------------------------------------------------------

def reward_command(ctx: AppContext, epochs: float) -> list[str]:
    return python_command("train-rm", "--db", str(ctx.store.path), "--out", str(ctx.root), "--backbone",
                          ctx.reward_backbone, "--epochs", str(epochs), "--json")


def start_reward_training(ctx: AppContext, epochs) -> str:
    epochs = check_number("Epochs", epochs, 0.1, MAX_RM_EPOCHS)
    _, report = export_preferences(ctx.store, keep=("A", "B", "tie"))  # what `train-rm` trains on, with:
    _, ranked = export_ranking_pairs(ctx.store, ties="keep")  # each ranking's C(K, 2) pairs
    if report["n_rows"] + ranked["n_rows"] < MIN_RM_PAIRS:
        raise InputError(f"Only {report['n_rows'] + ranked['n_rows']} usable labels so far (A/B votes, ties and "
                         f"pairs of rankings); label at least {MIN_RM_PAIRS} pairs (both-bad and skips do not teach a "
                         "reward model) in the Rank tab first.")
    try:
        ctx.jobs.start("reward", reward_command(ctx, epochs))
    except JobError as error:
        raise InputError(str(error)) from None
    rankings = f" and {ranked['n_rows']} pairs of {ranked['n_rankings']} rankings" if ranked["n_rankings"] else ""
    return (f"Training started on {report['n_rows']} usable labels ({report['kept'].get('tie', 0)} ties, each half a "
            f"win for both sides){rankings}.")


def job_markdown(status: dict, what: str, describe=None) -> str:
    """A job's state as a person reads it: a step counter, a progress bar and an ETA from the measured step times
    while it runs; a sentence with the key numbers (`describe(result)`) when it is done. Never raw logs."""
    state, seconds = status["state"], status["seconds"]
    if state == "idle":
        return f"No {what} job started from this app yet."
    if state == "running":
        steps = status.get("steps")
        if not steps:
            return f"**{what}: running** ({_duration(seconds)} so far): loading models and data…"
        done, total = steps["done"], steps["total"]
        bar = "#" * round(20 * done / total) + "·" * (20 - round(20 * done / total))
        eta = f", about {_duration(steps['eta_s'])} left" if steps["eta_s"] is not None else ""
        return (f"**{what}: running**, step {done} of {total} `[{bar}]` {done / total:.0%} "
                f"({_duration(seconds)} so far{eta})")
    if state == "stopped":
        return f"**{what}: stopped** after {_duration(seconds)}."
    if state == "failed":
        return (f"**{what}: failed** after {_duration(seconds)} (exit code {status['returncode']}): "
                f"{status.get('error_line') or 'no message'}. The full log is app/jobs/ in the run folder.")
    result = status["result"] or {}
    return f"**{what}: finished** in {_duration(seconds)}. " + (describe(result) if describe else "")


def reward_finished(result: dict) -> str:
    """The finished line of a reward-model job, from `train-rm --json`."""
    from apps.guidance import estimate_markdown

    if "accuracy" not in result:
        return ""
    ci = result.get("accuracy_ci") or [None, None]
    n = _n_evaluated(result)
    where = "held-out" if result.get("n_val") else "training (no held-out labels yet)"
    text = (f"A **{result.get('kind', 'reward')}** model learned from {result.get('n_train', '?')} training pairs "
            f"({result.get('n_ties', 0)} of them ties); accuracy on {n} {where} labels: "
            f"{estimate_markdown(result['accuracy'], ci[0], ci[1], n)}.")
    if result.get("n_dropped_too_long"):
        text += f" {result['n_dropped_too_long']} pairs were too long and left out."
    return text


def _n_evaluated(report: dict) -> int:
    """The pairs a reward model's accuracy was measured on: its held-out A/B pairs (ties are trained on, not
    evaluated), or its training pairs when none are held out. Reports from before `n_evaluated`: the split's size."""
    return report.get("n_evaluated", report.get("n_val") or report.get("n_train") or 0)


def rl_finished(result: dict) -> str:
    """The finished line of an RL job, from `train-rl --json`."""
    if "global_step" not in result:
        return ""
    return (f"The policy took {result['global_step']} steps; the tuned policy is saved (rl/policy). Compare it with "
            "the base in the *Compare* tab.")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = max(float(seconds), 0.0)
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def reward_curves(ctx: AppContext):
    """A head kind's learning curve on the current labels (loss, accuracy vs labels); a fine-tuned kind's
    training curves (loss, accuracy vs step)."""
    from workbench.reward.label_curve import CURVE_FILE

    path = ctx.root / "reward" / CURVE_FILE
    try:
        curve = json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError:
        curve = None
    if curve:
        accuracy, loss = plots.label_curve_figures(curve)
        return loss, accuracy
    rows = ctx.run.read_metrics("reward")
    return (plots.metric_curve(rows, ["rm/loss"], title="Reward model: training loss"),
            plots.metric_curve(rows, ["rm/accuracy"], title="Reward model: training accuracy"))


def reward_summary(ctx: AppContext) -> str:
    path = ctx.root / "reward" / "eval.json"
    if not path.exists():
        return "No reward model in this run yet."
    report = json.loads(path.read_text())
    n = _n_evaluated(report)
    lines = [(f"**Reward model** ({report['n_train']} training pairs, evaluated on {report.get('evaluated_on', 'val')}, "
             f"n = {n}):"),
             f"- accuracy vs labels: {_ci_n(report['accuracy'], report['accuracy_ci'], n)}"]
    if report.get("kind"):  # models trained before kinds existed have none
        lines.insert(1, f"- kind: **{report['kind']}** ({report.get('kind_reason', '')}); ties trained as half a "
                        f"win each side: {report.get('n_ties', 0)}")
    if report.get("gold_accuracy") is not None:
        lines.append(f"- agreement with the gold labeler: "
                     f"{_ci_n(report['gold_accuracy'], report['gold_accuracy_ci'], n)}")
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

def rl_command(ctx: AppContext, algo: str, steps: int, beta: float, lora: bool, resume: bool,
               learning_rate: float | None = None) -> list[str]:
    args = ["train-rl", "--policy", ctx.policy.name, "--out", str(ctx.root), "--algo", algo, "--steps", str(steps),
            "--beta", str(beta), "--json"]
    args += ["--prefs", str(ctx.store.path)] if algo == "dpo" else ["--reward", str(ctx.reward_dir)]
    rate_flag = "--lora-learning-rate" if lora else "--learning-rate"
    args += [rate_flag, f"{learning_rate:g}"] if learning_rate is not None else []
    return python_command(*args, *(["--lora"] if lora else []), *(["--resume"] if resume else []))


def rl_trust(ctx: AppContext, lora: bool) -> tuple[float | None, str]:
    """The pipeline's trust rule for the app: an RM whose validation accuracy's 95 % CI reaches chance gets RL at
    `weak_rm_lr_scale` x the learning rate. Returns (learning rate or None for the default, a sentence)."""
    from workbench.evaluation.metrics import Estimate
    from workbench.pipeline import reward_model_trust, trust_lr_scale
    from workbench.rl.config import RLConfig

    try:
        report = json.loads((ctx.root / "reward" / "eval.json").read_text())
        accuracy = Estimate(report["accuracy"], *report["accuracy_ci"], _n_evaluated(report))
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None, ""
    trust = reward_model_trust(accuracy)
    scale = trust_lr_scale(trust)
    if scale == 1.0:
        return None, ""
    default = RLConfig.lora_learning_rate if lora else RLConfig.learning_rate
    return default * scale, f" {trust['why']} RL therefore runs at {scale:g}x its learning rate ({default * scale:g})."


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
            state = json.loads((previous / "trainer_state.json").read_text())
            if state.get("global_step", 0) >= (state.get("max_steps") or 0):  # nothing left to resume
                raise InputError(f"This run already holds an RL run, finished after {state.get('global_step')} steps. "
                                 f"To start a new run, tick '{NEW_RUN_LABEL}' (the finished one is kept in an "
                                 "rl-archived-<time> folder) and press Start again.")
            raise InputError(f"This run already holds an RL run, stopped at {previous.name}. Press Resume to continue "
                             f"it, or tick '{NEW_RUN_LABEL}' to start over.")
        if ctx.jobs.status("rl")["state"] == "running":
            raise InputError("An RL job is running; stop it before archiving its run.")
        shutil.move(str(ctx.root / "rl"), str(ctx.root / f"rl-archived-{time.strftime('%Y%m%d-%H%M%S')}"))
    learning_rate, why = rl_trust(ctx, lora) if algo != "dpo" else (None, "")
    try:
        ctx.jobs.start("rl", rl_command(ctx, algo, steps, beta, lora, resume, learning_rate))
    except JobError as error:
        raise InputError(str(error)) from None
    return (f"{'Resumed' if resume else 'Started'} {algo} for {steps} steps (β = {beta:g}{', LoRA' if lora else ''})."
            + why)


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
    figure = plots.rl_curves(ctx.run.read_metrics("rl"), algo)
    # fit the page's width (every panel visible on a 1366-px screen) instead of 320 px per panel
    figure.update_layout(width=None, autosize=True, margin={"l": 40, "r": 10, "t": 60, "b": 40})
    figure.update_annotations(font_size=11)
    return figure


def rl_settings(ctx: AppContext) -> dict | None:
    """The settings of the RL job running now ({"algo", "steps", "beta", "lora"}, read from its command), so every
    browser shows what is really running; None when no RL job runs."""
    status = ctx.jobs.status("rl")
    if status["state"] != "running":
        return None
    command = status["command"]

    def value(flag, default=None):
        return command[command.index(flag) + 1] if flag in command else default
    return {"algo": value("--algo", "rloo"), "steps": int(value("--steps", 0)), "beta": float(value("--beta", 0.0)),
            "lora": "--lora" in command}


def rl_note(ctx: AppContext) -> str:
    """One line under the curves when the proxy reward fell over the run, saying why that happens early."""
    algo = rl_algo(ctx)
    rewards = [r[f"{algo}/reward"] for r in ctx.run.read_metrics("rl") if r.get(f"{algo}/reward") is not None]
    if len(rewards) < 2 or rewards[-1] >= rewards[0]:
        return ""
    return (f"The proxy reward fell ({rewards[0]:+.2f} to {rewards[-1]:+.2f}). Early in a run that is common: the "
            "reward shown includes the KL penalty (β × distance from the base) and the EOS penalty for cut-off "
            "replies, which grow before the reward model's score does. Judge by the gold curve and a longer run.")


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


def _ci_n(value, interval, n: int) -> str:
    """An estimate with its n, and "too few to tell" under `guidance.TOO_FEW_N`."""
    from apps.guidance import estimate_markdown

    return estimate_markdown(value, *(interval or [None, None]), n) if value is not None else "–"


def _estimate(estimate: dict | None) -> str:
    return "–" if not estimate else _ci_n(estimate["value"], [estimate["low"], estimate["high"]], estimate["n"])

