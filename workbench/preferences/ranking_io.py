"""Rankings in and out: each ranking becomes its C(K, 2) preference pairs in TRL's format; a ranking format reads in.

Export (`export_ranking_pairs`): one row per pair of displayed positions i < j of every current ranking, the same
columns as `io.export_preferences` (prompt, chosen, rejected, choice, pair_id, annotator) plus `ranking_id`, so the
pairs of one ranking stay together (the reward model trains them in one group, weighted once: reward/listwise.py).
`choice` is "A" when the upper of the two (position i) is ranked better, "B" when the lower is, "tie" for equal
ranks (dropped unless ties="keep"; chosen is then the upper one, as a tie pair keeps its displayed order).

Import (`import_rankings`), one row per ranking, validated like `io.import_preferences` (every row checked first;
a bad row writes nothing unless skip_invalid=True; importing twice adds nothing):

    {"prompt": "Describe a beach.", "completions": ["Warm sand...", "Blue water...", "A beach."], "ranks": [2, 1, 3]}

prompt: text or chat messages; completions: 2 to 9 different texts (or one-assistant-message lists); ranks: one per
completion, 1 = best, ties equal; optional: choice ("rank" or "all_bad"), annotator.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter

import datasets

from workbench.preferences.io import _MESSAGES, _TEXT, IMPORT_MODEL, ImportReport, PreferenceImportError, \
    _completion, _prompt
from workbench.preferences.rankings import MAX_K, MIN_K, RankingSet, RankingStore, dense_ranks, ranking_pairs
from workbench.preferences.sources import RowError, read_rows
from workbench.preferences.store import MAX_ANNOTATOR_CHARS, PreferenceStore

RANKING_COLUMNS = ("prompt", "completions", "ranks")


def export_ranking_pairs(store: PreferenceStore, keep: tuple[str, ...] = ("rank",), ties: str = "drop",
                         annotator: str | None = None) -> tuple[datasets.Dataset, dict]:
    """The C(K, 2) pairs of every current ranking whose choice is in `keep` ("rank", and "all_bad" rankings that
    carry an order), and a report. ties: "drop" (default, as pair exports drop ties) or "keep" (choice "tie")."""
    if ties not in ("drop", "keep"):
        raise ValueError(f"ties: {ties!r}; choose 'drop' (default) or 'keep' (rows with choice 'tie').")
    unknown = sorted(set(keep) - {"rank", "all_bad"})
    if unknown:
        raise ValueError(f"keep: {unknown} carry no order; keep 'rank' and/or 'all_bad'.")
    rankings = RankingStore(store)
    sets = {s.set_id: s for s in rankings.sets()}
    current = rankings.current(annotator)
    kept = [r for r in current if r.choice in keep and r.ranks is not None]
    conversational = any(not isinstance(sets[r.set_id].prompt, str) for r in kept)
    columns: dict[str, list] = {name: [] for name in ("prompt", "chosen", "rejected", "choice", "pair_id",
                                                      "annotator", "ranking_id")}
    outcomes = Counter()
    for ranking in kept:
        ranking_set = sets[ranking.set_id]
        prompt = ranking_set.prompt
        if conversational and isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        for i, j, outcome in ranking_pairs(ranking.ranks):
            outcomes[outcome] += 1
            if outcome == "tie" and ties == "drop":
                continue
            chosen, rejected = ranking_set.completions[j if outcome == "B" else i], \
                ranking_set.completions[i if outcome == "B" else j]
            if conversational:
                chosen, rejected = [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
            for name, value in zip(columns, (prompt, chosen, rejected, outcome, f"{ranking.set_id}:{i}-{j}",
                                             ranking.annotator, ranking.ranking_id)):
                columns[name].append(value)
    kind = _MESSAGES if conversational else _TEXT
    features = datasets.Features({"prompt": kind, "chosen": kind, "rejected": kind, "choice": _TEXT,
                                  "pair_id": _TEXT, "annotator": _TEXT, "ranking_id": datasets.Value("int64")})
    report = {"n_rows": len(columns["prompt"]), "n_rankings": len(kept), "format": "conversational" if conversational
              else "text", "pairs": dict(outcomes), "dropped_ties": outcomes["tie"] if ties == "drop" else 0,
              "dropped_rankings": dict(Counter(r.choice for r in current if r not in kept))}
    return datasets.Dataset.from_dict(columns, features=features), report


def is_ranking_source(rows: list) -> bool:
    """Whether rows read from a source are rankings (a `completions` column) rather than pairs."""
    return any(isinstance(row, dict) and "completions" in row for _, row in rows)


def import_rankings(source, store: PreferenceStore | None = None, *, max_chars: int = 8000,
                    skip_invalid: bool = False, annotator: str = "import", split: str | None = None,
                    limit: int | None = None) -> ImportReport:
    """Validate a ranking dataset and (given a store) add each row as a RankingSet (displayed in the row's order)
    and a ranking. Ids derive from the row's content, so importing twice adds nothing."""
    name, rows, unreadable = read_rows(source, split, limit)
    if not rows and not unreadable:
        raise ValueError(f"{name}: no rows to import (the source is empty); check the file.")
    errors, records = list(unreadable), []
    for number, row in rows:
        record, row_errors = _validate(number, row, max_chars, annotator)
        errors += row_errors
        if record is not None:
            records.append(record)
    errors.sort(key=lambda error: error.row)
    if errors and not skip_invalid:
        raise PreferenceImportError(name, errors)
    report = ImportReport(name, len(rows) + len(unreadable), len(records), 0, len({e.row for e in errors}), errors)
    if store is None:
        return report
    rankings, now = RankingStore(store), time.time()
    with store.transaction():  # one commit: the whole import lands, or none of it
        for prompt, completions, ranks, choice, who in records:
            models = [IMPORT_MODEL] * len(completions)
            set_id = RankingSet.make_id(prompt, completions, models)
            rankings.add_sets([RankingSet(set_id, prompt, completions, models, range(len(completions)),
                                          {"import": {"form": "ranking"}}, "", now)])
            content = json.dumps([prompt, completions, ranks, choice, who], ensure_ascii=False, sort_keys=True)
            submission_id = "import-ranking-" + hashlib.sha256(content.encode()).hexdigest()[:24]
            report.n_imported += not rankings.has_submission(submission_id)
            rankings.add_ranking(set_id, ranks, who, submission_id, choice=choice)
    return report


def _validate(number: int, row, max_chars: int, default_annotator: str):
    """(prompt, completions, ranks, choice, annotator) of a valid row, or None and every error found in it."""
    if not isinstance(row, dict):
        return None, [RowError(number, "(line)", f"must be an object with {', '.join(RANKING_COLUMNS)}, got "
                                                 f"{type(row).__name__}.")]
    errors, values = [], {}
    for column in RANKING_COLUMNS:
        if row.get(column) is None:
            errors.append(RowError(number, column, f"missing; every ranking row needs {', '.join(RANKING_COLUMNS)}."))
    if row.get("prompt") is not None:
        try:
            values["prompt"] = _prompt(row["prompt"], max_chars)
        except ValueError as error:
            errors.append(RowError(number, "prompt", str(error)))
    completions = row.get("completions")
    if completions is not None:
        if not isinstance(completions, list) or not MIN_K <= len(completions) <= MAX_K:
            errors.append(RowError(number, "completions", f"must be a list of {MIN_K} to {MAX_K} completions, got "
                                                          f"{type(completions).__name__} {completions!r:.60}."))
        else:
            texts = []
            for index, completion in enumerate(completions, start=1):
                try:
                    texts.append(_completion(completion, max_chars))
                except ValueError as error:
                    errors.append(RowError(number, "completions", f"completion {index}: {error}"))
            if len(texts) == len(completions) and len(set(texts)) != len(texts):
                errors.append(RowError(number, "completions", "two completions are the same text; rank different "
                                                              "answers."))
            values["completions"] = texts
    choice = row.get("choice") or "rank"
    if choice not in ("rank", "all_bad"):
        errors.append(RowError(number, "choice", f"must be 'rank' or 'all_bad', got {choice!r:.40}."))
    if row.get("ranks") is not None and isinstance(completions, list):
        try:
            values["ranks"] = dense_ranks(row["ranks"], len(completions), "ranks")
        except ValueError as error:
            errors.append(RowError(number, "ranks", str(error).removeprefix("ranks: ")))
    who = row.get("annotator") or default_annotator
    if not isinstance(who, str) or not who.strip() or len(who) > MAX_ANNOTATOR_CHARS:
        errors.append(RowError(number, "annotator", f"must be text of 1 to {MAX_ANNOTATOR_CHARS} characters."))
    if errors:
        return None, errors
    return (values["prompt"], values["completions"], values["ranks"], choice, who), []
