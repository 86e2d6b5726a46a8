"""Validation of every value a client sends, shared by the app's handlers: unit-testable without Gradio."""

from __future__ import annotations

import math
import re

from apps.context import LoadedPolicy

MAX_PROMPT_CHARS = 2000  # longer prompts are rejected before they reach the model
MAX_COMPLETION_CHARS = 4000  # text scored in the reward-model box
MAX_NAME_CHARS = 64
_NAME = re.compile(r"[\w .@-]+")  # annotator names: letters, digits, space, . @ - _
_TOKEN = re.compile(r"[A-Za-z0-9_:.-]{1,200}")  # submission ids

__all__ = ["InputError", "LoadedPolicy", "check_annotator", "check_choice", "check_number", "check_submission_id",
           "check_text"]


class InputError(ValueError):
    """A value from the client that the server refuses; the message is shown to the person."""


def check_text(name: str, value, max_chars: int, allow_empty: bool = False) -> str:
    """A text field from the client: a string, not blank (unless allowed), at most max_chars characters."""
    if value is None and allow_empty:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{name} must be text, got {type(value).__name__}.")
    if not value.strip() and not allow_empty:
        raise InputError(f"{name} is empty; write something first.")
    if len(value) > max_chars:
        raise InputError(f"{name} has {len(value):,} characters; the limit is {max_chars:,}.")
    return value


def check_number(name: str, value, low: float, high: float, integer: bool = False) -> float | int:
    """A number from the client, finite and within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{name} must be a number, got {value!r:.40}.")
    if integer and int(value) != value:
        raise InputError(f"{name} must be a whole number, got {value}.")
    if not low <= value <= high:
        raise InputError(f"{name} must be between {low:g} and {high:g}, got {value:g}.")
    return int(value) if integer else float(value)


def check_choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r:.40}.")
    return value


def check_annotator(value) -> str:
    name = check_text("Annotator name", value, MAX_NAME_CHARS).strip()
    if not _NAME.fullmatch(name):
        raise InputError("Annotator name may hold letters, digits, spaces and . @ - _ only.")
    return name


def check_submission_id(value) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise InputError("submission_id must be 1-200 characters of letters, digits and _ : . -")
    return value
