"""Rank tab: show a pair (streamed side by side while it is written), record a person's vote in the preference
store, reveal the reward model afterwards. A pair is stored when its generation completes; only then can it be voted on.

Every label is written with `PreferenceStore.add_label` at the moment of the click. Its submission id is
`<token>:<choice>`, the token being a fresh uuid made when the pair was shown (kept in the session's `RankView`),
so a re-sent click returns the label it already made instead of adding another.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from apps.context import AppContext
from apps.handlers import (
    MAX_PROMPT_CHARS,
    InputError,
    check_annotator,
    check_choice,
    check_submission_id,
    check_text,
)
from workbench.data import PromptRecord
from workbench.preferences import CHOICES, Label, Pair, PairConfig, make_pairs, stream_pair
from workbench.preferences.pairs import side_finished
from workbench.preferences.formats import conversation_text

CHOICE_NAMES = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both bad", "skip": "Skip"}
ACTIVE_POOL = 4  # active selection picks among at least this many unlabelled pairs
MAX_PAIR_ID_CHARS = 64
SAME_TWICE = "The model wrote the same completion twice (or an empty one); try another prompt."


@dataclass
class RankView:
    """Per-session state of the Rank tab (in gr.State): the pair on screen and its submission token."""

    pair_id: str | None = None
    token: str = ""
    note: str = ""  # why this pair was picked (e.g. the RM's margin under active selection)

    @classmethod
    def showing(cls, pair: Pair, note: str = "") -> RankView:
        return cls(pair.pair_id, uuid.uuid4().hex, note)

    def submission_id(self, action: str) -> str:
        return f"{self.token}:{action}"


@dataclass
class Reveal:
    """What the reward model thought of a pair the person just labelled."""

    choice: str
    score_a: float | None = None
    score_b: float | None = None
    p_a: float | None = None  # P(A > B) = sigmoid(r_A - r_B) (Bradley-Terry)

    @property
    def agrees(self) -> bool | None:
        if self.score_a is None or self.choice not in ("A", "B") or self.score_a == self.score_b:
            return None
        return (self.choice == "A") == (self.score_a > self.score_b)


# -- pairs ------------------------------------------------------------------------------------------------------

@dataclass
class Shown:
    """What the Rank tab shows: the prompt and both sides, growing while a new pair is written, then the pair."""

    prompt: str
    text_a: str
    text_b: str
    note: str = ""  # why this pair was picked
    pair: Pair | None = None  # set once the pair is complete and stored: only then can it be labelled

    def side_labels(self) -> tuple[str, str]:
        """Each side's box label: its word count, and "cut off" where the reply hit the token budget unfinished."""
        finished = side_finished(self.pair) if self.pair is not None else (None, None)
        return (side_label("A", self.text_a, finished[0], self.pair is None),
                side_label("B", self.text_b, finished[1], self.pair is None))

    @classmethod
    def stored(cls, pair: Pair, note: str = "") -> Shown:
        # the whole conversation: a reply to a multi-turn prompt is judged in its context
        return cls(conversation_text(pair.prompt), pair.completion_a, pair.completion_b, note, pair)


def side_label(side: str, text: str, finished: bool | None, writing: bool = False) -> str:
    """"A · 23 words", "A · 41 words · cut off" (the reply reached the token budget before it ended), or
    "A · writing…" while it streams; no badge for pairs stored before this was recorded, or imported ones."""
    if writing:
        return f"{side} · writing…"
    words = len(text.split())
    return f"{side} · {words} word{'s' * (words != 1)}" + (" · cut off" if finished is False else "")


def _models(ctx: AppContext, model_a: str | None, model_b: str | None) -> tuple[str, str, tuple, tuple | None]:
    """Checked model choices (default: two samples of the policy) and their (model, tokenizer); None for B when
    both sides come from the same model."""
    choices = ctx.model_choices()
    model_a = check_choice("Model A", model_a or ctx.policy.name, choices)
    model_b = check_choice("Model B", model_b or model_a, choices)
    return model_a, model_b, ctx.model_for(model_a), ctx.model_for(model_b) if model_b != model_a else None


