"""Export to TRL's preference format, file writers, validated import; the export trains TRL trainers as is."""

import csv
import json

import datasets
import pytest
import torch

from workbench.preferences import (
    CHOICES,
    Pair,
    PreferenceImportError,
    PreferenceStore,
    export_preferences,
    import_preferences,
    to_csv,
    to_jsonl,
    to_parquet,
)

CHAT = [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "Name a colour."}]


def add_pair(store, prompt, a, b, model_a="policy-v1", model_b="policy-v2"):
    pair = Pair(Pair.make_id(prompt, a, b, model_a, model_b), prompt, a, b, model_a, model_b, swapped=False,
                generation={"seed": 0, "temperature": 1.0})
    store.add_pairs([pair])
    return pair.pair_id


@pytest.fixture
def store(tmp_path):
    """Plain-text pairs with every kind of label: A, B, tie, both_bad, skip, an undone one, identical completions."""
    store = PreferenceStore(tmp_path / "prefs.sqlite")
    choices = ["A", "B", "A", "B", "tie", "both_bad", "skip", "A"]
    for index, choice in enumerate(choices):
        pair_id = add_pair(store, f"Describe a cat, take {index}.", f" A calm cat {index}.", f" A loud cat {index}!")
        store.add_label(pair_id, choice, "alice" if index % 2 else "bob", f"s{index}")
    store.undo_last("bob", "undo-1")  # withdraws bob's last label (index 6: skip)
    same = add_pair(store, "Say hi.", " hi", " hi")
    store.add_label(same, "A", "alice", "same")
    yield store
    store.close()


def rows_without_pair_id(dataset):
    return [{key: value for key, value in row.items() if key != "pair_id"} for row in dataset]


def test_export_plain_text(store):
    dataset, report = export_preferences(store)
    assert report == {"n_rows": 5, "format": "text", "kept": {"A": 3, "B": 2}, "dropped": {"tie": 1, "both_bad": 1},
                      "dropped_identical": 1}
    assert dataset.column_names == ["prompt", "chosen", "rejected", "choice", "pair_id", "annotator"]
    assert dataset[0] == {"prompt": "Describe a cat, take 0.", "chosen": " A calm cat 0.", "rejected": " A loud cat 0!",
                          "choice": "A", "pair_id": dataset[0]["pair_id"], "annotator": "bob"}
    assert (dataset[1]["chosen"], dataset[1]["rejected"]) == (" A loud cat 1!", " A calm cat 1.")  # B: right side
    every, every_report = export_preferences(store, keep=CHOICES)
    assert every_report["kept"] == {"A": 3, "B": 2, "tie": 1, "both_bad": 1} and len(every) == 7
    assert len(export_preferences(store, annotator="alice")[0]) == 3
    with pytest.raises(ValueError, match=r"keep: unknown choice\(s\) \['a'\]"):
        export_preferences(store, keep=("a",))


def test_export_is_conversational_when_any_prompt_is_chat(tmp_path):
    with PreferenceStore(tmp_path / "chat.sqlite") as store:
        store.add_label(add_pair(store, CHAT, "Blue.", "Red."), "B", "alice", "s1")
        store.add_label(add_pair(store, "Name a shape.", "Square.", "Circle."), "A", "alice", "s2")
        dataset, report = export_preferences(store)
    assert report["format"] == "conversational"
    assert dataset[0]["prompt"] == CHAT
    assert dataset[0]["chosen"] == [{"role": "assistant", "content": "Red."}]
    assert dataset[0]["rejected"] == [{"role": "assistant", "content": "Blue."}]
    assert dataset[1]["prompt"] == [{"role": "user", "content": "Name a shape."}]  # plain prompt as a user message


@pytest.mark.parametrize("form", ["jsonl", "parquet", "save_to_disk", "dataset"])
@pytest.mark.parametrize("chat", [False, True])
def test_export_import_round_trip_is_exact(store, tmp_path, form, chat):
    if chat:
        store.add_label(add_pair(store, CHAT, "Blue.", "Rouge «fr»."), "B", "carol", "chat-1")
    exported, _ = export_preferences(store, keep=CHOICES)
    source = {"jsonl": lambda: to_jsonl(exported, tmp_path / "prefs.jsonl"),
              "parquet": lambda: to_parquet(exported, tmp_path / "prefs.parquet"),
              "save_to_disk": lambda: exported.save_to_disk(tmp_path / "folder") or tmp_path / "folder",
              "dataset": lambda: exported}[form]()
    with PreferenceStore(tmp_path / "fresh.sqlite") as fresh:
        report = import_preferences(source, fresh)
        assert (report.n_rows, report.n_valid, report.n_imported, report.n_skipped) == (len(exported),) * 3 + (0,)
        again, _ = export_preferences(fresh, keep=CHOICES)
        assert rows_without_pair_id(again) == rows_without_pair_id(exported)  # pair ids differ: models are unknown
        assert again.features == exported.features
        assert import_preferences(source, fresh).n_imported == 0  # importing twice adds nothing
        assert fresh.count_labels() == len(exported) and fresh.count_pairs() == len(exported)
        assert {pair.model_a for pair in fresh.pairs()} == {"import"}


def write_jsonl(path, rows):
    with open(path, "wb") as handle:
        for row in rows:
            handle.write(row if isinstance(row, bytes) else json.dumps(row).encode())
            handle.write(b"\n")
    return path


GOOD = {"prompt": "Say something.", "chosen": " Something kind.", "rejected": " Something rude."}


