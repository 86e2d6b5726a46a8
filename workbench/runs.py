"""Run directories and typed configs.

    runs/<name>/
      <stage>/config.json     the stage's config, exactly as it ran
      <stage>/...             its artefacts (checkpoints, samples)
      metrics.jsonl           one JSON object per logged step: {"stage", "step", "time", "<namespace>/<metric>": ...}

Stages hand off through this directory, never through notebook variables.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

ConfigT = TypeVar("ConfigT")


class ConfigError(ValueError):
    """A config file or dict that does not match its dataclass; the message names the field and the source."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(cls: type[ConfigT], data: dict, source: str = "config") -> ConfigT:
    """Build a dataclass config, rejecting unknown keys and values of the wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of field names to values, got {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {unknown} for {cls.__name__}; known fields: {sorted(fields)}.")
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if not _matches(value, hints[key]):
            raise ConfigError(f"{source}: field {key!r} must be {hints[key]}, got {value!r}.")
    try:
        return cls(**data)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: {error}") from None


def _matches(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if hint is typing.Any:
        return True
    if dataclasses.is_dataclass(hint):  # a nested config, given as a mapping (its own __post_init__ builds it)
        return isinstance(value, (dict, hint))
    return isinstance(value, hint) if isinstance(hint, type) else True


def load_config(cls: type[ConfigT], path: str | Path) -> ConfigT:
    """Load a config from .json, .yaml or .yml."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found.")
    if not path.is_file():
        raise ConfigError(f"{path}: is a folder, not a config file; give a .yaml or .json file.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line} is not valid UTF-8 (byte {error.start}); re-save the file as "
                          "UTF-8.") from None
    try:
        data = yaml.safe_load(text) if path.suffix in {".yaml", ".yml"} else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: cannot parse ({error}).") from None
    return config_from_dict(cls, data or {}, source=str(path))


class RunDir:
    """One experiment's directory; every stage writes its config, artefacts and metrics here."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    def stage_dir(self, stage: str) -> Path:
        path = self.root / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def save_config(self, stage: str, config, **extra) -> Path:
        path = self.stage_dir(stage) / "config.json"
        write_json_atomic(path, {**config_to_dict(config), **extra})
        return path

    def load_config(self, stage: str, cls: type[ConfigT]) -> ConfigT:
        data = json.loads((self.stage_dir(stage) / "config.json").read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return config_from_dict(cls, {k: v for k, v in data.items() if k in known}, source=f"{self.root}/{stage}")

    def log_metrics(self, stage: str, step: int, metrics: dict[str, float]) -> None:
        """Append one line; flushed and fsynced so a crash loses at most the line being written."""
        row = {"stage": stage, "step": step, "time": time.time(), **metrics}
        with open(self.metrics_path, "a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":  # a previous writer crashed mid-line: start a fresh line
                    handle.write(b"\n")
            handle.write((json.dumps(row, default=float) + "\n").encode())
            handle.flush()
            os.fsync(handle.fileno())

    def clear_metrics(self, stage: str, after_step: int | None = None) -> None:
        """Drop a stage's rows (a fresh run), or only those logged after `after_step` (a run resumed from that
        checkpoint redoes those steps); other stages' rows stay."""
        kept = [row for row in self.read_metrics()
                if row.get("stage") != stage or (after_step is not None and row.get("step", 0) <= after_step)]
        fd, tmp = tempfile.mkstemp(prefix=".metrics.", dir=self.root)
        with os.fdopen(fd, "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in kept)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.metrics_path)

    def read_metrics(self, stage: str | None = None) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash mid-write
                continue
            if stage is None or row.get("stage") == stage:
                rows.append(row)
        return rows
