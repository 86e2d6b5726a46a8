"""Preference datasets in and out of the store.

Export gives one row per current label, in TRL's preference format with an explicit prompt, which TRL's
`RewardTrainer` and `DPOTrainer` take as is:

    prompt     the prompt: text, or chat messages [{"role", "content"}, ...]
    chosen     the preferred completion: text, or [{"role": "assistant", "content": ...}] when prompts are chat
    rejected   the other completion, in the same form
    choice     the label ("A"/"B" = a real preference; tie/both_bad/skip only when asked for, chosen = left side)
    pair_id, annotator   where the row came from

Import reads the same columns (`choice`, `annotator` optional) from .jsonl, .parquet, a `save_to_disk` folder or a
`datasets.Dataset`. Every row is validated first; an import with a bad row writes nothing unless skip_invalid=True.
"""

from __future__ import annotations

import csv
import hashlib
import json
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

from workbench.preferences.schema import CHOICES, Pair
from workbench.preferences.store import MAX_ANNOTATOR_CHARS, PreferenceStore

IMPORT_MODEL = "import"  # model_a/model_b of imported pairs: which model wrote them is unknown
_TEXT = datasets.Value("string")
_MESSAGES = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
_CSV_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")  # first characters a spreadsheet may run as a formula (OWASP)


class PreferenceImportError(ValueError):
    """A preference dataset with invalid rows; `.errors` lists them all, the message the first few."""

    def __init__(self, source: str, errors: list[RowError]):
        self.errors = errors
        shown = "\n  ".join(str(error) for error in errors[:10])
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        super().__init__(f"{source}: {len(errors)} invalid row(s); nothing was imported.\n  {shown}{more}\n"
                         "Fix these rows, or pass skip_invalid=True to import only the valid ones.")


@dataclass(frozen=True)
class RowError:
    row: int  # 1-based; the line number for .jsonl files
    field: str  # the column at fault, or "(line)" for a line that could not be read at all
    message: str

    def __str__(self) -> str:
        return f"row {self.row}, {self.field}: {self.message}"


@dataclass
class ImportReport:
    source: str
    n_rows: int  # rows (jsonl: non-blank lines) read from the source
    n_valid: int
    n_imported: int  # labels newly written; 0 when only validating (store=None) or when all were there already
    n_skipped: int  # invalid rows left out (only with skip_invalid=True)
    errors: list[RowError] = field(default_factory=list)


# -- export -------------------------------------------------------------------------------------------------------

def export_preferences(store: PreferenceStore, keep: tuple[str, ...] = ("A", "B"),
                       annotator: str | None = None) -> tuple[datasets.Dataset, dict]:
    """Current labels whose choice is in `keep` as a preference dataset, and a report of what was kept and dropped.

    Conversational when any exported prompt is chat messages (plain prompts then become one user message), plain
    text otherwise: TRL decides per row, so one dataset must not mix the two. Pairs whose two completions are
    identical are dropped: they carry no preference.
    """
    unknown = sorted(set(keep) - set(CHOICES))
    if unknown:
        raise ValueError(f"keep: unknown choice(s) {unknown}; choose from {CHOICES}.")
    labels = store.current_labels(annotator)
    pairs = {pair.pair_id: pair for pair in store.pairs()}
    kept = [label for label in labels if label.choice in keep]
    n_identical = len(kept)
    kept = [label for label in kept if pairs[label.pair_id].completion_a != pairs[label.pair_id].completion_b]
    n_identical -= len(kept)
    conversational = any(not isinstance(pairs[label.pair_id].prompt, str) for label in kept)
    columns: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "choice": [], "pair_id": [],
                                "annotator": []}
    for label in kept:
        pair = pairs[label.pair_id]
        # A (and every non-B choice) keeps the displayed order; B prefers the right side.
        chosen, rejected = (pair.completion_b, pair.completion_a) if label.choice == "B" else (
            pair.completion_a, pair.completion_b)
        prompt = pair.prompt
        if conversational:
            prompt = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            chosen, rejected = [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
        for name, value in zip(columns, (prompt, chosen, rejected, label.choice, label.pair_id, label.annotator)):
            columns[name].append(value)
    form = _MESSAGES if conversational else _TEXT
    features = datasets.Features({"prompt": form, "chosen": form, "rejected": form, "choice": _TEXT,
                                  "pair_id": _TEXT, "annotator": _TEXT})
    report = {"n_rows": len(kept), "format": "conversational" if conversational else "text",
              "kept": dict(Counter(label.choice for label in kept)),
              "dropped": dict(Counter(label.choice for label in labels if label.choice not in keep)),
              "dropped_identical": n_identical}
    return datasets.Dataset.from_dict(columns, features=features), report


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
                       max_chars: int = 8000, skip_invalid: bool = False, annotator: str = "import") -> ImportReport:
    """Validate a preference dataset and (given a store) add it: each row becomes a Pair with chosen on the left and
    a label "A", by the row's `annotator` column, else by `annotator`. A `choice` column (as `export_preferences`
    writes it) is honoured, so export -> import -> export is exact: "B" puts chosen back on the right and labels
    "B"; tie/both_bad/skip keep chosen on the left with that label.

    Idempotent: pair ids and submission ids derive from the row content, so importing a file twice adds nothing.
    Texts longer than `max_chars` characters (prompt: all messages together) are rejected as too long for the model.
    """
    name, rows, unreadable = _read_rows(source)
    errors, records = list(unreadable), []
    for number, row in rows:
        record, row_errors = _validate_row(number, row, max_chars, annotator)
        errors.extend(row_errors)
        if record is not None:
            records.append(record)
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
            pairs.append(Pair(Pair.make_id(record.prompt, a, b, IMPORT_MODEL, IMPORT_MODEL), record.prompt, a, b,
                              IMPORT_MODEL, IMPORT_MODEL, swapped=False, created_at=now))
        store.add_pairs(pairs)
        for pair, record in zip(pairs, records):
            content = json.dumps(record, ensure_ascii=False, sort_keys=True)
            submission_id = "import-" + hashlib.sha256(content.encode()).hexdigest()[:24]
            report.n_imported += not store.has_submission(submission_id)
            store.add_label(pair.pair_id, record.choice, record.annotator, submission_id)
    return report


