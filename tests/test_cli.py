import json
import subprocess
import sys

import pytest

COMMANDS = ["models", "prepare", "generate", "pretrain", "sft", "pairs", "label", "prefs", "train-rm", "train-rl",
            "evaluate", "pipeline", "app"]


def workbench(*args, check=True):
    """The real entry point, in a subprocess (~10 s of imports each: used where the process boundary matters)."""
    result = subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture
def cli(capsys):
    """`workbench ARGS` in this process through `cli.main`: the same parser, checks and exit codes as the console
    command, without a subprocess's imports. Returns (returncode, stdout, stderr) like subprocess.run."""
    from types import SimpleNamespace

    from workbench import cli as module

    def run(*args, check=True):
        capsys.readouterr()
        try:
            code = module.main(list(args))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
        out, err = capsys.readouterr()
        if check:
            assert code == 0, err[-2000:]
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)
    return run


def test_help_through_python_dash_m():
    assert "usage: workbench" in workbench("--help").stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_help_everywhere(command, capsys):
    from workbench import cli

    try:  # in-process: argparse's --help exits 0 (a subprocess per command cost ~5 s of imports each)
        code = cli.main([command, "--help"])
    except SystemExit as exit_:
        code = exit_.code
    assert code in (0, None) and "usage: workbench" in capsys.readouterr().out


def test_models_lists_the_registry_as_json(cli):
    rows = json.loads(cli("models", "--json").stdout)
    assert {r["name"] for r in rows} >= {"smollm2-135m-instruct", "minilm-l6", "tiny-random-llama"}
    assert all(r["offline_ready"] for r in rows)  # `make test` prepared them


def test_generate_json_is_reproducible(cli):
    args = ("generate", "tiny-random-llama", "--prompt", "Hello there", "-n", "3", "--seed", "5",
            "--max-new-tokens", "6", "--json")
    first = [json.loads(line) for line in workbench(*args).stdout.splitlines()]
    second = [json.loads(line) for line in cli(*args).stdout.splitlines()]  # another process, the same seed
    assert len(first) == 3 and first == second
    assert {"prompt", "completion", "n_tokens", "sum_logprob", "finished"} <= set(first[0])


def test_generate_from_a_prompt_file(tmp_path, cli):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "one"}\n{"prompt": "two"}\n')
    lines = cli("generate", "tiny-random-llama", "--prompts", str(path), "--max-new-tokens", "4", "--json")
    assert [json.loads(line)["prompt"] for line in lines.stdout.splitlines()] == ["one", "two"]


def test_errors_are_one_clear_line_and_exit_2(tmp_path, cli):
    result = workbench("generate", "no-such-model", "--prompt", "x", check=False)
    assert result.returncode == 2 and "Unknown model 'no-such-model'" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "bad.yaml").write_text("max_stepz: 3\n")
    result = cli("pretrain", "--out", str(tmp_path / "run"), "--config", str(tmp_path / "bad.yaml"), check=False)
    assert result.returncode == 2 and "unknown field(s) ['max_stepz']" in result.stderr


def test_pretrain_from_the_command_line_with_a_config_file(tmp_path, cli):
    (tmp_path / "pretrain.yaml").write_text("max_steps: 2\nbatch_size: 4\nseq_len: 32\nsample_tokens: 4\n")
    out = cli("pretrain", "--out", str(tmp_path / "run"), "--config", str(tmp_path / "pretrain.yaml"),
                    "--steps", "3", "--json")
    summary = json.loads(out.stdout)  # with --json, stdout is exactly one JSON line; trainer logs go to stderr
    assert summary["model_dir"].endswith("pretrain/model")
    saved = json.loads((tmp_path / "run" / "pretrain" / "config.json").read_text())
    assert saved["max_steps"] == 3 and saved["batch_size"] == 4  # flag overrides file, file overrides default


