"""Rank tab, "rank K" mode: K complete answers to one prompt shown stacked (streamed while they are written), a
person's ranking of them stored in the run's preference store, the reward model revealed afterwards.

The answers come from `workbench.preferences.rankings.stream_ranking_set` (the pair mode's answer shaping and
batched streaming, K rows instead of 2) and are stored as a `RankingSet` before they can be ranked. A ranking is
typed or clicked best first, as the answers' numbers on screen: "3 1 4 2", ties joined by "=" ("3=1 4 2").
Every write names `<token>:<action>`, the token a fresh uuid made when the set was shown (`RankKView`), so a
re-sent click returns the ranking it made; undo is a revision, as in `RankingStore`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from apps.context import AppContext
from apps.handlers import InputError, check_annotator, check_choice, check_number, check_submission_id, check_text
from apps.ranking import MAX_PAIR_ID_CHARS, NO_RM_HINT, _clip, side_label, typed_prompt_record
from workbench.data import PromptRecord
from workbench.preferences.formats import conversation_text
from workbench.preferences.pairs import PairConfig
from workbench.preferences.rankings import DEFAULT_K, MAX_K, MIN_K, Ranking, RankingSet, RankingStore, \
    ranking_pairs, stream_ranking_set

MODES = ("pairs", "rank K")
MAX_ORDER_CHARS = 200  # a ranking of 9 answers with ties and spaces is about 20 characters
SEPARATORS = re.compile(r"[\s,;>]+")  # between rank levels: "3 1 4 2", "3,1,4,2", "3 > 1 > 4 > 2", "3142"
SAME_ANSWERS = "The model wrote the same answer twice (or an empty one) in every try; try another prompt."


@dataclass
class RankKView:
    """Per-session state of the rank-K panel (in gr.State): the set on screen and its submission token."""

    set_id: str | None = None
    k: int = DEFAULT_K
    token: str = ""

    @classmethod
    def showing(cls, ranking_set: RankingSet) -> RankKView:
        return cls(ranking_set.set_id, ranking_set.k, uuid.uuid4().hex)

    def submission_id(self, action: str) -> str:
        return f"{self.token}:{action}"


@dataclass
class ShownSet:
    """What the panel shows: the prompt and K answers, growing while a new set is written, then the stored set."""

    prompt: str
    texts: list[str]
    note: str = ""
    ranking_set: RankingSet | None = None  # set once the answers are complete and stored: only then rankable

    def answer_labels(self) -> list[str]:
        """Each answer's box label: its number, word count and "cut off" (`ranking.side_label`)."""
        finished = (self.ranking_set.generation.get("finished") if self.ranking_set is not None else None) \
            or [None] * len(self.texts)  # imported sets record nothing
        return [side_label(str(i + 1), text, done, self.ranking_set is None)
                for i, (text, done) in enumerate(zip(self.texts, finished))]

    @classmethod
    def stored(cls, ranking_set: RankingSet, note: str = "") -> ShownSet:
        return cls(conversation_text(ranking_set.prompt), list(ranking_set.completions), note, ranking_set)


@dataclass
class RankReveal:
    """What the reward model thought of the answers a person just ranked (scores per displayed answer)."""

    choice: str  # "rank" or "all_bad"
    ranks: tuple[int, ...] | None
    scores: list[float] | None = None

    def agreement(self) -> tuple[int, int] | None:
        """(pairs where the RM orders the answers as the person did, untied pairs of the ranking); None w/o RM."""
        if self.scores is None or self.ranks is None:
            return None
        untied = [(i, j, o) for i, j, o in ranking_pairs(self.ranks) if o != "tie"]
        agree = sum((self.scores[i] > self.scores[j]) if o == "A" else (self.scores[j] > self.scores[i])
                    for i, j, o in untied)
        return agree, len(untied)


# -- sets -------------------------------------------------------------------------------------------------------

def check_k(value) -> int:
    return check_number("K", value, MIN_K, MAX_K, integer=True)


def _policy(ctx: AppContext, model: str | None) -> tuple[str, tuple]:
    """The model writing all K answers (default: the policy) and its (model, tokenizer)."""
    name = check_choice("Model", model or ctx.policy.name, ctx.model_choices())
    return name, ctx.model_for(name)


def set_seeds(ctx: AppContext, k: int, attempts: int = 3) -> list[int]:
    """Seeds for a new set: fresh samples every time, reproducible from the number of sets stored; a set with two
    equal answers is dropped, so a few more seeds to try. Offset from the pair seeds so sets never copy pairs."""
    seed = 1_000_003 + MAX_K * RankingStore(ctx.store).count_sets() + k
    return [seed + 7919 * attempt for attempt in range(attempts)]


