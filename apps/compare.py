"""Compare tab: base vs tuned policy on one prompt and seed, the run's evaluation report, and a blind A/B vote.

Blind votes go to <run>/blind_votes.sqlite with the preference store's durability rules: WAL journal,
`synchronous=FULL`, `BEGIN IMMEDIATE`, and a unique client submission id so a re-sent vote is not counted twice.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from apps.context import AppContext
from apps.jobs import JobError, python_command
from apps.handlers import (
    MAX_PROMPT_CHARS,
    InputError,
    check_annotator,
    check_choice,
    check_number,
    check_submission_id,
    check_text,
)
from workbench import plots
from workbench.evaluation.metrics import Estimate, bootstrap_ci
from workbench.generation import SamplingConfig, generate
from workbench.oracles import get_oracle

ORACLE = "helpful-upbeat-concise"
MAX_SEED = 2**31 - 1
BLIND_CHOICES = ("left", "right", "tie")
EVAL_PROMPTS_DEFAULT = 16  # held-out prompts an app evaluation samples (the CLI's default is 64)
MAX_EVAL_PROMPTS = 85  # the held-out set's size
COMPARE_SAMPLING = {"max_new_tokens": 64, "temperature": 0.7, "top_p": 1.0, "top_k": 0}  # the RL/evaluation sampler (shaped)


class BlindVoteStore:
    """Votes between the base and the tuned policy, shown in random order; outcome 1 = tuned won."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        with self._write_lock:
            self._connection().executescript("""
                CREATE TABLE IF NOT EXISTS votes (
                    vote_id INTEGER PRIMARY KEY AUTOINCREMENT,
                    submission_id TEXT NOT NULL UNIQUE,
                    annotator TEXT NOT NULL,
                    prompt TEXT NOT NULL,
                    seed INTEGER NOT NULL,
                    tuned_side TEXT NOT NULL CHECK (tuned_side IN ('left', 'right')),
                    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie')),
                    outcome REAL NOT NULL CHECK (outcome IN (0, 0.5, 1)),
                    created_at REAL NOT NULL);
                -- blind pairs whose two replies came out identical: not votable, counted apart from the votes
                CREATE TABLE IF NOT EXISTS identical_draws (
                    token TEXT PRIMARY KEY,
                    prompt TEXT NOT NULL,
                    seed INTEGER NOT NULL,
                    created_at REAL NOT NULL)""")

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")  # acknowledged means on disk
            self._local.connection = connection
        return connection

    def add_vote(self, submission_id: str, annotator: str, prompt: str, seed: int, tuned_side: str, choice: str) -> float:
        """Record a vote once per submission_id; returns the tuned policy's outcome (1 win, 0.5 tie, 0 loss)."""
        outcome = 0.5 if choice == "tie" else float(choice == tuned_side)
        connection = self._connection()
        with self._write_lock:
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute(
                    "INSERT OR IGNORE INTO votes (submission_id, annotator, prompt, seed, tuned_side, choice, outcome, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (submission_id, annotator, prompt, seed, tuned_side, choice, outcome, time.time()))
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        return outcome

    def add_identical(self, token: str, prompt: str, seed: int) -> None:
        """Count a drawn pair whose replies are identical (once per token); it never enters the win rate."""
        connection = self._connection()
        with self._write_lock:
            connection.execute("INSERT OR IGNORE INTO identical_draws (token, prompt, seed, created_at) "
                               "VALUES (?, ?, ?, ?)", (token, prompt, seed, time.time()))

    def count_identical(self) -> int:
        return self._connection().execute("SELECT COUNT(*) FROM identical_draws").fetchone()[0]

    def outcomes(self) -> list[float]:
        return [row[0] for row in self._connection().execute("SELECT outcome FROM votes ORDER BY vote_id")]

    def win_rate(self) -> Estimate:
        return bootstrap_ci(self.outcomes())


@dataclass
class BlindPair:
    """Per-session state (gr.State) of the blind test: which side is the tuned policy, hidden from the page."""

    prompt: str
    seed: int
    tuned_side: str
    token: str
    identical: bool = False  # both replies the same text: shown, flagged, not votable


def _tuned(ctx: AppContext):
    if not ctx.has_tuned_policy():
        raise InputError("No tuned policy yet: run RL in the RL fine-tuning tab first (it writes rl/policy).")
    return ctx.model_for("rl/policy")


def _sample(ctx: AppContext, model, prompt: str, seed: int):
    with ctx.model_lock:
        return generate(model, ctx.policy.tokenizer, [prompt], SamplingConfig(seed=seed, **COMPARE_SAMPLING))[0]


def compare_prompt(ctx: AppContext, prompt, seed) -> dict:
    """Base and tuned samples of one prompt with the same seed, their RM and gold scores, and log(pi/pi_ref)."""
    from workbench.evaluation.policy_eval import token_logratios

    prompt = check_text("Prompt", prompt, MAX_PROMPT_CHARS).strip()
    seed = check_number("Seed", seed, 0, MAX_SEED, integer=True)
    tuned, _ = _tuned(ctx)
    base_sample = _sample(ctx, ctx.policy.model, prompt, seed)
    tuned_sample = _sample(ctx, tuned, prompt, seed)
    gold = get_oracle(ORACLE)
    rm = ctx.reward_model()
    texts = [base_sample.text, tuned_sample.text]
    proxy = rm.score([prompt] * 2, texts) if rm is not None else [None, None]
    with ctx.model_lock:
        tokens = token_logratios(tuned, ctx.policy.model, ctx.policy.tokenizer, prompt, tuned_sample.token_ids,
                                 COMPARE_SAMPLING["temperature"])
    return {"base": base_sample.text, "tuned": tuned_sample.text, "proxy": proxy,
            "gold": [gold(prompt, t) for t in texts], "logratio_figure": plots.token_logratio_text(tokens),
            "kl": sum(t["logratio"] for t in tokens)}


def score_markdown(name: str, proxy: float | None, gold: float) -> str:
    rm = "no reward model" if proxy is None else f"RM {proxy:+.2f}"
    return f"**{name}** · {rm} · gold ({ORACLE}) {gold:+.2f}"


def evaluation_command(ctx: AppContext, n_prompts: int) -> list[str]:
    """`workbench evaluate` on this run's tuned policy and reward model; the best-of-n baseline (up to n = 8) only
    from 8 prompts on (fewer would say nothing)."""
    bon_max_n = 0 if n_prompts < 8 else 4 if n_prompts < EVAL_PROMPTS_DEFAULT else 8
    return python_command("evaluate", "--base", ctx.policy.name, "--policy", str(ctx.tuned_dir), "--reward",
                          str(ctx.reward_dir), "--n-prompts", str(n_prompts), "--bon-max-n", str(bon_max_n),
                          "--out", str(ctx.root / "rl" / "eval.json"), "--json")


def start_evaluation(ctx: AppContext, n_prompts) -> str:
    """Start the evaluation as a background job ("evaluate"); its progress shows in `evaluation_status`."""
    n_prompts = check_number("Held-out prompts", n_prompts, 2, MAX_EVAL_PROMPTS, integer=True)
    if not ctx.has_tuned_policy() or not ctx.has_reward_model():
        raise InputError("Evaluation needs a reward model and a tuned policy: train both first (Reward model and "
                         "RL fine-tuning tabs).")
    try:
        ctx.jobs.start("evaluate", evaluation_command(ctx, n_prompts))
    except JobError as error:
        raise InputError(str(error)) from None
    return f"Evaluation started on {n_prompts} held-out prompts."


def evaluation_finished(result: dict) -> str:
    """The finished line of an evaluation job, from `evaluate --json`."""
    from apps.guidance import estimate_markdown

    win = result.get("win_rate_gold")
    if not win:
        return ""
    return (f"On {result.get('n_prompts')} held-out prompts the tuned policy beats the base by the gold labeler "
            f"{estimate_markdown(win['value'], win['low'], win['high'], win['n'], 'prompts')} of the time "
            "(0.5 = no difference). The table and plots below are filled in.")


def evaluation_report(ctx: AppContext) -> dict | None:
    """Figures from <run>/rl/eval.json (written by `workbench evaluate`), or None when it is missing."""
    from workbench.evaluation.gaming import gaming_markdown

    path = ctx.root / "rl" / "eval.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    table = plots.before_after_table(report.get("table", []))
    table.update_layout(width=None, autosize=True)  # the page's width: every column visible
    return {"table": table,
            "overoptimisation": plots.overoptimisation_plot(report),
            "win_rates": plots.win_rate_bars(report) if "win_rate_gold" in report else None,
            "gaming": gaming_markdown(report["gaming"]) if report.get("gaming") else "",
            "summary": report_summary(report)}


def report_summary(report: dict) -> str:
    """What the figures below show, from eval.json; the job's finished line already gave the headline sentence,
    so this one adds the proxy-vs-gold contrast and the KL instead of repeating it."""
    from apps.guidance import estimate_markdown

    parts = []
    for key, who in (("win_rate_proxy", "the reward model (proxy)"), ("win_rate_gold", "the gold labeler")):
        if report.get(key):
            e = report[key]
            parts.append(f"by {who} {estimate_markdown(e['value'], e['low'], e['high'], e['n'], 'prompts')}")
    text = f"**Evaluation** on {report.get('n_prompts')} held-out prompts · tuned beats base " + "; ".join(parts) + "."
    if report.get("kl"):
        text += f" KL(tuned ‖ base) {report['kl']['value']:.2f} nats per reply."
    proxy, gold = report.get("win_rate_proxy"), report.get("win_rate_gold")
    if proxy and gold and proxy["value"] - gold["value"] > 0.15:
        text += (" The proxy win is well above the gold one: RL learned the reward model's quirks more than the "
                 "taste it stands for (see the over-optimisation plot and the gaming check).")
    return text


def new_blind_pair(ctx: AppContext, prompt=None, votes: BlindVoteStore | None = None) -> tuple[BlindPair, str, str]:
    """A random held-out prompt (or the one typed in the Compare tab's blind-test box), base and tuned samples with
    one seed, shown in random order. Identical replies are flagged (and counted in `votes`): they cannot be voted."""
    from workbench.data import builtin_prompts

    tuned, _ = _tuned(ctx)
    rng = random.Random(uuid.uuid4().int)
    if prompt:
        prompt = check_text("Prompt", prompt, MAX_PROMPT_CHARS).strip()
    else:
        prompt = rng.choice(builtin_prompts("heldout")).text
    seed = rng.randrange(MAX_SEED)
    base_text = _sample(ctx, ctx.policy.model, prompt, seed).text
    tuned_text = _sample(ctx, tuned, prompt, seed).text
    tuned_side = rng.choice(("left", "right"))
    left, right = (tuned_text, base_text) if tuned_side == "left" else (base_text, tuned_text)
    pair = BlindPair(prompt, seed, tuned_side, uuid.uuid4().hex, identical=base_text == tuned_text)
    if pair.identical and votes is not None:
        votes.add_identical(pair.token, prompt, seed)
    return pair, left, right


def blind_prompt_markdown(pair: BlindPair) -> str:
    """The prompt both replies answer, and the identical-replies flag."""
    text = f"**Prompt:** {pair.prompt}"
    if pair.identical:
        text += ("\n\n**The two replies are identical** (the tuned policy wrote what the base wrote): nothing to "
                 "judge, so this pair is counted apart and left out of the win rate. Draw another.")
    return text


def blind_vote(votes: BlindVoteStore, pair: BlindPair | None, choice, annotator) -> tuple[float, Estimate]:
    if pair is None:
        raise InputError("Draw a blind pair first.")
    if pair.identical:
        raise InputError("These two replies are identical: there is nothing to vote on. Draw a new blind pair.")
    choice = check_choice("choice", choice, BLIND_CHOICES)
    annotator = check_annotator(annotator)
    outcome = votes.add_vote(check_submission_id(f"{pair.token}:vote"), annotator, pair.prompt, pair.seed,
                             pair.tuned_side, choice)
    return outcome, votes.win_rate()


def win_rate_markdown(estimate: Estimate, n_identical: int = 0) -> str:
    from apps.guidance import estimate_markdown

    identical = (f" {n_identical} drawn pair{'s' * (n_identical != 1)} had identical replies and are not counted."
                 if n_identical else "")
    if estimate.n == 0:
        return "No blind votes yet." + identical
    return (f"Tuned policy's blind win rate: **{estimate_markdown(estimate.value, estimate.low, estimate.high, estimate.n, 'votes')}**"
            f"; ties count 0.5, 0.5 = no difference.{identical}")