def attempt_seeds(ctx: AppContext, attempts: int = 3) -> list[int]:
    """Seeds for a new pair: fresh samples every time, reproducible from the store's size; pairs whose sides come
    out identical are dropped, so a few more seeds to try."""
    seed = 2 * ctx.store.count_pairs()
    return [seed + 7919 * attempt for attempt in range(attempts)]


def generate_pairs(ctx: AppContext, records: list[PromptRecord], model_a: str | None = None,
                   model_b: str | None = None) -> list[Pair]:
    """make_pairs on these prompts with the chosen models (default: two samples of the policy), then store them."""
    model_a, model_b, policy, policy_b = _models(ctx, model_a, model_b)
    pairs: list[Pair] = []
    with ctx.model_lock:
        for seed in attempt_seeds(ctx):
            config = PairConfig(seed=seed, batch_size=len(records))
            pairs = make_pairs(records, policy, config, policy_b=policy_b, model_names=(model_a, model_b))
            if pairs:
                break
    if not pairs:
        raise InputError(SAME_TWICE)
    ctx.store.add_pairs(pairs)
    return pairs


def stream_new_pair(ctx: AppContext, record: PromptRecord, model_a: str | None = None, model_b: str | None = None,
                    note: str = "") -> Iterator[Shown]:
    """generate_pairs for one prompt, streamed: both sides grow side by side (one batched decode). The pair is
    stored before the last update, the only one whose `pair` is set, so a label can only name a stored pair."""
    model_a, model_b, policy, policy_b = _models(ctx, model_a, model_b)
    for seed in attempt_seeds(ctx):
        config = PairConfig(seed=seed, batch_size=1)
        for draft in stream_pair(record, policy, config, policy_b, (model_a, model_b), lock=ctx.model_lock):
            if not draft.done:
                yield Shown(record.text, draft.text_a, draft.text_b, note)
        if draft.pair is not None:
            ctx.store.add_pairs([draft.pair])
            yield Shown.stored(draft.pair, note)
            return
    raise InputError(SAME_TWICE)


def next_prompts(ctx: AppContext, n: int) -> list[PromptRecord]:
    """The next n built-in prompts, cycling, counted by the pairs stored so far."""
    start = ctx.store.count_pairs()
    return [ctx.prompts[(start + i) % len(ctx.prompts)] for i in range(n)]


def typed_prompt_record(text) -> PromptRecord:
    text = check_text("Prompt", text, MAX_PROMPT_CHARS).strip()
    return PromptRecord(id=f"typed-{hashlib.sha256(text.encode()).hexdigest()[:12]}", prompt=text, category="typed")


def pair_for_prompt(ctx: AppContext, text, model_a: str | None = None, model_b: str | None = None) -> Pair:
    """A new pair for a prompt the person typed."""
    return generate_pairs(ctx, [typed_prompt_record(text)], model_a, model_b)[0]


def stream_pair_for_prompt(ctx: AppContext, text, model_a: str | None = None,
                           model_b: str | None = None) -> Iterator[Shown]:
    """pair_for_prompt, streamed."""
    record = typed_prompt_record(text)  # checked before anything is generated
    return stream_new_pair(ctx, record, model_a, model_b, "your prompt")


def reward_margins(ctx: AppContext, pairs: list[Pair]) -> dict[str, tuple[float, float]] | None:
    """How sure the current reward model is of each pair, as a sort key (smallest = least sure): (-std of
    P(A > B), |P(A > B) - 0.5|), from `workbench.reward.uncertainty` (cached per model version); None without one."""
    from workbench.reward.uncertainty import pair_preferences

    rm, version = ctx.reward_model(), ctx.reward_version()
    if rm is None:
        return None
    missing = [p for p in pairs if (version, p.pair_id) not in ctx.margins]
    if missing:
        preferences = pair_preferences(rm, [p.prompt for p in missing], [p.completion_a for p in missing],
                                       [p.completion_b for p in missing])
        for pair, preference in zip(missing, preferences):
            ctx.margins[(version, pair.pair_id)] = (-preference.std, abs(preference.p_a - 0.5))
    return {p.pair_id: ctx.margins[(version, p.pair_id)] for p in pairs}


