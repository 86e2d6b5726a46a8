"""Bad inputs for every command, in-process: each is refused with exit code 2, a one-line message naming the
culprit (flag or file), no traceback, and nothing written (no store, folder or file appears, none changes)."""

import json
import sqlite3

import pytest

from workbench import cli
from workbench.preferences import Pair, PreferenceStore

TINY = "tiny-random-llama"
LONG_PROMPT = " ".join(["word"] * 1500)  # > 1,024 tokens, < the character ceiling: the tokenizer's verdict


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One folder of bad (and a few good) inputs shared by every case."""
    return make_bad_inputs(tmp_path_factory.mktemp("bad-inputs"))


def make_bad_inputs(d):
    """Write the inputs the cases name into folder d (also used by benchmarks/robustness.py)."""
    (d / "adir").mkdir()
    (d / "afile").write_text("just a file\n")
    (d / "notdb.sqlite").write_text("not a database\n")
    (d / "empty.sqlite").write_bytes(b"")
    (d / "empty.jsonl").write_bytes(b"")
    (d / "empty.txt").write_bytes(b"")
    (d / "blank.jsonl").write_text("\n\n  \n")
    (d / "deep.jsonl").write_text("[" * 200_000 + "]" * 200_000 + "\n")
    (d / "sur.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "ok\ud800", "rejected": "no"}) + "\n")
    (d / "bad.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}) + "\n")
    (d / "good.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "yes", "rejected": "no"}) + "\n")
    (d / "badutf.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    (d / "huge.jsonl").write_text(json.dumps({"prompt": " ".join(["word"] * 400_000)}) + "\n")
    (d / "prompts.txt").write_text("a prompt\n")
    (d / "badutf.yaml").write_bytes(b"max_steps: 3\n\xff\xfe\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "unknown.yaml").write_text("max_stepz: 3\n")
    with sqlite3.connect(d / "other.sqlite") as other:  # a SQLite file of another program
        other.execute("CREATE TABLE t (x)")
    with PreferenceStore(d / "good.sqlite") as store:
        pairs = [Pair(f"p{i}", "prompt", f"a{i}", f"b{i}", "m", "m", False) for i in range(200)]
        store.add_pairs(pairs)
        for i, pair in enumerate(pairs):
            store.add_label(pair.pair_id, "A", "ann", f"s{i}", comment="x" * 200)
    with PreferenceStore(d / "trunc.sqlite") as store:
        store.add_pairs(pairs)
    data = (d / "trunc.sqlite").read_bytes()
    (d / "trunc.sqlite").write_bytes(data[: len(data) // 2])  # cut mid-file, as a crashed copy would be
    return d


# (argv with {d} for the folder above, text the one-line message must hold)
CASES = [
    # generate
    (["generate", TINY, "--prompt", "hi", "-n", "0"], "-n 0"),
    (["generate", TINY, "--prompt", "hi", "-n", "-3"], "-n -3"),
    (["generate", TINY, "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens 0"),
    (["generate", TINY, "--prompt", "hi", "--batch-size", "0"], "--batch-size 0"),
    (["generate", TINY, "--prompt", "hi", "--temperature", "-1"], "--temperature -1"),
    (["generate", TINY, "--prompt", "hi", "--top-p", "0"], "--top-p 0"),
    (["generate", TINY, "--prompt", "hi", "--top-p", "1.5"], "--top-p 1.5"),
    (["generate", TINY, "--prompt", "hi", "--seed", "-1"], "--seed -1"),
    (["generate", TINY, "--prompts", "{d}/missing.jsonl"], "missing.jsonl"),
    (["generate", TINY, "--prompts", "{d}/empty.jsonl"], "empty.jsonl"),
    (["generate", TINY, "--prompts", "{d}/huge.jsonl"], "huge.jsonl, prompt 1"),
    (["generate", TINY, "--prompts", "{d}/badutf.jsonl"], "badutf.jsonl"),
    (["generate", TINY, "--prompt", LONG_PROMPT], "--prompt, prompt 1"),
    (["generate", "no-such-model", "--prompt", "hi"], "no-such-model"),
    (["generate", TINY, "--prompt", "hi", "--prompts", "{d}/good.jsonl"], "exactly one of --prompt"),
    # pretrain
    (["pretrain", "--out", "{d}/pt", "--text", "{d}/missing.txt"], "missing.txt"),
    (["pretrain", "--out", "{d}/pt", "--text", "{d}/empty.txt"], "empty.txt"),
    (["pretrain", "--out", "{d}/pt", "--steps", "0"], "--steps 0"),
    (["pretrain", "--out", "{d}/pt", "--batch-size", "0"], "--batch-size 0"),
    (["pretrain", "--out", "{d}/pt", "--seq-len", "-5"], "--seq-len -5"),
    (["pretrain", "--out", "{d}/pt", "--config", "{d}/adir"], "adir"),
    (["pretrain", "--out", "{d}/pt", "--config", "{d}/missing.yaml"], "missing.yaml"),
    (["pretrain", "--out", "{d}/pt", "--config", "{d}/badutf.yaml"], "badutf.yaml: line 2"),
    (["pretrain", "--out", "{d}/pt", "--config", "{d}/list.yaml"], "list.yaml"),
    (["pretrain", "--out", "{d}/pt", "--config", "{d}/unknown.yaml"], "max_stepz"),
    (["pretrain", "--out", "{d}/pt", "--preset", "huge"], "preset"),
    (["pretrain", "--out", "{d}/afile"], "afile"),
    (["pretrain", "--out", "{d}/afile/run"], "afile"),
    # sft
    (["sft", "--out", "{d}/sft", "--data", "{d}/missing.jsonl"], "missing.jsonl"),
    (["sft", "--out", "{d}/sft", "--data", "{d}/empty.jsonl"], "empty.jsonl"),
    (["sft", "--out", "{d}/sft", "--steps", "0"], "--steps 0"),
    (["sft", "--out", "{d}/sft", "--learning-rate", "0"], "--learning-rate 0"),
    (["sft", "--out", "{d}/sft", "--learning-rate", "-0.5"], "--learning-rate -0.5"),
    (["sft", "--out", "{d}/sft", "--model", "no-such-model"], "no-such-model"),
    (["sft", "--out", "{d}/sft", "--config", "{d}/adir"], "adir"),
    # pairs
    (["pairs", "--db", "{d}/p.sqlite", "-n", "0"], "-n 0"),
    (["pairs", "--db", "{d}/p.sqlite", "--max-new-tokens", "0"], "--max-new-tokens 0"),
    (["pairs", "--db", "{d}/p.sqlite", "--temperature", "-0.5"], "--temperature -0.5"),
    (["pairs", "--db", "{d}/p.sqlite", "--policy", "no-such-model"], "no-such-model"),
    (["pairs", "--db", "{d}/adir"], "adir"),
    (["pairs", "--db", "{d}/notdb.sqlite"], "notdb.sqlite"),
    (["pairs", "--db", "{d}/trunc.sqlite"], "trunc.sqlite is damaged"),
    (["pairs", "--db", "{d}/afile/p.sqlite"], "afile"),
    # label
    (["label", "--db", "{d}/l.sqlite", "--pairs", "-1"], "--pairs -1"),
    (["label", "--db", "{d}/l.sqlite", "--pairs", "0"], "--pairs 0"),
    (["label", "--db", "{d}/l.sqlite", "--noise", "-1"], "--noise -1"),
    (["label", "--db", "{d}/l.sqlite", "--oracle", "nope"], "nope"),
    (["label", "--db", "{d}/l.sqlite", "--policy", "no-such-model"], "no-such-model"),
    (["label", "--db", "{d}/adir"], "adir"),
    (["label", "--db", "{d}/notdb.sqlite"], "notdb.sqlite"),
    (["label", "--db", "{d}/trunc.sqlite", "--policy", TINY], "trunc.sqlite is damaged"),
    # prefs
    (["prefs", "stats", "--db", "{d}/typo/prefs.sqlite"], "typo/prefs.sqlite: no such preference store"),
    (["prefs", "stats", "--db", "{d}/adir"], "adir: is a folder"),
    (["prefs", "stats", "--db", "{d}/notdb.sqlite"], "notdb.sqlite: not a SQLite"),
    (["prefs", "stats", "--db", "{d}/empty.sqlite"], "empty.sqlite: the file is empty"),
    (["prefs", "stats", "--db", "{d}/trunc.sqlite"], "trunc.sqlite is damaged"),
    (["prefs", "stats", "--db", "{d}/other.sqlite"], "other.sqlite: not a preference store"),
    (["prefs", "stats", "--db", "{d}/good.sqlite", "--oracle", "nope"], "nope"),
    (["prefs", "export", "{d}/out.jsonl", "--db", "{d}/typo.sqlite"], "typo.sqlite"),
    (["prefs", "export", "{d}/out.jsonl", "--db", "{d}/good.sqlite", "--keep", "Z"], "keep"),
    (["prefs", "export", "{d}/afile/out.jsonl", "--db", "{d}/good.sqlite"], "afile"),
    (["prefs", "export", "{d}/adir", "--db", "{d}/good.sqlite", "--keep", "A,Q"], "keep"),
    (["prefs", "import", "{d}/missing.jsonl", "--db", "{d}/new.sqlite"], "missing.jsonl"),
    (["prefs", "import", "--db", "{d}/new.sqlite", "{d}/empty.jsonl"], "empty.jsonl"),
    (["prefs", "import", "--db", "{d}/new.sqlite", "{d}/blank.jsonl"], "blank.jsonl: no rows"),
    (["prefs", "import", "{d}/deep.jsonl", "--db", "{d}/new.sqlite"], "nested too deeply"),
    (["prefs", "import", "{d}/sur.jsonl", "--db", "{d}/new.sqlite"], "row 1, chosen: character 3 is a lone"),
    (["prefs", "import", "{d}/bad.jsonl", "--db", "{d}/new.sqlite"], "--skip-invalid"),
    (["prefs", "import", "{d}/good.jsonl", "--db", "{d}/adir"], "adir"),
    (["prefs", "import", "{d}/good.jsonl", "--db", "{d}/notdb.sqlite"], "notdb.sqlite"),
    (["prefs", "import", "{d}/prompts.txt", "--db", "{d}/new.sqlite"], "prompts.txt"),
    (["prefs", "import", "{d}/adir", "--db", "{d}/new.sqlite"], "adir"),
    (["prefs", "import", "{d}/good.jsonl", "--db", "{d}/new/dir/p.sqlite", "--json", "--limit", "0"], "--limit 0"),
    # train-rm
    (["train-rm", "--db", "{d}/typo/prefs.sqlite", "--out", "{d}/rm"], "typo/prefs.sqlite"),
    (["train-rm", "--db", "{d}/adir", "--out", "{d}/rm"], "adir"),
    (["train-rm", "--db", "{d}/trunc.sqlite", "--out", "{d}/rm"], "trunc.sqlite is damaged"),
    (["train-rm", "--dataset", "{d}/missing.jsonl", "--out", "{d}/rm"], "missing.jsonl"),
    (["train-rm", "--dataset", "{d}/bad.jsonl", "--out", "{d}/rm"], "bad.jsonl: 1 invalid row(s)"),
    (["train-rm", "--db", "{d}/good.sqlite", "--out", "{d}/rm", "--epochs", "0"], "--epochs 0"),
    (["train-rm", "--db", "{d}/good.sqlite", "--out", "{d}/rm", "--config", "{d}/adir"], "adir"),
    (["train-rm", "--db", "{d}/good.sqlite", "--out", "{d}/rm", "--backbone", "no-such-model"], "no-such-model"),
    (["train-rm", "--db", "{d}/good.sqlite", "--dataset", "{d}/good.jsonl", "--out", "{d}/rm"], "exactly one"),
    (["train-rm", "--out", "{d}/rm"], "exactly one of --db"),
    # train-rl
    (["train-rl", "--out", "{d}/rl", "--steps", "0"], "--steps 0"),
    (["train-rl", "--out", "{d}/rl", "--beta", "-1"], "--beta -1"),
    (["train-rl", "--out", "{d}/rl", "--save-steps", "0"], "--save-steps 0"),
    (["train-rl", "--out", "{d}/rl", "--snapshot-steps", "0"], "--snapshot-steps 0"),
    (["train-rl", "--out", "{d}/rl", "--max-new-tokens", "0"], "--max-new-tokens 0"),
    (["train-rl", "--out", "{d}/rl", "--learning-rate", "0"], "--learning-rate 0"),
    (["train-rl", "--out", "{d}/rl", "--algo", "dpo", "--prefs", "{d}/typo.sqlite"], "typo.sqlite"),
    (["train-rl", "--out", "{d}/rl", "--algo", "dpo", "--dataset", "{d}/missing.jsonl"], "missing.jsonl"),
    (["train-rl", "--out", "{d}/rl", "--reward", "{d}/missing-rm"], "missing-rm"),
    (["train-rl", "--out", "{d}/rl", "--policy", "no-such-model"], "no-such-model"),
    (["train-rl", "--out", "{d}/afile"], "afile"),
    # evaluate
    (["evaluate", "--policy", "{d}/missing-policy", "--reward", "{d}/adir"], "missing-policy"),
    (["evaluate", "--policy", TINY, "--reward", "{d}/missing-rm"], "missing-rm"),
    (["evaluate", "--policy", TINY, "--reward", "{d}/adir", "--n-prompts", "0"], "--n-prompts 0"),
    (["evaluate", "--policy", TINY, "--reward", "{d}/adir", "--bon-max-n", "3"], "power of two"),
    (["evaluate", "--policy", TINY, "--reward", "{d}/adir", "--out", "{d}/adir"], "adir: is a folder"),
    # pipeline
    (["pipeline", "--out", "{d}/pipe", "--pairs", "0"], "--pairs 0"),
    (["pipeline", "--out", "{d}/pipe", "--steps", "0"], "--steps 0"),
    (["pipeline", "--out", "{d}/pipe", "--noise", "-1"], "--noise -1"),
    (["pipeline", "--out", "{d}/pipe", "--preset", "nope"], "nope"),
    (["pipeline", "--out", "{d}/afile"], "afile"),
    # app (never starts: every case is refused before the server)
    (["app", "--run", "{d}/app", "--model", "no-such-model"], "no-such-model"),
    (["app", "--run", "{d}/app", "--reward-backbone", "no-such-model"], "no-such-model"),
    (["app", "--run", "{d}/app", "--port", "0"], "--port 0"),
    (["app", "--run", "{d}/app", "--port", "70000"], "--port 70000"),
    (["app", "--run", "{d}/app", "--auth-file", "{d}/missing.txt"], "missing.txt"),
    (["app", "--run", "{d}/app", "--auth-file", "{d}/adir"], "adir"),
    (["app", "--run", "{d}/app", "--auth", "alice"], "user:password"),
    (["app", "--run", "{d}/app", "--host", "0.0.0.0"], "--host 0.0.0.0"),
    (["app", "--run", "{d}/afile"], "afile"),
    # models
    (["prepare", "no-such-model"], "no-such-model"),
]


def snapshot(folder):
    """Every path under the folder with its size and mtime (SQLite's -wal/-shm side files of stores left out)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for p in folder.rglob("*") if not p.name.endswith(("-wal", "-shm"))}


@pytest.mark.parametrize("argv, culprit", CASES, ids=[" ".join(a)[:70] for a, _ in CASES])
def test_bad_input_is_refused_cleanly(files, argv, culprit, capsys, monkeypatch):
    import apps.workbench_app

    monkeypatch.setattr(apps.workbench_app, "launch", lambda *a, **k: pytest.fail("the app was started"))
    before = snapshot(files)
    code = cli.main([arg.format(d=files) for arg in argv])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert culprit in err, err[-2000:]
    assert "Traceback" not in err and err.count("error:") == 1
    assert snapshot(files) == before, "a refused command wrote something"


def test_the_table_covers_every_command_and_at_least_sixty_cases():
    commands = {argv[0] for argv, _ in CASES}
    assert len(CASES) >= 60 and commands >= {"generate", "pretrain", "sft", "pairs", "label", "prefs", "train-rm",
                                             "train-rl", "evaluate", "pipeline", "app", "prepare"}


def test_prefs_options_and_path_in_any_order(files, tmp_path, capsys):
    for argv in (["prefs", "import", "--db", str(tmp_path / "a.sqlite"), str(files / "good.jsonl"), "--json"],
                 ["prefs", "import", str(files / "good.jsonl"), "--json", "--db", str(tmp_path / "b.sqlite")]):
        assert cli.main(argv) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["n_imported"] == 1
    assert cli.main(["prefs", "stats", "--db", str(tmp_path / "a.sqlite")]) == 0


def test_imported_pairs_are_put_on_random_recorded_sides(tmp_path, capsys):
    rows = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(200)]
    source = tmp_path / "external.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    db = str(tmp_path / "prefs.sqlite")
    assert cli.main(["prefs", "import", str(source), "--db", db]) == 0
    capsys.readouterr()
    assert cli.main(["prefs", "stats", "--db", db]) == 0
    share = json.loads(capsys.readouterr().out)["position_bias"]["share_A"]
    assert 0.4 < share < 0.6  # not 1.0: chosen is not always on the left
    with PreferenceStore(db, read_only=True) as store:
        for label in store.current_labels():
            pair = store.get_pair(label.pair_id)
            chosen = pair.completion_a if label.choice == "A" else pair.completion_b
            assert chosen.startswith("good")  # the label records which side chosen was put on
    assert cli.main(["prefs", "import", str(source), "--db", db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["n_imported"] == 0  # the draw is reproducible