def stream_new_set(ctx: AppContext, record: PromptRecord, k, model: str | None = None,
                   note: str = "") -> Iterator[ShownSet]:
    """A new set of K answers for one prompt, streamed (one batched decode). The set is stored before the last
    update, the only one whose `ranking_set` is set, so a ranking can only name a stored set."""
    k, (name, policy) = check_k(k), _policy(ctx, model)
    for seed in set_seeds(ctx, k):
        for draft in stream_ranking_set(record, policy, k, PairConfig(seed=seed, batch_size=k), name,
                                        lock=ctx.model_lock):
            if not draft.done:
                yield ShownSet(record.text, draft.texts, note)
        if draft.ranking_set is not None:
            RankingStore(ctx.store).add_sets([draft.ranking_set])
            yield ShownSet.stored(draft.ranking_set, note)
            return
    raise InputError(SAME_ANSWERS)


def next_set_prompt(ctx: AppContext) -> PromptRecord:
    """The next built-in prompt, cycling, counted by the sets stored so far."""
    return ctx.prompts[RankingStore(ctx.store).count_sets() % len(ctx.prompts)]


def stream_next_set(ctx: AppContext, annotator, k, model: str | None = None) -> Iterator[ShownSet]:
    """The set to show next, as the pair mode picks pairs: with the policy, the oldest stored set of K answers this
    annotator has not ranked (imported ones included), else a new one; with another model, always a new one."""
    annotator, k = check_annotator(annotator), check_k(k)
    model = check_choice("Model", model or ctx.policy.name, ctx.model_choices())
    waiting = [s for s in RankingStore(ctx.store).next_unranked(annotator, limit=None) if s.k == k] \
        if model == ctx.policy.name else []
    if waiting:
        yield ShownSet.stored(waiting[0])
        return
    yield from stream_new_set(ctx, next_set_prompt(ctx), k, model, "" if model == ctx.policy.name else
                              f"new set: {k} answers of {model}")


def stream_set_for_prompt(ctx: AppContext, text, k, model: str | None = None) -> Iterator[ShownSet]:
    """A new set for a prompt the person typed, streamed."""
    record = typed_prompt_record(text)  # checked before anything is generated
    return stream_new_set(ctx, record, k, model, "your prompt")


def next_set(ctx: AppContext, annotator, k, model: str | None = None) -> RankingSet:
    """stream_next_set, whole."""
    for shown in stream_next_set(ctx, annotator, k, model):
        pass
    return shown.ranking_set


# -- rankings ---------------------------------------------------------------------------------------------------

def parse_levels(text, k: int) -> list[list[int]]:
    """Answer numbers best first -> rank levels of displayed positions (0-based): "3=1 4" -> [[2, 0], [3]].
    May be partial (the clicks so far); every number must exist and appear once."""
    text = check_text("Ranking", text, MAX_ORDER_CHARS, allow_empty=True)
    compact = SEPARATORS.sub(" ", re.sub(r"\s*=\s*", "=", text.strip()))  # "3 = 1" is "3=1"
    levels: list[list[int]] = []
    joining = False  # the last character was "=": the next number shares the previous one's rank
    for char in compact:
        if char == " ":
            if joining:
                raise InputError(f"Ranking {text!r}: '=' must join two answer numbers, as in '3=1 4 2'.")
            continue
        if char == "=":
            if not levels or joining:
                raise InputError(f"Ranking {text!r}: '=' must join two answer numbers, as in '3=1 4 2'.")
            joining = True
            continue
        if char not in "0123456789":
            raise InputError(f"Ranking {text!r}: {char!r} is not an answer number; use the numbers 1 to {k} "
                             "(ties as '3=1').")
        number = int(char)
        if not 1 <= number <= k:
            raise InputError(f"Ranking {text!r}: there is no answer {number}; this set has answers 1 to {k}.")
        if any(number - 1 in level for level in levels):
            raise InputError(f"Ranking {text!r}: answer {number} appears twice; rank each answer once.")
        if joining:
            levels[-1].append(number - 1)
        else:
            levels.append([number - 1])
        joining = False
    if joining:
        raise InputError(f"Ranking {text!r} ends with '='; '=' must join two answer numbers, as in '3=1 4 2'.")
    return levels


def parse_ranks(text, k: int) -> tuple[int, ...]:
    """A complete ranking (every answer 1..K exactly once, best first) -> rank per displayed position (1 = best,
    tied answers share one rank, dense as the store keeps them)."""
    levels = parse_levels(text, k)
    if not levels:
        raise InputError(f"No ranking yet: click the answers best first, or type their numbers, e.g. "
                         f"{' '.join(str(i) for i in range(k, 0, -1))!r}.")
    missing = sorted(set(range(k)) - {p for level in levels for p in level})
    if missing:
        raise InputError(f"Ranking {text!r} is not a ranking of all {k} answers (each of 1 to {k} once): "
                         f"{', '.join(str(p + 1) for p in missing)} missing; rank every answer, best first.")
    ranks = [0] * k
    for rank, level in enumerate(levels, start=1):
        for position in level:
            ranks[position] = rank
    return tuple(ranks)


def add_pick(text, number, k) -> str:
    """The ranking text after clicking answer `number` (1-based): appended as the next best."""
    k = check_k(k)
    number = check_number("Answer", number, 1, k, integer=True)
    levels = parse_levels(text, k)
    if any(number - 1 in level for level in levels):
        raise InputError(f"Answer {number} is already ranked; press Clear to start the ranking again.")
    return f"{(text or '').strip()} {number}".strip()


