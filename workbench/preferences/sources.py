"""Where preference rows come from: a .jsonl or .parquet file, a `save_to_disk` folder, a folder of data files
`load_dataset` reads, a Hub dataset name or a `datasets.Dataset`; each row numbered for error messages (the line
number in a .jsonl file), and other column names mapped onto prompt/chosen/rejected."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import datasets

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")  # a name ending so is a file, never a Hub dataset


@dataclass(frozen=True)
class RowError:
    row: int  # 1-based; the line number for .jsonl files
    field: str  # the column at fault, or "(line)" for a line that could not be read at all
    message: str

    def __str__(self) -> str:
        return f"row {self.row}, {self.field}: {self.message}"


def read_rows(source, split: str | None = None,
              limit: int | None = None) -> tuple[str, list[tuple[int, object]], list[RowError]]:
    """(name, [(row number, row)], errors of lines that could not be read), the first `limit` rows only."""
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return "dataset", _numbered(_one_split(source, "dataset", split), limit), []
    path = Path(source).expanduser()
    if path.is_dir():
        try:
            if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():  # written by save_to_disk
                loaded = datasets.load_from_disk(str(path))
            else:  # a folder of .jsonl/.parquet files (split names from the file names), as load_dataset reads it
                loaded = datasets.load_dataset(_data_files_kind(path), data_dir=str(path), split=split)
        except (FileNotFoundError, ValueError) as error:
            raise FileNotFoundError(f"{path}: not a folder written by Dataset.save_to_disk, nor one of .jsonl/.parquet "
                                    f"files load_dataset reads ({error}); give a .jsonl or .parquet file or such a "
                                    "folder.") from None
        return str(path), _numbered(_one_split(loaded, str(path), split), limit), []
    if not path.exists() and not str(source).startswith(("/", ".", "~")) and path.suffix not in FILE_SUFFIXES:
        return str(source), _numbered(_one_split(_load_hub(str(source), split), str(source), split), limit), []
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder; give a .jsonl, .parquet or save_to_disk folder.")
    if split not in (None, "train"):  # load_dataset names a lone file's rows "train"; no other split exists
        raise ValueError(f"{path}: a single file holds one split, 'train', so split={split!r} (--split) cannot be "
                         "read from it; give the folder that holds the split's file, or leave --split out.")
    if path.suffix == ".parquet":
        import pyarrow.parquet

        rows = pyarrow.parquet.read_table(path).to_pylist()[:limit]
        return str(path), list(enumerate(rows, start=1)), []
    if path.suffix == ".jsonl":
        rows, errors = read_jsonl(path)
        if limit is not None:  # the first `limit` non-blank lines, readable or not
            last = sorted([number for number, _ in rows] + [error.row for error in errors] + [math.inf])[limit - 1]
            rows, errors = [r for r in rows if r[0] <= last], [e for e in errors if e.row <= last]
        return str(path), rows, errors
    raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .parquet or a save_to_disk folder "
                     "(CSV exports are for reading only).")


def _data_files_kind(folder: Path) -> str:
    """The `load_dataset` builder for a folder's data files: "json" or "parquet", one kind only (CSV exports are
    lossy, and a folder of several kinds leaves unclear which files are the data)."""
    suffixes = {p.suffix for p in folder.rglob("*") if p.is_file() and p.suffix in FILE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(folder).parts)}
    kinds = {{".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(suffix, suffix) for suffix in suffixes}
    if len(kinds) != 1 or not kinds <= {"json", "parquet"}:
        raise FileNotFoundError(f"it holds {sorted(suffixes) or 'no data files'}; a folder of data files holds "
                                ".jsonl or .parquet files, one kind")
    return kinds.pop()


def _load_hub(name: str, split: str | None):
    """A dataset on the Hugging Face Hub (or in the local datasets cache when offline)."""
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as error:  # datasets raises many kinds here (offline, unknown repo, bad split): say which
        raise FileNotFoundError(f"{name}: no such file or folder, and loading it as a Hub dataset failed "
                                f"({type(error).__name__}: {str(error)[:300]}); check the name, or download it "
                                "first when offline.") from None


def _one_split(loaded, name: str, split: str | None) -> datasets.Dataset:
    if not isinstance(loaded, datasets.DatasetDict):
        return loaded
    if split is None and len(loaded) == 1:
        return next(iter(loaded.values()))
    if split not in loaded:
        asked = "holds splits" if split is None else f"has no split {split!r}; it holds"
        raise ValueError(f"{name}: {asked} {list(loaded)}; import one with split='train' (--split train).")
    return loaded[split]


def _numbered(dataset: datasets.Dataset, limit: int | None) -> list[tuple[int, object]]:
    if limit is not None and limit < len(dataset):
        dataset = dataset.select(range(limit))
    return list(enumerate(dataset.to_list(), start=1))


def read_jsonl(path: Path) -> tuple[list[tuple[int, object]], list[RowError]]:
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
        except RecursionError:  # e.g. [[[[...]]]] 200,000 deep: no preference row nests like that
            errors.append(RowError(number, "(line)", "nested too deeply to be a preference row (arrays/objects "
                                                     "inside each other thousands of times)."))
    return rows, errors


# -- column names -------------------------------------------------------------------------------------------------

def renamed(row, mapping: dict[str, str]):
    """The row with its mapped columns under the names prompt/chosen/rejected."""
    if not isinstance(row, dict) or all(source == target for target, source in mapping.items()):
        return row
    out = {key: value for key, value in row.items() if mapping.get(key, key) == key}
    out.update({target: row[source] for target, source in mapping.items() if source in row})
    return out


def check_columns(name: str, rows: list[tuple[int, object]], mapping: dict[str, str]) -> None:
    """A column named in the mapping that no row has is a typo: say which columns there are."""
    seen = set().union(*(row.keys() for _, row in rows if isinstance(row, dict)))
    for target, source in mapping.items():
        if source != target and source not in seen:
            raise ValueError(f"{name}: no column {source!r} (given as the {target} column); the rows have "
                             f"{sorted(seen)}.")
