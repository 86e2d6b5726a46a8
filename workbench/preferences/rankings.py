"""Rankings of K completions of one prompt (K = 2 ... 9), in the same store and with the same guarantees as labels.

InstructGPT (Ouyang et al. 2022, section 3.5) had labelers rank 4 to 9 completions per prompt and trained on all
C(K, 2) pairs of each ranking: reading one prompt and K answers costs a person far less than K/2 separate pairs.

    RankingSet   K completions of one prompt AS DISPLAYED (top to bottom) and `display_order`, the sample shown at
                 each position (a random permutation, recorded, so a preference for the top slot can be measured)
    Ranking      one person's answer: `ranks[i]` is the rank of displayed completion i (1 = best; ties share a
                 rank), choice "rank"; "all_bad" (ranks optional: the order among bad answers); "skip"; "undo"

Rankings are append-only like labels: a changed ranking is a new revision of (set, annotator), an undo a revision
with choice "undo", every write names a client-chosen `submission_id` (a re-send returns what it made), and a
ranking is acknowledged only once committed (WAL, synchronous=FULL: kill -9 loses nothing acknowledged).
Export into TRL's pair format and import: `ranking_io.py`. Training on them: `workbench/reward/listwise.py`.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

from workbench.data import PromptRecord
from workbench.generation import Completion, generate, generate_stream, prompt_text
from workbench.preferences.pairs import PairConfig, _sampling
from workbench.preferences.schema import Messages, check_prompt
from workbench.preferences.store import (
    MAX_ANNOTATOR_CHARS,
    MAX_COMMENT_CHARS,
    MAX_SUBMISSION_CHARS,
    PreferenceStore,
    _check_text,
    _limit,
)

MIN_K, MAX_K = 2, 9  # InstructGPT ranked 4 to 9; 2 is a pair
RANK_CHOICES = ("rank", "all_bad", "skip")  # what a person can answer; "all_bad" may still order the answers
UNDO = "undo"
DEFAULT_K = 4


@dataclass(frozen=True)
class RankingSet:
    set_id: str  # stable id from the content, see `make_id`
    prompt: str | Messages
    completions: tuple[str, ...]  # as displayed, top to bottom
    models: tuple[str, ...]  # the model that wrote each displayed completion
    display_order: tuple[int, ...]  # display position -> index of the sample generated (a random permutation)
    generation: dict = field(default_factory=dict)  # sampling settings (+ "finished": per displayed completion)
    prompt_id: str = ""
    created_at: float = 0.0

    def __post_init__(self):
        where = f"RankingSet {self.set_id!r}"
        if not isinstance(self.set_id, str) or not self.set_id:
            raise ValueError(f"RankingSet: set_id must be a non-empty string; use RankingSet.make_id(...).")
        check_prompt(self.prompt, where)
        object.__setattr__(self, "completions", tuple(self.completions))
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "display_order", tuple(self.display_order))
        k = len(self.completions)
        if not MIN_K <= k <= MAX_K:
            raise ValueError(f"{where}: {k} completions; a ranking holds {MIN_K} to {MAX_K}.")
        if not all(isinstance(c, str) and c.strip() for c in self.completions):
            raise ValueError(f"{where}: every completion must be non-empty text.")
        if len(set(self.completions)) != k:
            raise ValueError(f"{where}: two completions are the same text; rank K different answers.")
        if len(self.models) != k or sorted(self.display_order) != list(range(k)):
            raise ValueError(f"{where}: models must name {k} models and display_order be a permutation of 0..{k - 1}.")

    @property
    def k(self) -> int:
        return len(self.completions)

    @property
    def prompt_text(self) -> str:
        return prompt_text(self.prompt)

    @staticmethod
    def make_id(prompt, completions, models) -> str:
        """16 hex characters of sha256 over the content: the same set always gets the same id."""
        content = json.dumps([prompt, list(completions), list(models)], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(content.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Ranking:
    ranking_id: int  # row id, increasing in commit order
    submission_id: str
    set_id: str
    annotator: str
    choice: str  # "rank", "all_bad", "skip" or "undo"
    ranks: tuple[int, ...] | None  # rank per displayed completion, 1 = best, dense (1, 2, 2, 3); None: unordered
    revision: int  # 1, 2, ... per (set, annotator)
    comment: str | None
    created_at: float


def dense_ranks(ranks, k: int, where: str = "ranks") -> tuple[int, ...]:
    """Ranks as given (1 = best, ties equal; any increasing numbers) -> dense ranks 1..m, validated."""
    if not isinstance(ranks, (list, tuple)) or len(ranks) != k:
        raise ValueError(f"{where}: give one rank per completion ({k}), got {ranks!r:.80}.")
    if not all(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= k for r in ranks):
        raise ValueError(f"{where}: ranks must be whole numbers 1..{k} (1 = best, ties share one), got {ranks!r:.80}.")
    levels = {value: level for level, value in enumerate(sorted(set(ranks)), start=1)}
    return tuple(levels[r] for r in ranks)


def ranks_from_order(order: list[int], k: int) -> tuple[int, ...]:
    """Clicks best first (`order[0]` = the displayed position clicked first) -> ranks per position; positions not
    clicked share the last rank (the app's "rank the rest equal")."""
    if len(set(order)) != len(order) or not all(isinstance(p, int) and 0 <= p < k for p in order):
        raise ValueError(f"order: distinct displayed positions 0..{k - 1} expected, got {order!r:.80}.")
    ranks = [len(order) + 1] * k
    for rank, position in enumerate(order, start=1):
        ranks[position] = rank
    return dense_ranks(ranks, k)


def ranking_pairs(ranks: tuple[int, ...]) -> list[tuple[int, int, str]]:
    """All C(K, 2) position pairs (i < j) of a ranking with their outcome: "A" (i ranked better), "B" or "tie"."""
    return [(i, j, "A" if ranks[i] < ranks[j] else "B" if ranks[i] > ranks[j] else "tie")
            for i in range(len(ranks)) for j in range(i + 1, len(ranks))]


class RankingStore:
    """Ranking sets and rankings in a `PreferenceStore`'s SQLite file (tables `ranking_sets`, `rankings`)."""

    def __init__(self, store: PreferenceStore):
        self.store = store

    def _ready(self) -> bool:
        return self.store.has_rankings()  # False only for an old store opened read-only: it holds no rankings

    def add_sets(self, sets) -> int:
        """Store ranking sets; returns how many were new. Re-adding a stored set is a no-op."""
        rows = [_set_row(s) for s in sets]
        added = 0
        with self.store.transaction() as connection:
            for row in rows:
                stored = connection.execute("SELECT * FROM ranking_sets WHERE set_id = ?", (row[0],)).fetchone()
                if stored is None:
                    connection.execute(f"INSERT INTO ranking_sets VALUES ({', '.join('?' * len(row))})", row)
                    added += 1
                elif tuple(stored)[1:4] != row[1:4]:
                    raise ValueError(f"{self.store.path}: set_id {row[0]!r} is already stored with other content; "
                                     "build ids with RankingSet.make_id(...). Nothing was added.")
        return added

    def get_set(self, set_id: str) -> RankingSet:
        row = self.store.connection().execute("SELECT * FROM ranking_sets WHERE set_id = ?", (set_id,)).fetchone() \
            if self._ready() else None
        if row is None:
            raise KeyError(f"set_id {set_id!r} is not in {self.store.path}; list stored sets with sets().")
        return _set_from_row(row)

    def count_sets(self) -> int:
        return self.store.connection().execute("SELECT COUNT(*) FROM ranking_sets").fetchone()[0] \
            if self._ready() else 0

    def sets(self, limit: int | None = None) -> list[RankingSet]:
        if not self._ready():
            return []
        rows = self.store.connection().execute("SELECT * FROM ranking_sets ORDER BY rowid LIMIT ?", (_limit(limit),))
        return [_set_from_row(row) for row in rows]

    def add_ranking(self, set_id: str, ranks, annotator: str, submission_id: str, choice: str = "rank",
                    comment: str | None = None) -> Ranking:
        """Append a ranking and return it once committed; re-sending a submission_id returns the one it made.
        `ranks`: one per displayed completion (1 = best, ties equal); required for "rank", optional for "all_bad"."""
        if choice not in RANK_CHOICES:
            raise ValueError(f"choice must be one of {RANK_CHOICES}, got {choice!r}.")
        _check_text("annotator", annotator, MAX_ANNOTATOR_CHARS)
        _check_text("submission_id", submission_id, MAX_SUBMISSION_CHARS)
        if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS):
            raise ValueError(f"comment must be text of at most {MAX_COMMENT_CHARS} characters, or None.")
        if choice == "rank" and ranks is None:
            raise ValueError("ranks: a 'rank' answer needs one rank per completion; send choice='skip' to pass.")
        with self.store.transaction() as connection:
            existing = self._existing(connection, submission_id)
            normalised = None
            if ranks is not None and choice != "skip":
                normalised = dense_ranks(list(ranks), self.get_set(set_id).k)
            if existing is not None:
                _check_resend(existing, dict(set_id=set_id, choice=choice, annotator=annotator, ranks=normalised,
                                             comment=comment))
                return existing
            self.get_set(set_id)  # KeyError names a set that is not stored
            return self._append(connection, set_id, choice, normalised, annotator, submission_id, comment)

    def undo_last(self, annotator: str, submission_id: str) -> Ranking | None:
        """Withdraw this annotator's most recent ranking that still counts (a revision "undo"); None if none."""
        _check_text("annotator", annotator, MAX_ANNOTATOR_CHARS)
        _check_text("submission_id", submission_id, MAX_SUBMISSION_CHARS)
        with self.store.transaction() as connection:
            existing = self._existing(connection, submission_id)
            if existing is not None:
                _check_resend(existing, dict(choice=UNDO, annotator=annotator))
                return existing
            row = connection.execute(f"{_CURRENT} AND r.annotator = ? AND r.choice != ? ORDER BY r.ranking_id DESC "
                                     "LIMIT 1", (annotator, UNDO)).fetchone()
            if row is None:
                return None
            return self._append(connection, row["set_id"], UNDO, None, annotator, submission_id, None)

    def current(self, annotator: str | None = None, include_undone: bool = False) -> list[Ranking]:
        """The latest revision per (set, annotator), in commit order; undone ones only with include_undone."""
        if not self._ready():
            return []
        sql, params = _CURRENT, []
        if annotator is not None:
            sql, params = f"{sql} AND r.annotator = ?", [annotator]
        if not include_undone:
            sql, params = f"{sql} AND r.choice != ?", [*params, UNDO]
        return [_ranking(row) for row in self.store.connection().execute(f"{sql} ORDER BY r.ranking_id", params)]

    def history(self, set_id: str) -> list[Ranking]:
        """Every revision of every annotator on one set, in commit order."""
        self.get_set(set_id)
        rows = self.store.connection().execute("SELECT * FROM rankings WHERE set_id = ? ORDER BY ranking_id",
                                               (set_id,))
        return [_ranking(row) for row in rows]

    def has_submission(self, submission_id: str) -> bool:
        return self._ready() and self._existing(self.store.connection(), submission_id) is not None

    def next_unranked(self, annotator: str, limit: int | None = 1) -> list[RankingSet]:
        """Sets this annotator has no current ranking for, oldest first."""
        done = {r.set_id for r in self.current(annotator)}
        return [s for s in self.sets() if s.set_id not in done][: None if limit is None else _limit(limit)]

    def stats(self) -> dict:
        """Counts (sets, rankings per choice/annotator/K), the pairs they yield and the texts read, and the share of
        top ranks at each display position (1/K each when the random order works and nobody favours a slot)."""
        with self.store._snapshot():
            current, sets = self.current(), {s.set_id: s for s in self.sets()}
        ranked = [r for r in current if r.ranks is not None and r.choice in ("rank", "all_bad")]
        outcomes = Counter(outcome for r in ranked if r.choice == "rank" for _, _, outcome in ranking_pairs(r.ranks))
        top = Counter(position for r in ranked if r.choice == "rank" for position, rank in enumerate(r.ranks)
                      if rank == 1)
        n_top = sum(top.values())
        return {"n_sets": len(sets), "n_rankings": len(current),
                "per_choice": {c: sum(r.choice == c for r in current) for c in RANK_CHOICES},
                "per_annotator": dict(Counter(r.annotator for r in current)),
                "per_k": {str(k): n for k, n in sorted(Counter(sets[r.set_id].k for r in current).items())},
                "n_pairs": outcomes["A"] + outcomes["B"], "n_tied_pairs": outcomes["tie"],
                "n_texts_read": sum(sets[r.set_id].k for r in current if r.choice != "skip"),
                "top_rank_by_position": {str(p): round(n / n_top, 4) for p, n in sorted(top.items())} if n_top else {}}

    def _existing(self, connection, submission_id: str) -> Ranking | None:
        row = connection.execute("SELECT * FROM rankings WHERE submission_id = ?", (submission_id,)).fetchone()
        return None if row is None else _ranking(row)

    def _append(self, connection, set_id, choice, ranks, annotator, submission_id, comment) -> Ranking:
        """Insert the next revision of (set, annotator); the caller holds the write lock, so the MAX cannot race."""
        revision = connection.execute("SELECT COALESCE(MAX(revision), 0) + 1 FROM rankings WHERE set_id = ? AND "
                                      "annotator = ?", (set_id, annotator)).fetchone()[0]
        created_at = time.time()
        cursor = connection.execute(
            "INSERT INTO rankings (submission_id, set_id, annotator, choice, ranks, revision, comment, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (submission_id, set_id, annotator, choice, None if ranks is None else json.dumps(list(ranks)), revision,
             comment, created_at))
        return Ranking(cursor.lastrowid, submission_id, set_id, annotator, choice, ranks, revision, comment,
                       created_at)


