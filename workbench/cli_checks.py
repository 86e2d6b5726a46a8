"""One validation layer for the command line: every rule lives here, so a mistake gets the same message in every
command, and a refused command changes nothing on disk.

`check_args` runs before a command does anything (loads a model, opens a store, creates a folder) and raises
`InputRefused` naming the flag or file and what to do. `new_outputs` / `remove_new_outputs` are the backstop: the
output folders and stores a refused command created anyway (a failure found mid-way) are removed again.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
MAX_CONFIG_BYTES = 1 << 20  # a stage config is a few hundred bytes; a megabyte is a wrong file
MAX_PROMPT_TOKENS = 1024  # the workbench's prompts are < 100 tokens; longer ones make a CPU decode crawl
CHARS_PER_TOKEN_CEILING = 64  # no tokenizer packs more characters into a token: longer texts are refused untokenized
STORE_SIDECARS = ("-wal", "-shm", "-journal")  # files SQLite keeps next to a store
DATA_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet", ".txt", ".md", ".yaml", ".yml", ".sqlite"}

# Flags that count something: at least 1 when given.
COUNTS = ("n", "pairs", "steps", "batch_size", "seq_len", "max_new_tokens", "n_prompts", "save_steps", "limit")
POSITIVE = ("epochs", "learning_rate")  # real numbers > 0
NON_NEGATIVE = ("seed", "temperature", "noise", "beta", "bon_max_n")  # real numbers >= 0 (temperature 0 = greedy)
MODELS = ("model", "policy", "policy_b", "base", "backbone", "reward_backbone")  # registry name, folder or Hub id
INPUTS = ("prompts", "text", "data", "dataset")  # a file/folder when path-like, else a `datasets` name
# (command, action) -> the flags naming stores that must already exist (opened read-only) or may be created.
READ_STORES = {("prefs", "stats"): "db", ("prefs", "export"): "db", ("train-rm", None): "db",
               ("train-rl", None): "prefs"}
WRITE_STORES = {("pairs", None): "db", ("label", None): "db", ("prefs", "import"): "db"}
OUTPUT_FOLDERS = {"pretrain": "out", "sft": "out", "train-rm": "out", "train-rl": "out", "pipeline": "out",
                  "app": "run"}


class InputRefused(ValueError):
    """A command-line value refused before the command ran; the message names the flag or file and the fix."""


def flag(attribute: str) -> str:
    return "-n" if attribute == "n" else "--" + attribute.replace("_", "-")


def check_args(args: argparse.Namespace) -> None:
    """Every rule that applies to this command's arguments; raises InputRefused at the first broken one."""
    key = (args.command, getattr(args, "action", None))
    for name in COUNTS:
        _at_least(args, name, 1)
    for step in getattr(args, "snapshot_steps", None) or []:
        if step < 1:
            raise InputRefused(f"--snapshot-steps {step}: steps are counted from 1; give steps >= 1.")
    for name in POSITIVE:
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            raise InputRefused(f"{flag(name)} {value}: must be greater than 0.")
    for name in NON_NEGATIVE:
        _at_least(args, name, 0)
    top_p = getattr(args, "top_p", None)
    if top_p is not None and not 0 < top_p <= 1:
        raise InputRefused(f"--top-p {top_p}: must be in (0, 1] (1 = no nucleus cut).")
    port = getattr(args, "port", None)
    if port is not None and not 1 <= port <= 65535:
        raise InputRefused(f"--port {port}: must be a TCP port between 1 and 65535.")
    if getattr(args, "config", None):
        check_file("--config", args.config, max_bytes=MAX_CONFIG_BYTES)
    if getattr(args, "auth_file", None):
        check_file("--auth-file", args.auth_file, max_bytes=MAX_CONFIG_BYTES)
    for name in INPUTS:
        if getattr(args, name, None):
            check_input(flag(name), getattr(args, name))
    if key == ("prefs", "import"):
        check_input("PATH", args.path)  # a Hub dataset name (owner/name) is left to `datasets`
    if key == ("prefs", "export"):
        check_output_file("PATH", args.path, folder_ok=Path(args.path).suffix not in {".jsonl", ".csv", ".parquet"})
    for table, must_exist in ((READ_STORES, True), (WRITE_STORES, False)):
        name = table.get(key)
        if name and getattr(args, name, None):
            check_store(flag(name), getattr(args, name), must_exist=must_exist)
    if args.command in ("train-rl", "evaluate") and getattr(args, "reward", None):
        check_folder("--reward", args.reward, "a trained reward model folder, e.g. runs/NAME/reward/model")
    if args.command == "app" and args.run and (Path(args.run).expanduser() / "prefs.sqlite").exists():
        check_store("--run", str(Path(args.run) / "prefs.sqlite"), must_exist=True)  # damaged: refused before loading
    if args.command in OUTPUT_FOLDERS and getattr(args, OUTPUT_FOLDERS[args.command], None):
        check_output_folder(flag(OUTPUT_FOLDERS[args.command]), getattr(args, OUTPUT_FOLDERS[args.command]))
    if args.command == "evaluate" and args.out:
        check_output_file("--out", args.out)
    for name in MODELS:
        if getattr(args, name, None):
            check_model(flag(name), getattr(args, name))


