"""Downloads from the app (labels, reward model, tuned policy, evaluation report) and a person's label history.

Files to download are written to a fresh temporary folder outside the run directory (the app never serves the
run directory itself); Gradio copies them to its cache and serves that copy once.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from apps.context import AppContext
from apps.handlers import InputError, check_annotator, check_choice, check_submission_id
from workbench.preferences import CHOICES, export_preferences, to_jsonl, to_parquet
from workbench.preferences.formats import conversation_text

FOLDERS = {"reward model": "reward/model", "tuned policy": "rl/policy"}  # what can be downloaded as a zip
LABEL_FORMATS = ("jsonl", "parquet")
HISTORY_ROWS = 50
HISTORY_HEADERS = ["pair", "prompt", "your label", "revision", "when"]


def _fresh_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="workbench-download-"))


def labels_file(ctx: AppContext, fmt="jsonl") -> Path:
    """Every current label (all five choices, people and personas) as prompt/chosen/rejected rows with the choice
    and annotator, in JSONL or Parquet (`workbench prefs import` reads either back)."""
    fmt = check_choice("Format", fmt, LABEL_FORMATS)
    dataset, report = export_preferences(ctx.store, keep=CHOICES)
    if report["n_rows"] == 0:
        raise InputError("No labels to download yet: rank some pairs in the Rank tab first.")
    path = _fresh_dir() / f"{ctx.root.name}-labels.{fmt}"
    return (to_jsonl if fmt == "jsonl" else to_parquet)(dataset, path)


def folder_zip(ctx: AppContext, what) -> Path:
    """The reward model or the tuned policy folder as one zip."""
    what = check_choice("Download", what, tuple(FOLDERS))
    folder = ctx.root / FOLDERS[what]
    if not folder.is_dir():
        raise InputError(f"No {what} in this run yet: train it first.")
    base = _fresh_dir() / f"{ctx.root.name}-{what.replace(' ', '-')}"
    return Path(shutil.make_archive(str(base), "zip", root_dir=folder))


def report_file(ctx: AppContext) -> Path:
    path = ctx.root / "rl" / "eval.json"
    if not path.exists():
        raise InputError("No evaluation report yet: press Evaluate in the Compare tab first.")
    return Path(shutil.copy(path, _fresh_dir() / f"{ctx.root.name}-eval.json"))


# -- a person's own labels ------------------------------------------------------------------------------------------

def history_rows(ctx: AppContext, annotator) -> list[list]:
    """This annotator's current labels, newest first: [pair_id, prompt, choice, revision, time]."""
    annotator = check_annotator(annotator)
    labels = sorted(ctx.store.current_labels(annotator), key=lambda label: label.label_id, reverse=True)
    rows = []
    for label in labels[:HISTORY_ROWS]:
        prompt = conversation_text(ctx.store.get_pair(label.pair_id).prompt)
        rows.append([label.pair_id, prompt if len(prompt) <= 120 else prompt[:120] + "…", label.choice,
                     label.revision, time.strftime("%H:%M:%S", time.localtime(label.created_at))])
    return rows


def edit_label(ctx: AppContext, annotator, pair_id, choice, submission_id):
    """Change this annotator's label of a pair: a new revision (the old one stays in the history)."""
    annotator = check_annotator(annotator)
    choice = check_choice("New label", choice, CHOICES)
    submission_id = check_submission_id(submission_id)
    if not isinstance(pair_id, str) or pair_id not in {label.pair_id for label in ctx.store.current_labels(annotator)}:
        raise InputError("Pick one of your own labelled pairs (its id from the history table) to edit.")
    try:
        return ctx.store.add_label(pair_id, choice, annotator, submission_id)
    except ValueError as error:
        raise InputError(str(error)) from None