def stream_next_pair(ctx: AppContext, annotator: str, active: bool = False, model_a: str | None = None,
                     model_b: str | None = None) -> Iterator[Shown]:
    """The pair to show next, streamed when it has to be written first; the last update holds the stored pair.

    Default models: the oldest pair this annotator has not labelled, or a new one from the prompt set. With `active`
    and a reward model: the unlabelled pair the RM is least sure about (`reward_margins`). Other models: always
    a new pair from them.
    """
    annotator = check_annotator(annotator)
    default = ctx.policy.name
    if (model_a or default) != default or (model_b or model_a or default) != default:
        yield from stream_new_pair(ctx, next_prompts(ctx, 1)[0], model_a, model_b, f"new pair: {model_a} vs {model_b}")
        return
    if active and ctx.has_reward_model():
        pool = ctx.store.next_unlabelled(annotator, limit=64)
        written = 0
        if len(pool) < ACTIVE_POOL:
            written = ACTIVE_POOL - len(pool)
            yield Shown("", "", "", f"active selection: writing {written} candidate pairs, then the reward model "
                                    "picks the one it is least sure about…")
            generate_pairs(ctx, next_prompts(ctx, written))
            pool = ctx.store.next_unlabelled(annotator, limit=64)
        margins = reward_margins(ctx, pool)
        pair = min(pool, key=lambda p: margins[p.pair_id])
        queued = f"; {len(pool) - 1} stay queued for your next picks" if len(pool) > 1 else ""
        yield Shown.stored(pair, f"active selection: the reward model's least sure of {len(pool)} unlabelled pairs"
                                 f"{f' ({written} written now)' if written else ''}{queued}")
        return
    pool = ctx.store.next_unlabelled(annotator, limit=1)
    if pool:
        yield Shown.stored(pool[0])
        return
    yield from stream_new_pair(ctx, next_prompts(ctx, 1)[0])


def next_pair(ctx: AppContext, annotator: str, active: bool = False, model_a: str | None = None,
              model_b: str | None = None) -> tuple[Pair, str]:
    """stream_next_pair, whole: the pair to show next and a note on why."""
    for shown in stream_next_pair(ctx, annotator, active, model_a, model_b):
        pass
    return shown.pair, shown.note


def pair_payload(pair: Pair) -> dict:
    """What a client sees of a pair: never which model wrote which side, never the reward model's scores."""
    return {"pair_id": pair.pair_id, "prompt": conversation_text(pair.prompt), "completion_a": pair.completion_a,
            "completion_b": pair.completion_b}


# -- labels -----------------------------------------------------------------------------------------------------

def check_pair_id(ctx: AppContext, pair_id) -> Pair:
    if not isinstance(pair_id, str) or not pair_id or len(pair_id) > MAX_PAIR_ID_CHARS:
        raise InputError("pair_id must be the id of a displayed pair (up to 64 characters).")
    try:
        return ctx.store.get_pair(pair_id)
    except KeyError:
        raise InputError(f"Unknown pair {pair_id!r}: it is not in this run's preference store.") from None


