"""Prompt sets: the built-in set, and prompts from JSONL, CSV or a Hugging Face `datasets` dataset.

Every bad input raises `PromptFileError` naming the file, the row (1-based, counting data rows)
and what to do about it; nothing is half-loaded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from workbench.generation import Prompt, prompt_text

HELDOUT_PERCENT = 20  # share of the built-in prompts kept out of training, chosen by a hash of the id


class PromptFileError(ValueError):
    """A prompt source that cannot be used; the message names the file and row."""


@dataclass(frozen=True)
class PromptRecord:
    id: str
    prompt: Prompt  # plain text or a list of chat messages
    category: str = ""

    @property
    def text(self) -> str:
        """The last user message (or the plain prompt): what a person reads."""
        return prompt_text(self.prompt)


def builtin_corpus_path() -> Path:
    """A ~150 KB corpus of simple stories written for this project, for the from-scratch pretraining demo."""
    return Path(str(resources.files("workbench") / "data" / "tiny_corpus.txt"))


def is_heldout(prompt_id: str) -> bool:
    """Deterministic split that stays stable when prompts are added: hash the id, keep ~20 % out."""
    return int(hashlib.sha256(prompt_id.encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT


def builtin_prompts(split: str = "train") -> list[PromptRecord]:
    """The built-in prompt set (reviews, advice, explanations, descriptions, short messages)."""
    if split not in {"train", "heldout", "all"}:
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    records = load_prompts(Path(str(resources.files("workbench") / "data" / "prompts.jsonl")))
    if split == "all":
        return records
    return [r for r in records if is_heldout(r.id) == (split == "heldout")]


def load_prompts(source: str | Path, column: str = "prompt", split: str = "train") -> list[PromptRecord]:
    """Prompts from a .jsonl/.json/.csv file, a folder saved with `Dataset.save_to_disk`, or a `datasets` name."""
    return _records(read_rows(source, split), column, str(source))


def read_rows(source: str | Path, split: str = "train") -> list[dict]:
    """Rows (dicts) from a .jsonl/.json/.csv file, a `save_to_disk` folder, or a `datasets` name."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix not in {".jsonl", ".json", ".csv"}:
            raise PromptFileError(f"{path}: unsupported file type; use .jsonl, .json, .csv or a `datasets` folder/name.")
        return _read_csv(path) if path.suffix == ".csv" else _read_jsonl(path)
    if path.suffix in {".jsonl", ".json", ".csv", ".txt"}:
        raise PromptFileError(f"{path}: file not found.")
    return _read_dataset(str(source), split)


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise PromptFileError(
            f"{path}: line {line} is not valid UTF-8 (byte {error.start}). Fix: re-save the file as UTF-8."
        ) from None


def _read_jsonl(path: Path) -> list[dict]:
    text = _decode(path)
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise PromptFileError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}.") from None
        if not all(isinstance(r, dict) for r in rows):
            raise PromptFileError(f"{path}: a JSON list of objects is expected, e.g. [{{\"prompt\": \"...\"}}].")
        return rows
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise PromptFileError(f"{path}: line {number} is not valid JSON ({error.msg}).") from None
        if not isinstance(row, dict):
            raise PromptFileError(f"{path}: line {number} must be a JSON object like {{\"prompt\": \"...\"}}.")
        rows.append(row)
    return rows


def _read_csv(path: Path) -> list[dict]:
    reader = csv.DictReader(io.StringIO(_decode(path), newline=""))
    try:
        return list(reader)
    except csv.Error as error:
        raise PromptFileError(f"{path}: CSV error at line {reader.line_num}: {error}.") from None


def _read_dataset(name: str, split: str) -> list[dict]:
    import datasets

    try:
        if Path(name).expanduser().is_dir():
            loaded = datasets.load_from_disk(str(Path(name).expanduser()))
        else:
            loaded = datasets.load_dataset(name, split=split)
    except Exception as error:  # datasets raises many types; the message is what matters
        raise PromptFileError(f"{name}: could not load as a `datasets` dataset ({type(error).__name__}: {error}).") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise PromptFileError(f"{name}: no split {split!r}; splits are {sorted(loaded)}.")
        loaded = loaded[split]
    return list(loaded)


def _records(rows: list[dict], column: str, where: str) -> list[PromptRecord]:
    if not rows:
        raise PromptFileError(f"{where}: no prompts found (the file is empty).")
    if column not in rows[0]:
        raise PromptFileError(
            f"{where}: no column {column!r}; columns are {sorted(rows[0])}. Fix: rename the column or pass column=..."
        )
    records, seen = [], set()
    for number, row in enumerate(rows, start=1):
        prompt = _validate_prompt(row.get(column), f"{where}: row {number}, column {column!r}")
        record_id = str(row.get("id") or f"row-{number}")
        if record_id in seen:
            raise PromptFileError(f"{where}: row {number} repeats id {record_id!r}; ids must be unique.")
        seen.add(record_id)
        records.append(PromptRecord(id=record_id, prompt=prompt, category=str(row.get("category") or "")))
    return records


def _validate_prompt(value, where: str) -> Prompt:
    if isinstance(value, str):
        if not value.strip():
            raise PromptFileError(f"{where}: the prompt is empty. Fix: remove the row or write a prompt.")
        return value.strip()
    if isinstance(value, list) and value:
        for turn, message in enumerate(value, start=1):
            if not (isinstance(message, dict) and {"role", "content"} <= set(message)):
                raise PromptFileError(f"{where}: message {turn} must be {{\"role\": ..., \"content\": ...}}.")
            if message["role"] not in {"system", "user", "assistant"}:
                raise PromptFileError(f"{where}: message {turn} has unknown role {message['role']!r}.")
            if not isinstance(message["content"], str) or not message["content"].strip():
                raise PromptFileError(f"{where}: message {turn} has empty content.")
        return [{"role": m["role"], "content": m["content"]} for m in value]
    if value is None:
        raise PromptFileError(f"{where}: the prompt is missing. Fix: fill it in or remove the row.")
    raise PromptFileError(f"{where}: expected text or a list of chat messages, got {type(value).__name__}.")


def load_texts(source: str | Path, column: str = "text", split: str = "train") -> list[str]:
    """Plain training texts: a .txt file (paragraphs split on blank lines), .jsonl/.json/.csv, or a dataset."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix in {".txt", ".md"}:
        paragraphs = [p.strip() for p in _decode(path).split("\n\n")]
        texts = [p for p in paragraphs if p]
        if not texts:
            raise PromptFileError(f"{path}: the text file is empty.")
        return texts
    rows = read_rows(source, split)
    if not rows or column not in rows[0]:
        found = sorted(rows[0]) if rows else []
        raise PromptFileError(f"{source}: no column {column!r}; columns are {found}. Fix: pass column=...")
    texts = []
    for number, row in enumerate(rows, start=1):
        value = row.get(column)
        if not isinstance(value, str) or not value.strip():
            raise PromptFileError(f"{source}: row {number}, column {column!r}: expected non-empty text, got {value!r}.")
        texts.append(value.strip())
    return texts