@pytest.mark.parametrize("bad_row, expected", [
    ({"prompt": "p", "chosen": "c"}, "row 2, rejected: missing"),
    ({**GOOD, "prompt": None}, "row 2, prompt: missing"),
    ({**GOOD, "chosen": ""}, "row 2, chosen: empty text"),
    ({**GOOD, "rejected": "   "}, "row 2, rejected: empty text"),
    ({**GOOD, "rejected": GOOD["chosen"]}, "row 2, rejected: same text as chosen"),
    ({**GOOD, "chosen": 5}, "row 2, chosen: must be text.*got int"),
    ({**GOOD, "prompt": {"text": "p"}}, "row 2, prompt: must be text or a non-empty list"),
    ({**GOOD, "prompt": []}, "row 2, prompt: must be text or a non-empty list"),
    ({**GOOD, "prompt": [{"role": "user"}]}, "row 2, prompt: message 1 must be"),
    ({**GOOD, "chosen": [{"role": "user", "content": "x"}]}, "row 2, chosen: a message list must hold exactly one"),
    ({**GOOD, "chosen": "x" * 8001}, "row 2, chosen: 8001 characters, too long for the model"),
    ({**GOOD, "prompt": [{"role": "user", "content": "x" * 8001}]}, "row 2, prompt: 8001 characters, too long"),
    ({**GOOD, "choice": "maybe"}, "row 2, choice: must be one of"),
    ({**GOOD, "annotator": "x" * 101}, "row 2, annotator: must be text of 1 to 100"),
    (b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', r"row 2, \(line\): not valid UTF-8"),
    (b'{"prompt": "p", "chosen": ', r"row 2, \(line\): not valid JSON"),
    ([1, 2], r"row 2, \(line\): must be an object"),
])
def test_each_bad_row_is_named_and_nothing_is_written(store, tmp_path, bad_row, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, bad_row, {**GOOD, "chosen": " Other."}])
    before = (store.count_pairs(), len(store.current_labels(include_undone=True)))
    with pytest.raises(PreferenceImportError, match=expected) as caught:
        import_preferences(path, store)
    assert "nothing was imported" in str(caught.value) and "skip_invalid=True" in str(caught.value)
    assert (store.count_pairs(), len(store.current_labels(include_undone=True))) == before


def test_skip_invalid_imports_the_valid_rows_and_reports_the_rest(tmp_path):
    rows = [GOOD, {"prompt": "p"}, b"\xff\xfe", {**GOOD, "chosen": " Also kind."}, {**GOOD, "chosen": 3.5}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    assert import_preferences(path, skip_invalid=True).n_imported == 0  # no store: validate only
    with PreferenceStore(tmp_path / "prefs.sqlite") as store:
        report = import_preferences(path, store, skip_invalid=True, annotator="curator")
        assert (report.n_rows, report.n_valid, report.n_imported, report.n_skipped) == (5, 2, 2, 3)
        assert [(error.row, error.field) for error in report.errors] == [
            (2, "chosen"), (2, "rejected"), (3, "(line)"), (5, "chosen")]
        assert {label.annotator for label in store.current_labels()} == {"curator"}
        assert store.count_labels() == 2


def test_parquet_and_dataset_rows_are_validated_too(tmp_path):
    dataset = datasets.Dataset.from_list([GOOD, {**GOOD, "rejected": None}])
    with pytest.raises(PreferenceImportError, match="row 2, rejected: missing"):
        import_preferences(to_parquet(dataset, tmp_path / "bad.parquet"))
    with pytest.raises(PreferenceImportError, match="row 2, rejected: missing"):
        import_preferences(dataset)
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        import_preferences(to_csv(dataset, tmp_path / "x.csv"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        import_preferences(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match="not a folder written by Dataset.save_to_disk"):
        import_preferences(tmp_path)


def test_csv_neutralises_formulas(tmp_path):
    dataset = datasets.Dataset.from_list([
        {"prompt": "=HYPERLINK(\"http://x\")", "chosen": "+1", "rejected": "-2"},
        {"prompt": "@SUM(A1)", "chosen": "plain = fine", "rejected": "\t=1"},
    ])
    with open(to_csv(dataset, tmp_path / "out.csv"), newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows == [["prompt", "chosen", "rejected"], ["'=HYPERLINK(\"http://x\")", "'+1", "'-2"],
                    ["'@SUM(A1)", "plain = fine", "'\t=1"]]


def test_writers_never_leave_half_a_file(tmp_path):
    path = to_jsonl(datasets.Dataset.from_list([GOOD]), tmp_path / "out.jsonl")
    before = path.read_bytes()
    with pytest.raises(TypeError):
        to_jsonl([GOOD, {"prompt": object()}], path)  # fails after the first row is written
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def changed(model, step):
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    step()
    return any(not torch.equal(before[name], p) for name, p in model.named_parameters() if name in before)


@pytest.mark.slow  # the real default reward backbone
def test_plain_export_trains_trl_reward_model(store, tmp_path):
    from trl import RewardConfig, RewardTrainer

    from workbench.models import load_reward_backbone

    dataset, _ = export_preferences(store)
    model, tokenizer = load_reward_backbone("minilm-l6")
    args = RewardConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, report_to="none",
                        use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    assert changed(model, trainer.train)


@pytest.mark.parametrize("chat", [False, True])
def test_export_trains_trl_dpo(store, tmp_path, chat):
    from trl import DPOConfig, DPOTrainer

    from workbench.models import load_policy

    if chat:
        store.add_label(add_pair(store, CHAT, " Blue.", " Red."), "B", "carol", "chat-1")
    dataset, report = export_preferences(store)
    assert report["format"] == ("conversational" if chat else "text")
    model, tokenizer = load_policy("tiny-random-llama")  # a fresh copy: training changes it
    args = DPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, report_to="none",
                     use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=dataset, processing_class=tokenizer)
    assert changed(model, trainer.train)