def test_stage2_from_the_command_line(tmp_path, cli):
    """label -> stats -> export -> import into a new store -> train-rm from the dataset, on the tiny models."""
    db = str(tmp_path / "run" / "prefs.sqlite")
    labelled = json.loads(workbench("label", "--db", db, "--pairs", "12", "--policy", "tiny-random-llama",
                                    "--max-new-tokens", "8", "--json").stdout)
    assert labelled["n_pairs"] == labelled["n_new_labels"] > 0
    again = json.loads(cli("label", "--db", db, "--pairs", "12", "--policy", "tiny-random-llama",
                           "--max-new-tokens", "8", "--json").stdout)
    assert again["n_new_labels"] == 0  # same seeds, same pairs: nothing labelled twice
    stats = json.loads(cli("prefs", "stats", "--db", db, "--oracle", "upbeat-concise").stdout)
    assert stats["n_labels"] == labelled["n_pairs"] and 0 <= stats["gold_agreement"]["share"] <= 1
    exported = json.loads(cli("prefs", "export", str(tmp_path / "prefs.jsonl"), "--db", db, "--json").stdout)
    assert exported["n_rows"] == labelled["n_pairs"]
    imported = json.loads(cli("prefs", "import", str(tmp_path / "prefs.jsonl"), "--db",
                              str(tmp_path / "copy.sqlite"), "--json").stdout)
    assert imported["n_imported"] == exported["n_rows"]
    summary = json.loads(cli("train-rm", "--dataset", str(tmp_path / "prefs.jsonl"), "--out",
                             str(tmp_path / "rm"), "--backbone", "tiny-random-llama", "--epochs", "1",
                             "--json").stdout)
    assert summary["n_pairs"] == exported["n_rows"] and 0 <= summary["accuracy"] <= 1
    assert (tmp_path / "rm" / "reward" / "model" / "workbench_reward.json").exists()

    # stage 3 from the same files: DPO from the store, RLOO against the RM, then the evaluation
    dpo = json.loads(cli("train-rl", "--algo", "dpo", "--prefs", db, "--out", str(tmp_path / "dpo"),
                         "--policy", "tiny-random-llama", "--steps", "1", "--json").stdout)
    assert dpo["global_step"] == 1
    rm_dir = str(tmp_path / "rm" / "reward" / "model")
    rl = json.loads(cli("train-rl", "--reward", rm_dir, "--out", str(tmp_path / "rl"), "--policy",
                        "tiny-random-llama", "--steps", "2", "--save-steps", "5", "--snapshot-steps", "1",
                        "--max-new-tokens", "6", "--json").stdout)
    assert (tmp_path / "rl" / "rl" / "snapshots" / "step-1").is_dir()
    report = json.loads(cli("evaluate", "--base", "tiny-random-llama", "--policy", rl["policy_dir"],
                            "--reward", rm_dir, "--n-prompts", "3", "--bon-max-n", "2", "--max-new-tokens",
                            "4", "--json").stdout)
    assert report["n_prompts"] == 3 and report["kl"]["n"] == 3 and (tmp_path / "rl" / "rl" / "eval.json").exists()
    points = json.loads((tmp_path / "rl" / "rl" / "eval.json").read_text())["rl_points"]
    assert [p["name"] for p in points] == ["base", "step-1", "final"]  # the snapshot is a point on the plot


def test_stage2_errors_are_clear(tmp_path, cli):
    result = cli("train-rm", "--out", str(tmp_path), check=False)
    assert result.returncode == 2 and "exactly one of --db PATH or --dataset PATH" in result.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "same", "rejected": "same"}\n')
    result = cli("prefs", "import", str(bad), "--db", str(tmp_path / "x.sqlite"), check=False)
    assert result.returncode == 2 and "row 1" in result.stderr
    result = cli("train-rl", "--algo", "dpo", "--out", str(tmp_path / "dpo"), "--policy", "tiny-random-llama",
                 check=False)
    assert result.returncode == 2 and "preference" in result.stderr
    result = cli("train-rl", "--out", str(tmp_path / "rl"), check=False)
    assert result.returncode == 2 and "needs a trained reward model" in result.stderr