def submit_label(ctx: AppContext, pair_id, choice, annotator, submission_id, reveal: bool = False) -> tuple[Label, Reveal]:
    """Validate everything, then write one label (idempotent per submission_id). With `reveal`, the reward model
    scores both sides first and the scores are stored with the label."""
    choice = check_choice("choice", choice, CHOICES)
    annotator = check_annotator(annotator)
    submission_id = check_submission_id(submission_id)
    pair = check_pair_id(ctx, pair_id)
    label = ctx.store.label_for_submission(submission_id)
    if label is not None:  # a re-sent click: answer with the label it made, if it is the same vote
        if (label.pair_id, label.choice, label.annotator) != (pair.pair_id, choice, annotator):
            raise InputError(f"submission_id {submission_id!r} was already used for another vote (on "
                             f"{'another pair' if label.pair_id != pair.pair_id else 'this pair'}); a new vote needs "
                             "a new submission_id: reload the pair.")
        return label, Reveal(choice, label.score_a, label.score_b, _p_a(label.score_a, label.score_b))
    result = Reveal(choice)
    rm = ctx.reward_model() if reveal else None
    if rm is not None:
        result.score_a, result.score_b = rm.score([pair.prompt] * 2, [pair.completion_a, pair.completion_b])
        result.p_a = _p_a(result.score_a, result.score_b)
    try:
        label = ctx.store.add_label(pair.pair_id, choice, annotator, submission_id, score_a=result.score_a,
                                    score_b=result.score_b)
    except ValueError as error:
        raise InputError(str(error)) from None
    return label, result


def undo_last(ctx: AppContext, annotator, submission_id) -> Label | None:
    """Withdraw this annotator's latest label; returns the undo revision (None when there was nothing)."""
    annotator, submission_id = check_annotator(annotator), check_submission_id(submission_id)
    try:
        return ctx.store.undo_last(annotator, submission_id)
    except ValueError as error:
        raise InputError(str(error)) from None


def _p_a(score_a: float | None, score_b: float | None) -> float | None:
    if score_a is None or score_b is None:
        return None
    return 1.0 / (1.0 + math.exp(-(score_a - score_b)))


# -- text for the page ------------------------------------------------------------------------------------------

def progress(ctx: AppContext, annotator: str) -> dict:
    return {"mine": ctx.store.count_labels(annotator), "everyone": ctx.store.count_labels(),
            "pairs": ctx.store.count_pairs(), "target": ctx.label_target}


def progress_markdown(counts: dict) -> str:
    share = min(counts["everyone"] / max(counts["target"], 1), 1.0)
    return (f"**Your labels: {counts['mine']}** · everyone: {counts['everyone']} of a target of {counts['target']} "
            f"({share:.0%}) · {counts['pairs']} pairs stored")


def reveal_markdown(reveal: Reveal | None, has_reward_model: bool, pair: Pair | None = None) -> str:
    """What was saved and what the reward model thought, with the pair it describes quoted (`pair`), since the
    next pair replaces it on screen. "Disagrees" only when P(A>B) is clearly on the other side (guidance.verdict)."""
    from apps.guidance import VERDICT_TEXT, verdict

    if reveal is None:
        return ""
    said = CHOICE_NAMES[reveal.choice]
    quoted = "" if pair is None else (f"**Last pair** · {_clip(conversation_text(pair.prompt))}\n\n"
                                      f"> **A:** {_clip(pair.completion_a)}\n>\n> **B:** {_clip(pair.completion_b)}\n\n")
    if reveal.score_a is None:
        return f"{quoted}Saved: **{said}**.{'' if has_reward_model else NO_RM_HINT}"
    return (f"{quoted}Saved: **{said}**. Reward model: A = {reveal.score_a:+.2f}, B = {reveal.score_b:+.2f}, "
            f"P(A≻B) = {reveal.p_a:.2f}. {VERDICT_TEXT[verdict(reveal.choice, reveal.p_a)]}").rstrip()


NO_RM_HINT = " No reward model yet: train one in the *Reward model* tab."
RM_NOW_HINT = " A reward model is trained now: its verdict shows after your next vote."


def refresh_reveal(text: str | None, has_reward_model: bool) -> str:
    """A reveal on screen from before the reward model existed, with its stale hint replaced."""
    text = text or ""
    return text.replace(NO_RM_HINT, RM_NOW_HINT) if has_reward_model else text


def _clip(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())  # one paragraph: a quote stays a quote
    return text if len(text) <= limit else text[:limit] + "…"