_CURRENT = ("SELECT * FROM rankings r WHERE r.revision = "
            "(SELECT MAX(m.revision) FROM rankings m WHERE m.set_id = r.set_id AND m.annotator = r.annotator)")


def _check_resend(ranking: Ranking, sent: dict) -> None:
    differing = sorted(name for name, value in sent.items() if getattr(ranking, name) != value)
    if differing:
        raise ValueError(f"submission_id {ranking.submission_id!r} already made ranking {ranking.ranking_id} with "
                         f"different {differing}; a re-send must repeat the request exactly, a new ranking needs a "
                         "new submission_id.")


def _set_row(ranking_set: RankingSet) -> tuple:
    if not isinstance(ranking_set, RankingSet):
        raise ValueError(f"add_sets expects RankingSet objects, got {type(ranking_set).__name__}.")
    try:
        generation = json.dumps(ranking_set.generation, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"RankingSet {ranking_set.set_id!r}: generation settings must be JSON ({error}).") from None
    dump = lambda value: json.dumps(value, ensure_ascii=False, sort_keys=True)  # noqa: E731
    return (ranking_set.set_id, dump(ranking_set.prompt), dump(list(ranking_set.completions)),
            dump(list(ranking_set.models)), json.dumps(list(ranking_set.display_order)), generation,
            ranking_set.prompt_id, float(ranking_set.created_at))


