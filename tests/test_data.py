import csv
import json

import pytest
from datasets import Dataset

from workbench.data import PromptFileError, builtin_corpus_path, builtin_prompts, load_prompts, load_texts


def test_builtin_prompt_set_is_large_distinct_and_split_deterministically():
    everything = builtin_prompts("all")
    assert len({r.text for r in everything}) >= 300
    train, heldout = builtin_prompts("train"), builtin_prompts("heldout")
    assert {r.id for r in train}.isdisjoint({r.id for r in heldout})
    assert len(train) + len(heldout) == len(everything)
    assert 0.1 < len(heldout) / len(everything) < 0.3
    assert [r.id for r in heldout] == [r.id for r in builtin_prompts("heldout")]
    assert {r.category for r in everything} >= {"review", "advice", "explanation", "description"}
    with pytest.raises(ValueError, match="split"):
        builtin_prompts("test")


def test_builtin_corpus_is_small_plain_text():
    texts = load_texts(builtin_corpus_path())
    assert len(texts) > 100
    assert builtin_corpus_path().stat().st_size < 400_000


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_csv_and_dataset_round_trip(tmp_path):
    rows = [{"id": "a", "prompt": "First prompt"}, {"id": "b", "prompt": "Second, with a comma"},
            {"id": "c", "prompt": "Ünïcode ✓ prompt"}]
    from_jsonl = load_prompts(_write_jsonl(tmp_path / "p.jsonl", rows))
    with open(tmp_path / "p.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "prompt"])
        writer.writeheader()
        writer.writerows(rows)
    from_csv = load_prompts(tmp_path / "p.csv")
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    from_dataset = load_prompts(tmp_path / "ds")
    expected = [(r["id"], r["prompt"]) for r in rows]
    for loaded in (from_jsonl, from_csv, from_dataset):
        assert [(r.id, r.prompt) for r in loaded] == expected


def test_chat_message_prompts_are_accepted(tmp_path):
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello?"}]
    loaded = load_prompts(_write_jsonl(tmp_path / "chat.jsonl", [{"prompt": messages}]))
    assert loaded[0].prompt == messages and loaded[0].text == "Hello?" and loaded[0].id == "row-1"


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"text": "no prompt column"}\n', r"no column 'prompt'; columns are \['text'\]"),
        ('{"prompt": "ok"}\n{"prompt": "   "}\n', r"row 2.*empty"),
        ('{"prompt": "ok"}\n{"prompt": null}\n', r"row 2.*missing"),
        ('{"prompt": "ok"}\n{not json\n', r"line 2 is not valid JSON"),
        ('["a list"]\n', r"line 1 must be a JSON object"),
        ('{"prompt": 42}\n', r"row 1.*expected text or a list of chat messages"),
        ('{"prompt": [{"role": "user"}]}\n', r"row 1.*message 1 must be"),
        ('{"prompt": [{"role": "robot", "content": "x"}]}\n', r"unknown role 'robot'"),
        ('{"id": "x", "prompt": "a"}\n{"id": "x", "prompt": "b"}\n', r"row 2 repeats id 'x'"),
        ("", r"no prompts found"),
    ],
)
def test_bad_jsonl_gives_clear_error_naming_file_and_row(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(PromptFileError, match=match) as info:
        load_prompts(path)
    assert str(path) in str(info.value)


def test_wrong_encoding_names_the_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("prompt\nfine\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(PromptFileError, match=r"latin1.csv: line 3 is not valid UTF-8"):
        load_prompts(path)


def test_csv_missing_column_and_empty_row(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("question\nwhy?\n")
    with pytest.raises(PromptFileError, match=r"p.csv: no column 'prompt'"):
        load_prompts(path)
    path.write_text("prompt\nok\n\"\"\n")
    with pytest.raises(PromptFileError, match=r"row 2.*empty"):
        load_prompts(path)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(PromptFileError, match="file not found"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "notes.docx").write_text("x")
    with pytest.raises(PromptFileError, match="unsupported file type"):
        load_prompts(tmp_path / "notes.docx")
    with pytest.raises(PromptFileError, match="could not load as a `datasets` dataset"):
        load_prompts(tmp_path / "no_such_folder")


def test_load_texts_validates_rows(tmp_path):
    path = _write_jsonl(tmp_path / "t.jsonl", [{"text": "one"}, {"text": ""}])
    with pytest.raises(PromptFileError, match=r"row 2, column 'text'"):
        load_texts(path)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(PromptFileError, match="empty"):
        load_texts(tmp_path / "empty.txt")