def order_text(ranks: tuple[int, ...]) -> str:
    """Ranks per position -> "3 > 1 = 4 > 2" (answer numbers best first)."""
    levels = sorted(set(ranks))
    return " > ".join(" = ".join(str(p + 1) for p, r in enumerate(ranks) if r == level) for level in levels)


def check_set_id(ctx: AppContext, set_id) -> RankingSet:
    if not isinstance(set_id, str) or not set_id or len(set_id) > MAX_PAIR_ID_CHARS:
        raise InputError("set_id must be the id of a displayed set of answers (up to 64 characters).")
    try:
        return RankingStore(ctx.store).get_set(set_id)
    except KeyError:
        raise InputError(f"Unknown set {set_id!r}: it is not in this run's preference store.") from None


def submit_ranking(ctx: AppContext, set_id, text, annotator, submission_id, all_bad: bool = False,
                   reveal: bool = False) -> tuple[Ranking, RankReveal]:
    """Validate everything, then write one ranking (idempotent per submission_id). `all_bad`: choice "all_bad",
    the order optional (blank text: none). With `reveal`, the reward model scores every answer."""
    annotator, submission_id = check_annotator(annotator), check_submission_id(submission_id)
    ranking_set = check_set_id(ctx, set_id)
    blank = not isinstance(text, str) or not text.strip()
    ranks = None if all_bad and blank else parse_ranks(text, ranking_set.k)
    choice = "all_bad" if all_bad else "rank"
    try:
        ranking = RankingStore(ctx.store).add_ranking(ranking_set.set_id, ranks, annotator, submission_id, choice)
    except ValueError as error:  # a re-sent submission id with other content
        raise InputError(str(error)) from None
    rm = ctx.reward_model() if reveal else None
    scores = rm.score([ranking_set.prompt] * ranking_set.k, list(ranking_set.completions)) if rm else None
    return ranking, RankReveal(ranking.choice, ranking.ranks, scores)


def undo_last_ranking(ctx: AppContext, annotator, submission_id) -> Ranking | None:
    """Withdraw this annotator's latest ranking (an "undo" revision); None when there was nothing to undo."""
    annotator, submission_id = check_annotator(annotator), check_submission_id(submission_id)
    try:
        return RankingStore(ctx.store).undo_last(annotator, submission_id)
    except ValueError as error:
        raise InputError(str(error)) from None


# -- text for the page ------------------------------------------------------------------------------------------

def progress(ctx: AppContext, annotator: str) -> dict:
    """Rankings (current, undone ones not counted) and the preference pairs they yield: C(K, 2) per ranking minus
    its tied pairs, "rank" answers only (as the export keeps them)."""
    rankings = RankingStore(ctx.store)
    mine, stats = rankings.current(annotator), rankings.stats()
    return {"mine": len(mine),
            "mine_pairs": sum(o != "tie" for r in mine if r.choice == "rank" for _, _, o in ranking_pairs(r.ranks)),
            "everyone": stats["n_rankings"], "pairs": stats["n_pairs"], "tied_pairs": stats["n_tied_pairs"],
            "sets": stats["n_sets"]}


def progress_markdown(counts: dict) -> str:
    tied = f" (+ {counts['tied_pairs']} tied, each half a win)" if counts["tied_pairs"] else ""
    return (f"**Your rankings: {counts['mine']}**, {_n(counts['mine_pairs'], 'pair')} for the reward model · "
            f"everyone: {_n(counts['everyone'], 'ranking')}, {_n(counts['pairs'], 'pair')}{tied} · "
            f"{_n(counts['sets'], 'set')} stored")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


def reveal_markdown(reveal: RankReveal | None, has_reward_model: bool, ranking_set: RankingSet | None = None) -> str:
    """What was saved and the reward model's score per answer, with the set quoted (the next one replaces it)."""
    if reveal is None:
        return ""
    quoted = "" if ranking_set is None else (
        f"**Last set** · {_clip(conversation_text(ranking_set.prompt))}\n\n"
        + "\n>\n".join(f"> **{i + 1}:** {_clip(text, 160)}" for i, text in enumerate(ranking_set.completions)) + "\n\n")
    said = "All bad" if reveal.choice == "all_bad" else "ranking"
    said = f"**{said}**" + (f" {order_text(reveal.ranks)}" if reveal.ranks is not None else "")
    if reveal.scores is None:
        hint = "" if has_reward_model else NO_RM_HINT
        return f"{quoted}Saved: {said}.{hint}"
    scores = " · ".join(f"{i + 1} = {score:+.2f}" for i, score in enumerate(reveal.scores))
    rm_ranks = tuple(sorted(set(reveal.scores), reverse=True).index(s) + 1 for s in reveal.scores)
    agreement = reveal.agreement()
    verdict = f" It orders {agreement[0]} of your {agreement[1]} untied pairs as you did." if agreement and \
        agreement[1] else ""
    return f"{quoted}Saved: {said}. Reward model: {scores}; its order {order_text(rm_ranks)}.{verdict}"