def _set_from_row(row) -> RankingSet:
    values = dict(row)
    for name in ("prompt", "completions", "models", "display_order", "generation"):
        values[name] = json.loads(values[name])
    return RankingSet(**values)


def _ranking(row) -> Ranking:
    values = dict(row)
    values["ranks"] = None if values["ranks"] is None else tuple(json.loads(values["ranks"]))
    return Ranking(**values)


# -- sampling K completions and ranking them with a simulated labeler ----------------------------------------------

def make_ranking_sets(prompts: list[PromptRecord], policy, k: int = DEFAULT_K, config: PairConfig | None = None,
                      model_name: str = "policy") -> list[RankingSet]:
    """One set of K samples per prompt, drawn as `make_pairs` draws 2: one batch of K copies of each prompt, the
    same PairConfig (answer shaping included), so rankings rank complete answers. Display order: a random
    permutation per set from config.seed. Sets with a repeated or empty completion are dropped."""
    if not MIN_K <= k <= MAX_K:
        raise ValueError(f"k={k}: a ranking holds {MIN_K} to {MAX_K} completions.")
    config = config or PairConfig()
    per_batch = max(1, config.batch_size // k * 2)  # prompts per batch: about as many rows as make_pairs' batches
    order, sets = random.Random(config.seed), []
    for start in range(0, len(prompts), per_batch):
        chunk = prompts[start : start + per_batch]
        rows = [record.prompt for record in chunk for _ in range(k)]  # (len(chunk) * K,) grouped per prompt
        samples = generate(*policy, rows, replace(_sampling(config, config.seed + k * start), batch_size=len(rows)))
        for index, record in enumerate(chunk):
            group = samples[index * k : (index + 1) * k]
            if not _distinct(group):
                continue
            display = list(range(k))
            order.shuffle(display)  # drawn for kept sets only, so a dropped set does not shift the others' order
            sets.append(_assemble_set(record, group, display, config, model_name))
    return sets


@dataclass
class RankingDraft:
    """What `stream_ranking_set` yields: the K answers as displayed (top to bottom) while they are written."""

    texts: list[str]
    done: bool = False  # decoding has finished
    ranking_set: RankingSet | None = None  # when done: the set, or None when two answers came out equal or empty


def stream_ranking_set(record: PromptRecord, policy, k: int = DEFAULT_K, config: PairConfig | None = None,
                       model_name: str = "policy", lock=None) -> Iterator[RankingDraft]:
    """`make_ranking_sets` for one prompt, streamed: the same set for the same config, its K answers growing
    together (one batched decode, as `pairs.stream_pair` streams a pair). `lock`: see `generate_stream`."""
    if not MIN_K <= k <= MAX_K:
        raise ValueError(f"k={k}: a ranking holds {MIN_K} to {MAX_K} completions.")
    config = config or PairConfig()
    display = list(range(k))
    random.Random(config.seed).shuffle(display)  # the order make_ranking_sets draws for this (only) set
    sampling = replace(_sampling(config, config.seed), batch_size=k)  # make_ranking_sets' seed for a first chunk
    for update in generate_stream(*policy, [record.prompt] * k, sampling, lock=lock):
        yield RankingDraft([update.texts[i] for i in display])
    group = update.completions
    ranking_set = _assemble_set(record, group, display, config, model_name) if _distinct(group) else None
    yield RankingDraft([group[i].text for i in display], done=True, ranking_set=ranking_set)


def _distinct(group: list[Completion]) -> bool:
    """K different, non-empty answers: a repeated one would make a pair with nothing to compare."""
    texts = [c.text for c in group]
    return len(set(texts)) == len(texts) and all(t.strip() for t in texts)


def _assemble_set(record: PromptRecord, group: list[Completion], display: list[int], config: PairConfig,
                  model_name: str) -> RankingSet:
    k, shown = len(group), [group[i].text for i in display]
    return RankingSet(RankingSet.make_id(record.prompt, shown, [model_name] * k), record.prompt, shown,
                      [model_name] * k, display,
                      {**asdict(config), "k": k, "finished": [group[i].finished for i in display]},
                      record.id, time.time())


def rank_with(store: RankingStore, sets: list[RankingSet], labeler) -> int:
    """Rank every set once with a SimulatedLabeler; submission ids derive from the set, so a re-run adds nothing."""
    from workbench.preferences.simulate import simulated_annotator_name

    annotator, added = simulated_annotator_name(labeler), 0
    for ranking_set in sets:
        submission_id = f"{annotator}:{ranking_set.set_id}"
        if store.has_submission(submission_id):
            continue
        store.add_ranking(ranking_set.set_id, labeler.rank(ranking_set.prompt_text, list(ranking_set.completions)),
                          annotator, submission_id)
        added += 1
    return added


def collect_simulated_rankings(store: PreferenceStore, policy, n_rankings: int, labeler, k: int = DEFAULT_K,
                               config: PairConfig | None = None, model_name: str = "policy") -> dict:
    """Sample sets of K from the built-in train prompts, store them, rank them. Returns counts and seconds."""
    from workbench.data import builtin_prompts
    from workbench.preferences.simulate import prompts_for

    config = config or PairConfig()
    records, per_round = prompts_for(n_rankings), len(builtin_prompts("train"))
    started, sets = time.perf_counter(), []
    for round_start in range(0, len(records), per_round):  # each pass over the prompts uses fresh seeds
        round_config = replace(config, seed=config.seed + 1000 * (round_start // per_round))
        sets += make_ranking_sets(records[round_start : round_start + per_round], policy, k, round_config, model_name)
    generation_seconds = time.perf_counter() - started
    rankings = RankingStore(store)
    rankings.add_sets(sets)
    started = time.perf_counter()
    added = rank_with(rankings, sets, labeler)
    return {"k": k, "n_sets": len(sets), "n_new_rankings": added, "n_pairs_yielded": added * k * (k - 1) // 2,
            "generation_seconds": round(generation_seconds, 2),
            "labelling_seconds": round(time.perf_counter() - started, 2)}