def _read_rows(source) -> tuple[str, list[tuple[int, object]], list[RowError]]:
    """(name, [(row number, row)], errors of lines that could not be read)."""
    if isinstance(source, datasets.DatasetDict):
        raise ValueError(f"import_preferences: got a DatasetDict with splits {list(source)}; pass one split, "
                         "e.g. dataset['train'].")
    if isinstance(source, datasets.Dataset):
        return "dataset", list(enumerate(source.to_list(), start=1)), []
    path = Path(source).expanduser()
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{path}: not a folder written by Dataset.save_to_disk ({error}); give a .jsonl, "
                                    ".parquet or save_to_disk folder.") from None
        if isinstance(loaded, datasets.DatasetDict):
            raise ValueError(f"{path}: holds splits {list(loaded)}; import one, e.g. "
                             f"import_preferences(datasets.load_from_disk({str(path)!r})['train'], store).")
        return str(path), list(enumerate(loaded.to_list(), start=1)), []
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder; give a .jsonl, .parquet or save_to_disk folder.")
    if path.suffix == ".parquet":
        import pyarrow.parquet

        return str(path), list(enumerate(pyarrow.parquet.read_table(path).to_pylist(), start=1)), []
    if path.suffix == ".jsonl":
        return (str(path), *_read_jsonl(path))
    raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .parquet or a save_to_disk folder "
                     "(CSV exports are for reading only).")


def _read_jsonl(path: Path) -> tuple[list[tuple[int, object]], list[RowError]]:
    rows, errors = [], []
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):  # bytes: report bad UTF-8 by line
        if number == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark some editors add
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line.decode("utf-8"))))
        except UnicodeDecodeError as error:
            errors.append(RowError(number, "(line)", f"not valid UTF-8 (byte {error.start} of the line); re-save "
                                                     "the file as UTF-8."))
        except json.JSONDecodeError as error:
            errors.append(RowError(number, "(line)", f"not valid JSON ({error.msg} at column {error.colno})."))
    return rows, errors


class _Record(NamedTuple):
    """A valid import row, ready for the store."""

    prompt: str | list[dict]
    chosen: str
    rejected: str
    annotator: str
    choice: str  # the row's `choice`, "A" when it has none


def _validate_row(number: int, row, max_chars: int, default_annotator: str) -> tuple[_Record | None, list[RowError]]:
    """The row as a _Record, or None and every error found in it."""
    if not isinstance(row, dict):
        return None, [RowError(number, "(line)", f"must be an object with prompt/chosen/rejected, got "
                                                 f"{type(row).__name__}.")]
    errors = []
    values = {}
    for name, check in (("prompt", _prompt), ("chosen", _completion), ("rejected", _completion)):
        if row.get(name) is None:
            errors.append(RowError(number, name, "missing; every row needs prompt, chosen and rejected."))
            continue
        try:
            values[name] = check(row[name], max_chars)
        except ValueError as error:
            errors.append(RowError(number, name, str(error)))
    if "chosen" in values and "rejected" in values and values["chosen"] == values["rejected"]:
        errors.append(RowError(number, "rejected", "same text as chosen; a preference needs two different texts."))
    annotator = row.get("annotator") or default_annotator
    if not isinstance(annotator, str) or not annotator.strip() or len(annotator) > MAX_ANNOTATOR_CHARS:
        errors.append(RowError(number, "annotator", f"must be text of 1 to {MAX_ANNOTATOR_CHARS} characters."))
    choice = row.get("choice") or "A"
    if choice not in CHOICES:
        errors.append(RowError(number, "choice", f"must be one of {CHOICES}, got {choice!r:.40}."))
    if errors:
        return None, errors
    return _Record(values["prompt"], values["chosen"], values["rejected"], annotator, choice), []


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


def _describe(value) -> str:
    return f"{type(value).__name__} {value!r:.40}"
