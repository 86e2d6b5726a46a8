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


def evaluation_report(ctx: AppContext) -> dict | None:
    """Figures from <run>/rl/eval.json (written by `workbench evaluate`), or None when it is missing."""
    path = ctx.root / "rl" / "eval.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    return {"table": plots.before_after_table(report.get("table", [])),
            "overoptimisation": plots.overoptimisation_plot(report),
            "win_rates": plots.win_rate_bars(report) if "win_rate_gold" in report else None}


def new_blind_pair(ctx: AppContext, prompt=None) -> tuple[BlindPair, str, str]:
    """A held-out prompt (or the given one), base and tuned samples with one seed, shown in random order."""
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
    return BlindPair(prompt, seed, tuned_side, uuid.uuid4().hex), left, right


def blind_vote(votes: BlindVoteStore, pair: BlindPair | None, choice, annotator) -> tuple[float, Estimate]:
    if pair is None:
        raise InputError("Draw a blind pair first.")
    choice = check_choice("choice", choice, BLIND_CHOICES)
    annotator = check_annotator(annotator)
    outcome = votes.add_vote(check_submission_id(f"{pair.token}:vote"), annotator, pair.prompt, pair.seed,
                             pair.tuned_side, choice)
    return outcome, votes.win_rate()


def win_rate_markdown(estimate: Estimate) -> str:
    if estimate.n == 0:
        return "No blind votes yet."
    return (f"Tuned policy's blind win rate: **{estimate.value:.2f}** (95% CI {estimate.low:.2f}–{estimate.high:.2f}, "
            f"n = {estimate.n} votes; ties count 0.5)")