def _at_least(args, name: str, low: int) -> None:
    value = getattr(args, name, None)
    if value is not None and not value >= low:
        what = "a count" if low == 1 else "not negative"
        raise InputRefused(f"{flag(name)} {value}: must be at least {low} ({what}).")


# -- paths ----------------------------------------------------------------------------------------------------

def _looks_like_path(value: str) -> bool:
    """A local path rather than a `datasets`/Hub name (owner/name): has a data suffix, starts like a path, exists,
    or has more than one '/'."""
    return (Path(value).suffix.lower() in DATA_SUFFIXES or value.startswith((".", "/", "~"))
            or Path(value).expanduser().exists() or value.count("/") > 1)


def check_input(name: str, value: str, must_be_path: bool = False) -> Path | None:
    """An input file or folder that must exist (when it is path-like; a dataset name is left to `datasets`)."""
    if not must_be_path and not _looks_like_path(value):
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise InputRefused(f"{name} {value}: no such file or folder; check the path.")
    if path.is_file() and path.stat().st_size == 0:
        raise InputRefused(f"{name} {value}: the file is empty; nothing to read.")
    return path


def check_file(name: str, value: str, max_bytes: int | None = None) -> Path:
    """A file that must exist and be a regular file (not a folder), at most max_bytes long."""
    path = Path(value).expanduser()
    if path.is_dir():
        raise InputRefused(f"{name} {value}: is a folder; give a file.")
    if not path.is_file():
        raise InputRefused(f"{name} {value}: no such file; check the path.")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise InputRefused(f"{name} {value}: {path.stat().st_size:,} bytes, more than the {max_bytes:,} a file of "
                           "this kind can be; is it the right file?")
    return path


