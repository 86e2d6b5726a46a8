"""Preference datasets in and out of the store.

Export gives one row per current label, in TRL's preference format with an explicit prompt, which TRL's
`RewardTrainer` and `DPOTrainer` take as is:

    prompt     the prompt: text, or chat messages [{"role", "content"}, ...]
    chosen     the preferred completion: text, or [{"role": "assistant", "content": ...}] when prompts are chat
    rejected   the other completion, in the same form
    choice     the label ("A"/"B" = a real preference; tie/both_bad/skip only when asked for, chosen = left side)
    pair_id, annotator   where the row came from

`form="implicit"` writes TRL's implicit-prompt form instead (no prompt column; each side holds the prompt too).

Import reads every form TRL's trainers read (explicit or implicit prompt, text or chat, HH dialogues: see
`formats.py`), with `choice`, `annotator`, `score_chosen`, `score_rejected` and `margin` optional, from .jsonl,
.parquet, a `save_to_disk` folder, a folder `load_dataset` reads, a Hub dataset name or a `datasets.Dataset`.
Every row is validated first; an import with a bad row writes nothing unless skip_invalid=True.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import numbers
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import datasets

from workbench.preferences import formats
from workbench.preferences.schema import CHOICES, Pair
from workbench.preferences.sources import RowError, check_columns, read_rows, renamed
from workbench.preferences.store import MAX_ANNOTATOR_CHARS, PreferenceStore

IMPORT_MODEL = "import"  # model_a/model_b of imported pairs: which model wrote them is unknown
_TEXT = datasets.Value("string")
_MESSAGES = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
_CSV_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")  # first characters a spreadsheet may run as a formula (OWASP)
SCORE_COLUMNS = ("score_chosen", "score_rejected", "margin")  # optional numbers, kept with the pair


class PreferenceImportError(ValueError):
    """A preference dataset with invalid rows; `.errors` lists them all, the message the first few."""

    def __init__(self, source: str, errors: list[RowError]):
        self.source, self.errors = source, errors
        super().__init__(self.describe("pass skip_invalid=True to import only the valid ones"))

    def describe(self, skip_hint: str) -> str:
        """The message, with the way to skip invalid rows in the caller's terms (a CLI flag, a keyword argument)."""
        shown = "\n  ".join(str(error) for error in self.errors[:10])
        more = f"\n  ... and {len(self.errors) - 10} more" if len(self.errors) > 10 else ""
        return (f"{self.source}: {len(self.errors)} invalid row(s); nothing was imported.\n  {shown}{more}\n"
                f"Fix these rows, or {skip_hint}.")


@dataclass
class ImportReport:
    source: str
    n_rows: int  # rows (jsonl: non-blank lines) read from the source
    n_valid: int
    n_imported: int  # labels newly written; 0 when only validating (store=None) or when all were there already
    n_skipped: int  # invalid rows left out (only with skip_invalid=True)
    errors: list[RowError] = field(default_factory=list)


# -- export -------------------------------------------------------------------------------------------------------

def export_preferences(store: PreferenceStore, keep: tuple[str, ...] = ("A", "B"), annotator: str | None = None,
                       form: str = "explicit") -> tuple[datasets.Dataset, dict]:
    """Current labels whose choice is in `keep` as a preference dataset, and a report of what was kept and dropped.

    Conversational when any exported prompt is chat messages (plain prompts then become one user message), plain
    text otherwise: TRL decides per row, so one dataset must not mix the two. Pairs whose two completions are
    identical are dropped: they carry no preference. `form="implicit"` drops the prompt column and puts the prompt
    at the start of both sides (pairs imported from HH dialogues become that dialogue text again). Imported scores
    come back as score_chosen/score_rejected (margin only when every row has one: TRL's collator needs all or none).
    """
    unknown = sorted(set(keep) - set(CHOICES))
    if unknown:
        raise ValueError(f"keep: unknown choice(s) {unknown}; choose from {CHOICES}.")
    if form not in ("explicit", "implicit"):
        raise ValueError(f"form: {form!r} is not a form the export writes; choose 'explicit' (prompt, chosen, "
                         "rejected) or 'implicit' (chosen, rejected, each starting with the prompt).")
    labels = store.current_labels(annotator)
    pairs = {pair.pair_id: pair for pair in store.pairs()}
    kept = [label for label in labels if label.choice in keep]
    n_identical = len(kept)
    kept = [label for label in kept if pairs[label.pair_id].completion_a != pairs[label.pair_id].completion_b]
    n_identical -= len(kept)
    conversational = any(not isinstance(pairs[label.pair_id].prompt, str) and not (
        form == "implicit" and _imported(pairs[label.pair_id]).get("form") == "hh") for label in kept)
    columns: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "choice": [], "pair_id": [],
                                "annotator": [], **{name: [] for name in SCORE_COLUMNS}}
    for label in kept:
        pair = pairs[label.pair_id]
        # A (and every non-B choice) keeps the displayed order; B prefers the right side.
        chosen, rejected = (pair.completion_b, pair.completion_a) if label.choice == "B" else (
            pair.completion_a, pair.completion_b)
        prompt = pair.prompt
        if form == "implicit":
            hh = _imported(pair).get("form") == "hh"
            chosen, rejected = formats.implicit_sides(prompt, chosen, rejected, hh, conversational)
        elif conversational:
            prompt = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            chosen, rejected = [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
        scores = _scores(pair, "b" if label.choice == "B" else "a")
        for name, value in zip(columns, (prompt, chosen, rejected, label.choice, label.pair_id, label.annotator,
                                         *scores)):
            columns[name].append(value)
    kind = _MESSAGES if conversational else _TEXT
    features = {"prompt": kind, "chosen": kind, "rejected": kind, "choice": _TEXT, "pair_id": _TEXT,
                "annotator": _TEXT, **{name: datasets.Value("float64") for name in SCORE_COLUMNS}}
    if form == "implicit":
        del columns["prompt"], features["prompt"]
    for name in SCORE_COLUMNS:
        values = columns[name]
        if all(value is None for value in values) or (name == "margin" and None in values):
            del columns[name], features[name]
    report = {"n_rows": len(kept), "format": "conversational" if conversational else "text",
              "kept": dict(Counter(label.choice for label in kept)),
              "dropped": dict(Counter(label.choice for label in labels if label.choice not in keep)),
              "dropped_identical": n_identical}
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features)), report


