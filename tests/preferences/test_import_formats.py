"""Every form of preference data TRL's trainers read: imported, stored, exported in its own form, trained on."""

import copy
import json

import datasets
import pytest
import torch
from trl.data_utils import maybe_extract_prompt

from workbench.preferences import PreferenceImportError, PreferenceStore, export_preferences, import_preferences
from workbench.preferences.formats import conversation_text, dialogue_text


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


HISTORY = [user("Hi there."), assistant("Hello! How can I help?"), user("Name a colour.")]  # multi-turn, ends in user
FORMS = {  # form -> (rows as a user's file holds them, the export form that writes them back)
    "explicit text": ([{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
                       {"prompt": "Say hi.", "chosen": " Hi!", "rejected": " Go away."}], "explicit"),
    "explicit chat": ([{"prompt": HISTORY, "chosen": [assistant("Blue.")], "rejected": [assistant("No.")]},
                       {"prompt": [user("Say hi.")], "chosen": [assistant("Hi!")], "rejected": [assistant("Bye.")]}],
                      "explicit"),
    "implicit text": ([{"chosen": "The sky is blue.", "rejected": "The sky is green."},
                       {"chosen": "Say hi. Hi!", "rejected": "Say hi. Go away."}], "implicit"),
    "implicit chat": ([{"chosen": [*HISTORY, assistant("Blue.")], "rejected": [*HISTORY, assistant("No.")]},
                       {"chosen": [user("Say hi."), assistant("Hi!")],
                        "rejected": [user("Say hi."), assistant("Bye.")]}],
                      "implicit"),
    "hh dialogue": ([{"chosen": "\n\nHuman: Hi there.\n\nAssistant: Hello! How can I help?\n\nHuman: Name a colour."
                                "\n\nAssistant: Blue.",
                      "rejected": "\n\nHuman: Hi there.\n\nAssistant: Hello! How can I help?\n\nHuman: Name a colour."
                                  "\n\nAssistant: No."},
                     {"chosen": "\n\nHuman: Say hi.\n\nAssistant: Hi!", "rejected": "\n\nHuman: Say hi.\n\nAssistant: "
                                                                                    "Bye."}], "implicit"),
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def without_ids(dataset, columns=("prompt", "chosen", "rejected")):
    return [{key: row[key] for key in columns if key in row} for row in dataset]


def imported(tmp_path, rows, **options):
    store = PreferenceStore(tmp_path / "prefs.sqlite")
    import_preferences(write_jsonl(tmp_path / "prefs.jsonl", rows), store, **options)
    return store


@pytest.mark.parametrize("form", FORMS)
def test_each_form_round_trips_through_the_store_exactly(tmp_path, form):
    rows, export_form = FORMS[form]
    with imported(tmp_path, rows) as store:
        exported, report = export_preferences(store, form=export_form)
        assert without_ids(exported) == rows  # the same form comes back, multi-turn prompts included
        assert report["n_rows"] == len(rows)
        if form in ("explicit chat", "implicit chat", "hh dialogue"):
            assert store.pairs()[0].prompt == HISTORY  # the whole conversation is stored as chat messages
            assert store.pairs()[0].prompt_text == "Name a colour."  # what the gold labelers read: the last user turn
        again = PreferenceStore(tmp_path / "again.sqlite")
        import_preferences(exported, again)  # the exported dataset imports again as it is
        assert without_ids(export_preferences(again, form=export_form)[0]) == rows
        explicit, _ = export_preferences(store)  # and any store exports in the explicit form too
        import_preferences(explicit, store)  # a pair already stored keeps what it has: no conflict, nothing added
        assert store.count_pairs() == len(rows) and store.count_labels() == len(rows)
        again.close()


@pytest.mark.parametrize("form", ["implicit text", "implicit chat"])
def test_extracted_prompts_are_trls_extraction(tmp_path, form):
    rows, _ = FORMS[form]
    with imported(tmp_path, rows) as store:
        explicit, _ = export_preferences(store)
    assert without_ids(explicit) == [maybe_extract_prompt(row) for row in rows]


def test_hh_dialogues_become_chat_messages_that_render_back_to_trls_prompt(tmp_path):
    rows, _ = FORMS["hh dialogue"]
    shared_word = {"chosen": "\n\nHuman: Tea?\n\nAssistant: I like green tea.",
                   "rejected": "\n\nHuman: Tea?\n\nAssistant: I refuse to say."}
    with imported(tmp_path, [*rows, shared_word]) as store:
        explicit, _ = export_preferences(store)
        implicit, _ = export_preferences(store, form="implicit")
    trl = [maybe_extract_prompt(row) for row in [*rows, shared_word]]
    for row, ours in zip(trl[:2], explicit):  # replies that start differently: TRL's prompt and replies exactly
        assert dialogue_text(ours["prompt"]) == row["prompt"]
        assert [" " + ours[side][0]["content"] for side in ("chosen", "rejected")] == [row["chosen"], row["rejected"]]
    # Replies that share their first word: TRL's prefix runs into them, a chat prompt ends at the turn.
    assert trl[2]["prompt"] == "\n\nHuman: Tea?\n\nAssistant: I" and explicit[2]["prompt"] == [user("Tea?")]
    assert explicit[2]["chosen"] == [assistant("I like green tea.")]
    assert without_ids(implicit) == [*rows, shared_word]


def test_column_mapping_scores_and_margin_are_kept(tmp_path):
    rows = [{"question": "The sky is", "good": " blue.", "bad": " green.", "score_chosen": 9.0, "score_rejected": 2.5,
             "margin": 1.5},
            {"question": "Say hi.", "good": " Hi!", "bad": " Go away.", "score_chosen": 7, "score_rejected": 1,
             "margin": 0.5}]
    columns = {"prompt_column": "question", "chosen_column": "good", "rejected_column": "bad"}
    with imported(tmp_path, rows, **columns) as store:
        exported, _ = export_preferences(store)
        assert without_ids(exported, ("prompt", "chosen", "rejected", "score_chosen", "score_rejected", "margin")) == [
            {"prompt": r["question"], "chosen": r["good"], "rejected": r["bad"], "score_chosen": r["score_chosen"],
             "score_rejected": r["score_rejected"], "margin": r["margin"]} for r in rows]
        store.add_label(store.pairs()[0].pair_id, "B", "bob", "bob-1")  # bob prefers the other side
        flipped = [row for row in export_preferences(store)[0] if row["annotator"] == "bob"]
        assert (flipped[0]["score_chosen"], flipped[0]["score_rejected"]) == (2.5, 9.0)
        assert "margin" not in export_preferences(store)[0].column_names  # bob's row has none: TRL needs all or none
    with pytest.raises(PreferenceImportError, match="row 2, bad: missing"):  # errors name the file's own columns
        import_preferences(write_jsonl(tmp_path / "partial.jsonl", [rows[0], {"question": "q", "good": "a"}]),
                           **columns)
    with pytest.raises(ValueError, match="no column 'answer' \\(given as the chosen column\\)"):
        import_preferences(tmp_path / "prefs.jsonl", chosen_column="answer")
    with pytest.raises(PreferenceImportError, match="row 1, margin: must be a finite number"):
        import_preferences(write_jsonl(tmp_path / "nan.jsonl", [{**FORMS["explicit text"][0][0], "margin": "big"}]))


def test_load_dataset_folders_split_and_limit(tmp_path):
    rows, _ = FORMS["implicit chat"]
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "test.jsonl", rows[:1])
    with pytest.raises(ValueError, match=r"holds splits \['train', 'test'\]; import one with split='train'"):
        import_preferences(folder)
    assert import_preferences(folder, split="test").n_valid == 1
    assert import_preferences(folder, split="train", limit=1).n_rows == 1
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(saved))
    assert import_preferences(saved).n_valid == 2  # one split: no need to name it
    with pytest.raises(ValueError, match="has no split 'dev'"):
        import_preferences(saved, split="dev")
    assert import_preferences(write_jsonl(tmp_path / "x.jsonl", rows * 3), limit=4).n_rows == 4
    single = write_jsonl(tmp_path / "single.jsonl", rows)
    assert import_preferences(single, split="train").n_valid == 2  # a lone file is load_dataset's "train" split
    with pytest.raises(ValueError, match="single.jsonl: a single file holds one split, 'train', so split='test'"):
        import_preferences(single, split="test")
    with pytest.raises(FileNotFoundError, match="loading it as a Hub dataset failed"):
        import_preferences("no-such-owner/no-such-preference-set")  # offline: a name, not a path