def check_folder(name: str, value: str, what: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_dir():
        state = "is a file" if path.exists() else "does not exist"
        raise InputRefused(f"{name} {value}: {state}; give {what}.")
    return path


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_folder(name: str, value: str) -> Path:
    """A folder the command writes into: it may not exist yet, but it must not be a file (nor sit under one)."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise InputRefused(f"{name} {value}: is a file; give a folder (it is created if missing).")
    if not _nearest_existing(path).is_dir():
        raise InputRefused(f"{name} {value}: {_nearest_existing(path)} is a file, so no folder can be made there.")
    return path


def check_output_file(name: str, value: str, folder_ok: bool = False) -> Path:
    """A file the command writes: not an existing folder (unless folder_ok), and not under a file."""
    path = Path(value).expanduser()
    if path.is_dir() and not folder_ok:
        raise InputRefused(f"{name} {value}: is a folder; give a file name, e.g. {Path(value) / 'out.json'}.")
    if not _nearest_existing(path.parent).is_dir():
        raise InputRefused(f"{name} {value}: {_nearest_existing(path.parent)} is a file, so nothing can be "
                           "written under it.")
    return path


def check_store(name: str, value: str, must_exist: bool) -> Path:
    """A preference store: a SQLite file (never a folder or another kind of file). must_exist: a command that only
    reads it refuses a missing store instead of creating an empty one."""
    path = Path(value).expanduser()
    if path.is_dir():
        raise InputRefused(f"{name} {value}: is a folder, not a preference store; give the .sqlite file, e.g. "
                           f"{Path(value) / 'prefs.sqlite'}.")
    if not path.exists():
        if must_exist:
            raise InputRefused(f"{name} {value}: no such preference store; check the path (a store is made by "
                               "`workbench pairs`, `workbench label`, `workbench prefs import` or the app).")
        check_output_file(name, value)
        return path
    with open(path, "rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if not header and must_exist:
        raise InputRefused(f"{name} {value}: the file is empty, not a preference store.")
    if header and header != SQLITE_HEADER:
        raise InputRefused(f"{name} {value}: not a SQLite preference store (the file starts with {header[:8]!r}); "
                           "give the run's prefs.sqlite.")
    if header:  # open it (read-only) now: a damaged store is refused before any model loads
        from workbench.preferences.store import PreferenceStore, StoreError

        try:
            PreferenceStore(path, read_only=True).close()
        except StoreError as error:
            raise InputRefused(f"{name} {value}: {error}") from None
    return path


def check_model(name: str, value: str) -> None:
    """A registered model name, a local folder or a Hub id (owner/name); resolved without building anything."""
    from workbench.models import REGISTRY, ModelNotFoundError, resolve_model

    if value in REGISTRY:
        return
    try:
        resolve_model(value)
    except ModelNotFoundError as error:
        raise InputRefused(f"{name} {value}: {error}") from None


# -- prompts --------------------------------------------------------------------------------------------------

def check_prompt_chars(prompts: Sequence, where: str, limit: int = MAX_PROMPT_TOKENS) -> None:
    """Refuse prompts that cannot fit `limit` tokens in any tokenizer, before anything is tokenized."""
    from workbench.generation import prompt_text

    for number, prompt in enumerate(prompts, start=1):
        chars = len(prompt_text(prompt)) if not isinstance(prompt, str) else len(prompt)
        if chars > limit * CHARS_PER_TOKEN_CEILING:
            raise InputRefused(f"{where}, prompt {number}: {chars:,} characters, far beyond the {limit:,}-token "
                               "prompt limit; shorten it.")


def check_prompt_tokens(tokenize: Callable[[str], list], prompts: Sequence, where: str, context: int | None,
                        max_new_tokens: int, limit: int = MAX_PROMPT_TOKENS) -> None:
    """Every prompt within `limit` tokens, and within the model's context once max_new_tokens are added."""
    from workbench.generation import prompt_text

    check_prompt_chars(prompts, where, limit)
    if context is not None:
        limit = min(limit, context - max_new_tokens)
        if limit < 1:
            raise InputRefused(f"--max-new-tokens {max_new_tokens}: the model's context is {context} tokens, so no "
                               "prompt fits; ask for fewer new tokens.")
    for number, prompt in enumerate(prompts, start=1):
        n_tokens = len(tokenize(prompt if isinstance(prompt, str) else prompt_text(prompt)))
        if n_tokens > limit:
            raise InputRefused(f"{where}, prompt {number}: {n_tokens:,} tokens; the limit is {limit:,} (prompt "
                               f"tokens + --max-new-tokens within the model's context); shorten it.")


# -- the backstop ---------------------------------------------------------------------------------------------

def new_outputs(args: argparse.Namespace) -> list[Path]:
    """The outermost not-yet-existing path of every output this command may create (folders, stores, reports)."""
    key = (args.command, getattr(args, "action", None))
    names = [OUTPUT_FOLDERS.get(args.command), WRITE_STORES.get(key), "out" if args.command == "evaluate" else None]
    if key == ("prefs", "export"):
        names.append("path")
    if args.command == "train-rm" and not getattr(args, "db", None):
        names.append("out")  # train-rm --dataset writes <out>/prefs.sqlite
    created = []
    for name in filter(None, names):
        value = getattr(args, name, None)
        if not value:
            continue
        path = Path(value).expanduser().absolute()
        if path.exists():
            continue
        while not path.parent.exists() and path.parent != path.parent.parent:
            path = path.parent
        created.append(path)
    return created


def remove_new_outputs(paths: list[Path]) -> None:
    """Remove what a refused command created at these (then new) paths, SQLite's side files included."""
    for path in paths:
        for candidate in (path, *(path.with_name(path.name + suffix) for suffix in STORE_SIDECARS)):
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            elif candidate.exists() or candidate.is_symlink():
                candidate.unlink(missing_ok=True)