def _imported(pair: Pair) -> dict:
    """What an import kept with the pair (its source form, its scores); empty for generated pairs."""
    return pair.generation.get("import", {})


def _scores(pair: Pair, chosen_side: str) -> tuple[float | None, float | None, float | None]:
    """(score_chosen, score_rejected, margin) for a label preferring `chosen_side`; the imported margin only holds
    for the side the import chose."""
    kept = _imported(pair)
    if "chosen_side" not in kept:
        return None, None, None
    same = kept["chosen_side"] == chosen_side
    first, second = kept.get("score_chosen"), kept.get("score_rejected")
    return (first, second, kept.get("margin")) if same else (second, first, None)


@contextmanager
def _atomic(path: str | Path) -> Iterator[Path]:
    """A temporary file next to `path`, fsynced and renamed onto it on success, deleted on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")  # not mkstemp: keep the umask's mode
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)  # atomic on POSIX: readers see the old file or the new one, never half
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def to_jsonl(dataset: datasets.Dataset, path: str | Path) -> Path:
    """One JSON object per line, UTF-8."""
    with _atomic(path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        for row in dataset:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def to_parquet(dataset: datasets.Dataset, path: str | Path) -> Path:
    with _atomic(path) as temporary:
        dataset.to_parquet(str(temporary))
    return Path(path)


def to_csv(dataset: datasets.Dataset, path: str | Path) -> Path:
    """For reading in a spreadsheet: message lists become JSON text, and cells a spreadsheet could run as a formula
    (starting with = + - @ tab or CR) get a leading single quote. Lossy by design: import .jsonl or .parquet instead."""
    with _atomic(path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(dataset.column_names)
        for row in dataset:
            writer.writerow([_csv_cell(value) for value in row.values()])
    return Path(path)


def _csv_cell(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return "'" + text if text.startswith(_CSV_TRIGGERS) else text


# -- import -------------------------------------------------------------------------------------------------------

def import_preferences(source: str | Path | datasets.Dataset, store: PreferenceStore | None = None, *,
                       max_chars: int = 8000, skip_invalid: bool = False, annotator: str = "import",
                       split: str | None = None, limit: int | None = None, prompt_column: str = "prompt",
                       chosen_column: str = "chosen", rejected_column: str = "rejected") -> ImportReport:
    """Validate a preference dataset and (given a store) add it: each row becomes a Pair and a label, by the row's
    `annotator` column, else by `annotator`. Without a `choice` column, chosen is put on a side drawn from the row's
    content and the label names it ("A" = left), so position-bias figures stay meaningful.
    A `choice` column (as `export_preferences` writes it) is honoured, so export -> import -> export is exact: "B"
    puts chosen back on the right and labels "B"; tie/both_bad/skip keep chosen on the left with that label.

    Rows may be in any form of `formats.py` (one form per source); implicit prompts are extracted as TRL does.
    `*_column` read other column names; `split` picks a split of a dataset with several, `limit` reads the first
    rows only. Idempotent: pair ids and submission ids derive from the row content, so importing a file twice adds
    nothing. Texts longer than `max_chars` characters (prompt: all messages together) are rejected as too long.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of rows or None, got {limit!r}.")
    name, rows, unreadable = read_rows(source, split, limit)
    mapping = {"prompt": prompt_column, "chosen": chosen_column, "rejected": rejected_column}
    check_columns(name, rows, mapping)
    errors, records = list(unreadable), []
    for number, row in rows:
        record, row_errors = _validate_row(number, renamed(row, mapping), max_chars, annotator)
        errors.extend(RowError(e.row, mapping.get(e.field, e.field), e.message) for e in row_errors)
        if record is not None:
            records.append((number, record))
    main, mixed = formats.one_form([(number, record.form) for number, record in records])
    errors.extend(RowError(e.row, mapping.get(e.field, e.field), e.message) for e in mixed)
    records = [record for _, record in records if record.form == main]
    if not rows and not unreadable:
        raise ValueError(f"{name}: no rows to import (the source is empty); check the file.")
    errors.sort(key=lambda error: error.row)
    if errors and not skip_invalid:
        raise PreferenceImportError(name, errors)
    report = ImportReport(name, len(rows) + len(unreadable), len(records), 0, len({e.row for e in errors}), errors)
    if store is None:
        return report
    now = time.time()
    with store.transaction():  # one commit: the whole import lands, or none of it
        pairs = []
        for record in records:
            # Left/right as the export showed them: chosen is on the right only for a "B".
            a, b = (record.rejected, record.chosen) if record.choice == "B" else (record.chosen, record.rejected)
            pair_id = Pair.make_id(record.prompt, a, b, IMPORT_MODEL, IMPORT_MODEL)
            pairs.append(_stored_pair(store, pair_id) or Pair(
                pair_id, record.prompt, a, b, IMPORT_MODEL, IMPORT_MODEL, swapped=False,
                generation=_provenance(record, "a" if a == record.chosen else "b"), created_at=now))
        store.add_pairs(pairs)
        for pair, record in zip(pairs, records):
            content = json.dumps(record, ensure_ascii=False, sort_keys=True)
            submission_id = "import-" + hashlib.sha256(content.encode()).hexdigest()[:24]
            report.n_imported += not store.has_submission(submission_id)
            store.add_label(pair.pair_id, record.choice, record.annotator, submission_id)
    return report