def test_cli_imports_other_column_names_and_exports_the_implicit_form(tmp_path, capsys):
    from workbench.cli import main

    rows, _ = FORMS["hh dialogue"]
    source = write_jsonl(tmp_path / "hh.jsonl", [{"accepted": r["chosen"], "declined": r["rejected"]} for r in rows])
    db, out = str(tmp_path / "prefs.sqlite"), tmp_path / "out.jsonl"
    assert main(["prefs", "import", str(source), "--db", db, "--chosen-column", "accepted", "--rejected-column",
                 "declined", "--limit", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_imported"] == 1
    assert main(["prefs", "export", str(out), "--db", db, "--format", "implicit", "--json"]) == 0
    assert without_ids(json.loads(line) for line in out.read_text().splitlines()) == rows[:1]
    assert main(["prefs", "import", str(source), "--db", db, "--limit", "0"]) == 2
    assert "--limit 0: must be at least 1" in capsys.readouterr().err


TWO_TURNS = [user("Hi"), assistant("Hello"), user("Colour?")]
BAD = [  # (file rows, the error that names the row); row 1 is always good
    ([{"chosen": "Sky: blue.", "rejected": "Sky: red."}, {"chosen": "Green.", "rejected": "Blue."}],
     "row 2, chosen: chosen and rejected share no leading text"),
    ([{"chosen": "Sky: blue.", "rejected": "Sky: red."}, {"chosen": "Sky: blue.", "rejected": "Sky: blue."}],
     "row 2, rejected: same text as chosen once the shared prompt is taken off"),
    ([{"chosen": [*TWO_TURNS, assistant("Blue.")], "rejected": [*TWO_TURNS, assistant("Red.")]},
      {"chosen": [user("A"), assistant("x")], "rejected": [user("B"), assistant("y")]}],
     "row 2, chosen: chosen and rejected do not start with the same turn"),
    ([{"chosen": [*TWO_TURNS, assistant("Blue.")], "rejected": [*TWO_TURNS, assistant("Red.")]},
      {"chosen": [*TWO_TURNS, assistant("Blue.")], "rejected": [*TWO_TURNS, assistant("Blue.")]}],
     "row 2, rejected: same text as chosen once the shared prompt is taken off"),
    ([{"chosen": [*TWO_TURNS, assistant("Blue.")], "rejected": [*TWO_TURNS, assistant("Red.")]},
      {"chosen": [user("Hi"), assistant("Hello"), user("A?"), assistant("x")],
       "rejected": [user("Hi"), assistant("Hello"), user("B?"), assistant("y")]}],
     r"row 2, chosen: after the 2 shared turn\(s\), chosen has 2 message\(s\) \(from message 3\)"),
    ([{"chosen": [*TWO_TURNS, assistant("Blue.")], "rejected": [*TWO_TURNS, assistant("Red.")]},
      {"chosen": [user("Hi"), assistant("Hello"), assistant("x")],
       "rejected": [user("Hi"), assistant("Hello"), assistant("y")]}],
     "row 2, chosen: the shared turns end with a 'assistant' message"),
    ([{"chosen": "\n\nHuman: Hi\n\nAssistant: Yes.", "rejected": "\n\nHuman: Hi\n\nAssistant: No."},
      {"chosen": "\n\nHuman: Hi\n\nAssistant: Yes.\n\nHuman: Sure?\n\nAssistant: Yes.",
       "rejected": "\n\nHuman: Hi\n\nAssistant: No.\n\nHuman: Sure?\n\nAssistant: No."}],
     "row 2, chosen: chosen and rejected differ before their last Assistant reply"),
    ([{"chosen": "\n\nHuman: Hi\n\nAssistant: Yes.", "rejected": "\n\nHuman: Hi\n\nAssistant: No."},
      {"chosen": "\n\nHuman: Hi\n\nAssistant: Yes.", "rejected": "\n\nHuman: Hi\n\nAssistant:"}],
     "row 2, rejected: the last Assistant reply is empty"),
    ([{"chosen": "Sky: blue.", "rejected": "Sky: red."},
      {"chosen": [user("Hi"), assistant("x")], "rejected": [user("Hi"), assistant("y")]}],
     r"row 2, \(form\): implicit chat form, but the file is in the implicit text form \(row 1\)"),
    ([{"prompt": "Sky:", "chosen": " blue.", "rejected": " red."}, {"chosen": "Sky: blue.", "rejected": "Sky: red."},
      {"prompt": "Sea:", "chosen": " blue.", "rejected": " red."}],
     "row 2, prompt: missing; every row needs prompt, chosen and rejected, as row 1 has"),
    ([{"chosen": [user("Hi"), assistant("x")], "rejected": [user("Hi"), assistant("y")]},
      {"chosen": [user("Hi"), assistant("x")], "rejected": "Hi y"}], "row 2, rejected: must be a message list"),
]


@pytest.mark.parametrize("rows, expected", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_each_malformed_row_is_named_and_nothing_is_written(tmp_path, rows, expected):
    with PreferenceStore(tmp_path / "prefs.sqlite") as store:
        with pytest.raises(PreferenceImportError, match=expected):
            import_preferences(write_jsonl(tmp_path / "bad.jsonl", rows), store)
        assert store.count_pairs() == 0 and store.count_labels() == 0
        report = import_preferences(tmp_path / "bad.jsonl", store, skip_invalid=True)
        assert report.n_skipped == 1 and store.count_pairs() == len(rows) - 1


def test_the_rank_tab_shows_a_multi_turn_prompt_whole(tmp_path, tiny_policy):
    from apps import ranking
    from apps.context import AppContext, LoadedPolicy

    rows, _ = FORMS["implicit chat"]
    ctx = AppContext.open(tmp_path / "run", policy=LoadedPolicy("tiny-random-llama", *tiny_policy))
    try:
        import_preferences(write_jsonl(tmp_path / "chat.jsonl", rows), ctx.store)
        shown = list(ranking.stream_next_pair(ctx, "carol"))[-1]
        assert shown.prompt == "User: Hi there.\n\nAssistant: Hello! How can I help?\n\nUser: Name a colour."
        assert shown.prompt == conversation_text(HISTORY) and shown.pair.prompt == HISTORY
        assert ranking.pair_payload(shown.pair)["prompt"] == shown.prompt
    finally:
        ctx.close()


def changed(model, step):
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    step()
    return any(not torch.equal(before[name], p) for name, p in model.named_parameters() if name in before)


@pytest.fixture(scope="module")
def tiny_reward_backbone():
    from workbench.models import load_reward_backbone

    return load_reward_backbone("tiny-random-llama")


@pytest.fixture
def one_thread():
    """One intra-op thread: a tiny model gains nothing from two, and on a busy 2-core machine it halves a step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("form", FORMS)
def test_each_forms_export_trains_trl_reward_and_dpo_unchanged(tmp_path, form, tiny_reward_backbone, tiny_policy,
                                                               one_thread):
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    rows, export_form = FORMS[form]
    with imported(tmp_path, rows) as store:
        dataset, _ = export_preferences(store, form=export_form)
    common = dict(max_steps=1, per_device_train_batch_size=2, report_to="none", use_cpu=True, save_strategy="no",
                  disable_tqdm=True, bf16=False, gradient_checkpointing=False, learning_rate=1e-3)
    model, tokenizer = copy.deepcopy(tiny_reward_backbone[0]), tiny_reward_backbone[1]  # copies: training changes them
    rm = RewardTrainer(model=model, args=RewardConfig(output_dir=str(tmp_path / "rm"), **common),
                       train_dataset=dataset, processing_class=tokenizer)
    assert changed(model, rm.train)
    model, tokenizer = copy.deepcopy(tiny_policy[0]), tiny_policy[1]
    dpo = DPOTrainer(model=model, ref_model=None, args=DPOConfig(output_dir=str(tmp_path / "dpo"), **common),
                     train_dataset=dataset, processing_class=tokenizer)
    assert changed(model, dpo.train)


def test_the_reward_model_reads_the_whole_history_and_the_gold_the_last_turn(tmp_path, tiny_reward_backbone):
    from workbench.generation import prompt_text
    from workbench.reward.score import reward_text

    store = imported(tmp_path, FORMS["implicit chat"][0])
    pair = next(p for p in store.pairs() if isinstance(p.prompt, list) and len(p.prompt) == 3)
    _, tokenizer = tiny_reward_backbone
    text = reward_text(tokenizer, pair.prompt, "Blue.", "prompt <sep> completion")
    assert text.startswith("User: Hi there.\n\nAssistant: Hello! How can I help?\n\nUser: Name a colour.")
    assert prompt_text(pair.prompt) == "Name a colour."  # what the simulated labelers judge the reply against