class _Record(NamedTuple):
    """A valid import row, ready for the store."""

    prompt: str | list[dict]
    chosen: str
    rejected: str
    annotator: str
    choice: str  # the row's `choice`; when it has none, "A" or "B" drawn from its content (chosen's side)
    form: str  # formats.EXPLICIT_TEXT, ...: one source holds one form
    hh: bool  # an HH dialogue: the implicit export writes it back as that text
    scores: dict  # score_chosen / score_rejected / margin the row had


def _validate_row(number: int, row, max_chars: int, default_annotator: str) -> tuple[_Record | None, list[RowError]]:
    """The row as a _Record, or None and every error found in it."""
    if not isinstance(row, dict):
        return None, [RowError(number, "(line)", f"must be an object with prompt/chosen/rejected, got "
                                                 f"{type(row).__name__}.")]
    form = formats.row_form(row)
    implicit = form in (formats.IMPLICIT_TEXT, formats.IMPLICIT_CHAT)
    if implicit:
        values, hh, errors = _implicit(number, row, form, max_chars)
    else:
        values, hh, errors = {}, False, []
        for name, check in (("prompt", _prompt), ("chosen", _completion), ("rejected", _completion)):
            if row.get(name) is None:
                errors.append(RowError(number, name, "missing; every row needs prompt, chosen and rejected."))
                continue
            try:
                values[name] = check(row[name], max_chars)
            except ValueError as error:
                errors.append(RowError(number, name, str(error)))
    if "chosen" in values and "rejected" in values and values["chosen"] == values["rejected"]:
        after = " once the shared prompt is taken off" if implicit else ""
        errors.append(RowError(number, "rejected", f"same text as chosen{after}; a preference needs two different "
                                                   "texts."))
    scores = {}
    for name in SCORE_COLUMNS:
        value = row.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            errors.append(RowError(number, name, f"must be a finite number (or empty), got {_describe(value)}."))
        else:
            scores[name] = float(value)
    annotator = row.get("annotator") or default_annotator
    if not isinstance(annotator, str) or not annotator.strip() or len(annotator) > MAX_ANNOTATOR_CHARS:
        errors.append(RowError(number, "annotator", f"must be text of 1 to {MAX_ANNOTATOR_CHARS} characters."))
    # No choice column: chosen goes on a side drawn from the row's content (reproducible, so a re-import adds
    # nothing) and the label records it, so imports do not read as a labeller always picking A.
    choice = row.get("choice") or ("A" if hashlib.sha256(repr(sorted(values.items())).encode("utf-8", "replace"))
                                   .digest()[0] % 2 else "B")
    if choice not in CHOICES:
        errors.append(RowError(number, "choice", f"must be one of {CHOICES}, got {choice!r:.40}."))
    if errors:
        return None, errors
    return _Record(values["prompt"], values["chosen"], values["rejected"], annotator, choice, form, hh, scores), []


def _implicit(number: int, row: dict, form: str, max_chars: int) -> tuple[dict, bool, list[RowError]]:
    """(prompt/chosen/rejected, is an HH dialogue, errors) of a row whose prompt is inside both sides."""
    chat = form == formats.IMPLICIT_CHAT
    sides, errors = {}, []
    for name in ("chosen", "rejected"):
        value = row.get(name)
        try:
            if value is None:
                raise ValueError("missing; a row without a prompt column needs chosen and rejected, each holding "
                                 "the prompt and its reply.")
            if chat != isinstance(value, list):
                kind = "a message list" if chat else "text"
                raise ValueError(f"must be {kind}, like chosen, got {_describe(value)}.")
            sides[name] = _prompt(value, math.inf) if chat else _completion(value, math.inf)  # lengths: on the parts
        except ValueError as error:
            errors.append(RowError(number, name, str(error)))
    if errors:
        return {}, False, errors
    try:
        if chat:
            prompt, chosen, rejected, hh = (*formats.extract_chat(sides["chosen"], sides["rejected"]), False)
        else:
            prompt, chosen, rejected, hh = formats.extract_text(sides["chosen"], sides["rejected"])
    except formats.FormError as error:
        return {}, False, [RowError(number, error.field, str(error))]
    values = {}
    for name, value, check in (("prompt", prompt, _prompt), ("chosen", chosen, _completion),
                               ("rejected", rejected, _completion)):
        try:
            values[name] = check(value, max_chars)
        except ValueError as error:
            where = "the shared prompt" if name == "prompt" else "the reply after the shared prompt"
            errors.append(RowError(number, "chosen" if name == "prompt" else name, f"{where}: {error}"))
    return values, hh, errors


def _stored_pair(store: PreferenceStore, pair_id: str) -> Pair | None:
    """The pair already stored under this id: it keeps what it has (e.g. the form it was first imported in)."""
    try:
        return store.get_pair(pair_id)
    except KeyError:
        return None


def _provenance(record: _Record, chosen_side: str) -> dict:
    """What an imported pair keeps in `Pair.generation`: its source form when an export needs it, its scores."""
    kept = {"form": "hh"} if record.hh else {}
    if record.scores:
        kept.update(record.scores, chosen_side=chosen_side)
    return {"import": kept} if kept else {}


def _prompt(value, max_chars: int) -> str | list[dict]:
    if isinstance(value, str):
        _check_length(value, max_chars)
        if not value.strip():
            raise ValueError("empty text.")
        return value
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be text or a non-empty list of chat messages, got {_describe(value)}.")
    for index, message in enumerate(value, start=1):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str) and message["role"]
                and isinstance(message.get("content"), str)):
            raise ValueError(f"message {index} must be {{'role': str, 'content': str}}, got {message!r:.80}.")
    if not any(message["content"].strip() for message in value):
        raise ValueError("every message is empty.")
    _check_length("".join(message["content"] for message in value), max_chars)
    return [{"role": message["role"], "content": message["content"]} for message in value]


def _completion(value, max_chars: int) -> str:
    if isinstance(value, list):  # conversational: exactly one assistant message
        if not (len(value) == 1 and isinstance(value[0], dict) and value[0].get("role") == "assistant"
                and isinstance(value[0].get("content"), str)):
            raise ValueError(f"a message list must hold exactly one {{'role': 'assistant', 'content': str}}, "
                             f"got {value!r:.80}.")
        value = value[0]["content"]
    if not isinstance(value, str):
        raise ValueError(f"must be text or [{{'role': 'assistant', 'content': ...}}], got {_describe(value)}.")
    _check_length(value, max_chars)
    if not value.strip():
        raise ValueError("empty text.")
    return value


def _check_length(text: str, max_chars: int) -> None:
    if len(text) > max_chars:
        raise ValueError(f"{len(text)} characters, too long for the model (max_chars={max_chars}); shorten or drop "
                         "the row, or raise max_chars.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate, e.g. the JSON escape "\\ud800" without its pair
        raise ValueError(f"character {error.start + 1} is a lone surrogate ({text[error.start]!r}), which is not text; "
                         "fix that escape in the file.") from None


def _describe(value) -> str:
    return f"{type(value).__name__} {value!r:.40}"
