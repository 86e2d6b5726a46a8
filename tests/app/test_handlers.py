"""The app's handlers called directly (no Gradio): tiny-random-llama, a temporary run directory, real SQLite."""

import sys
import time

import pytest
import torch

from apps import compare, ranking, training
from apps.context import AppContext, LoadedPolicy, prepare_for_decoding
from apps.handlers import InputError
from apps.jobs import JobRunner


def test_next_pair_stores_pairs_and_moves_on_after_a_label(ctx):
    pair, _ = ranking.next_pair(ctx, "ann")
    assert ctx.store.get_pair(pair.pair_id) == pair  # stored before it is shown
    assert ranking.next_pair(ctx, "ann")[0].pair_id == pair.pair_id  # unlabelled: shown again
    ranking.submit_label(ctx, pair.pair_id, "A", "ann", "t1:A")
    assert ranking.next_pair(ctx, "ann")[0].pair_id != pair.pair_id
    assert ranking.next_pair(ctx, "bob")[0].pair_id == pair.pair_id  # another annotator still gets it
    assert set(ranking.pair_payload(pair)) == {"pair_id", "prompt", "completion_a", "completion_b"}  # no model names


def test_a_new_pair_streams_side_by_side_and_is_stored_only_when_complete(ctx):
    updates = []
    for shown in ranking.stream_next_pair(ctx, "ann"):
        updates.append((shown, ctx.store.count_pairs()))
    *partial, (last, stored) = updates
    assert len(partial) >= 2 and all(s.pair is None and n == 0 for s, n in partial)  # nothing to label yet
    assert partial[0][0].text_a and partial[0][0].text_b  # both sides from the first step on
    assert stored == 1 and ctx.store.get_pair(last.pair.pair_id) == last.pair
    assert (last.text_a, last.text_b) == (last.pair.completion_a, last.pair.completion_b)
    again = list(ranking.stream_next_pair(ctx, "ann"))  # unlabelled: shown again, whole, without generating
    assert len(again) == 1 and again[0].pair == last.pair and ctx.store.count_pairs() == 1
    typed = list(ranking.stream_pair_for_prompt(ctx, "Describe a quiet harbour at dawn."))
    assert typed[-1].pair.prompt == "Describe a quiet harbour at dawn." and typed[-1].note == "your prompt"
    with pytest.raises(InputError, match="limit is 2,000"):
        next(ranking.stream_pair_for_prompt(ctx, "x" * 1_000_000))
    assert ctx.store.count_pairs() == 2


def test_a_resent_submission_is_one_label_and_undo_withdraws_it(ctx):
    pair, _ = ranking.next_pair(ctx, "ann")
    first, _ = ranking.submit_label(ctx, pair.pair_id, "B", "ann", "tok:B")
    again, _ = ranking.submit_label(ctx, pair.pair_id, "B", "ann", "tok:B")
    assert first.label_id == again.label_id and ctx.store.count_labels() == 1
    assert ranking.progress(ctx, "ann") == {"mine": 1, "everyone": 1, "pairs": ctx.store.count_pairs(), "target": 50}
    with pytest.raises(InputError, match="another vote"):
        ranking.submit_label(ctx, pair.pair_id, "A", "ann", "tok:B")
    undone = ranking.undo_last(ctx, "ann", "tok:undo")
    assert undone.pair_id == pair.pair_id and ctx.store.count_labels() == 0
    assert ranking.undo_last(ctx, "ann", "tok2:undo") is None


@pytest.mark.parametrize("change, match", [
    ({"choice": "C"}, "choice must be one of"),
    ({"choice": None}, "choice must be one of"),
    ({"pair_id": "does-not-exist"}, "Unknown pair"),
    ({"pair_id": "x" * 1_000_000}, "pair_id must be"),
    ({"annotator": "x" * 1_000_000}, "limit is 64"),
    ({"annotator": "<script>"}, "letters, digits"),
    ({"annotator": " "}, "empty"),
    ({"submission_id": "a b"}, "submission_id"),
    ({"submission_id": 5}, "submission_id"),
])
def test_invalid_labels_are_refused_and_nothing_is_written(ctx, change, match):
    pair, _ = ranking.next_pair(ctx, "ann")
    request = {"pair_id": pair.pair_id, "choice": "A", "annotator": "ann", "submission_id": "s:A", **change}
    with pytest.raises(InputError, match=match):
        ranking.submit_label(ctx, **request)
    assert ctx.store.count_labels() == 0


def test_typed_prompt_makes_a_new_pair(ctx):
    pair = ranking.pair_for_prompt(ctx, "Describe a quiet harbour at dawn.")
    assert pair.prompt == "Describe a quiet harbour at dawn." and pair.prompt_id.startswith("typed-")
    with pytest.raises(InputError, match="limit is 2,000"):
        ranking.pair_for_prompt(ctx, "x" * 1_000_000)
    with pytest.raises(InputError, match="Model A must be one of"):
        ranking.pair_for_prompt(ctx, "hi", model_a="/etc")


def test_reveal_text_before_a_reward_model_exists(ctx):
    pair, _ = ranking.next_pair(ctx, "ann")
    _, reveal = ranking.submit_label(ctx, pair.pair_id, "A", "ann", "r:A", reveal=True)
    assert reveal.score_a is None and reveal.agrees is None
    assert "No reward model yet" in ranking.reveal_markdown(reveal, has_reward_model=False)


def test_reward_and_rl_need_their_inputs(ctx):
    with pytest.raises(InputError, match="label at least"):
        training.start_reward_training(ctx, 1)
    with pytest.raises(InputError, match="Epochs must be between"):
        training.start_reward_training(ctx, 1e9)
    with pytest.raises(InputError, match="train one in the Reward model tab"):
        training.start_rl(ctx, "rloo", 2, 0.05, False)
    with pytest.raises(InputError, match="Algorithm must be one of"):
        training.start_rl(ctx, "ppo; rm -rf /", 2, 0.05, False)
    with pytest.raises(InputError, match="Steps must be"):
        training.start_rl(ctx, "dpo", 10**9, 0.05, False)
    with pytest.raises(InputError, match="Nothing to resume"):
        training.start_rl(ctx, "dpo", 2, 0.05, False, resume=True)
    with pytest.raises(InputError, match="No tuned policy"):
        compare.compare_prompt(ctx, "hi", 0)
    assert training.rl_curves(ctx) is not None and training.latest_samples(ctx) == []


def test_rl_command_is_an_argument_list(ctx):
    command = training.rl_command(ctx, "rloo", 5, 0.1, True, False)
    assert command[:3] == [sys.executable, "-m", "workbench"]
    assert command[command.index("--reward") + 1] == str(ctx.reward_dir) and "--lora" in command


def test_rl_from_the_app_follows_the_pipelines_trust_rule(ctx):
    import json

    assert training.rl_trust(ctx, lora=False) == (None, "")  # no RM evaluation yet: the defaults
    (ctx.root / "reward").mkdir(parents=True, exist_ok=True)
    report = {"accuracy": 0.55, "accuracy_ci": [0.42, 0.68], "n_val": 40, "n_train": 160}
    (ctx.root / "reward" / "eval.json").write_text(json.dumps(report))
    rate, why = training.rl_trust(ctx, lora=False)
    assert rate == pytest.approx(1e-5 * 0.25) and "includes chance" in why and "0.25x" in why
    assert training.rl_trust(ctx, lora=True)[0] == pytest.approx(1e-4 * 0.25)
    command = training.rl_command(ctx, "rloo", 5, 0.1, True, False, rate)
    assert command[command.index("--lora-learning-rate") + 1] == "2.5e-06"
    (ctx.root / "reward" / "eval.json").write_text(json.dumps({**report, "accuracy_ci": [0.61, 0.8]}))
    assert training.rl_trust(ctx, lora=False) == (None, "")  # a trusted RM: the default rate


def _wait(runner, name, timeout=30):
    deadline = time.time() + timeout
    while runner.status(name)["state"] == "running" and time.time() < deadline:
        time.sleep(0.1)
    return runner.status(name)


def test_jobs_report_success_crash_and_stop(tmp_path):
    runner = JobRunner(tmp_path)
    runner.start("ok", [sys.executable, "-c", "import json; print(json.dumps({'accuracy': 0.75}))"])
    assert _wait(runner, "ok")["result"] == {"accuracy": 0.75}
    runner.start("crash", [sys.executable, "-c", "import sys; print('boom at step 3', file=sys.stderr); sys.exit(3)"])
    status = _wait(runner, "crash")
    assert status["state"] == "failed" and status["returncode"] == 3 and "boom at step 3" in status["error"]
    runner.start("slow", [sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(RuntimeError, match="already running"):
        runner.start("slow", [sys.executable, "-c", "pass"])
    assert runner.stop("slow") and runner.status("slow")["state"] == "stopped"
    assert not runner.stop("slow")


def test_blind_votes_are_durable_and_idempotent(tmp_path):
    votes = compare.BlindVoteStore(tmp_path / "votes.sqlite")
    pair = compare.BlindPair("hi", 1, "left", "tok")
    assert compare.blind_vote(votes, pair, "left", "ann")[0] == 1.0
    assert compare.blind_vote(votes, pair, "left", "ann")[1].n == 1  # a re-sent vote counts once
    compare.blind_vote(votes, compare.BlindPair("hi", 2, "left", "tok2"), "tie", "ann")
    compare.blind_vote(votes, compare.BlindPair("hi", 3, "right", "tok3"), "left", "ann")
    reopened = compare.BlindVoteStore(tmp_path / "votes.sqlite")
    assert reopened.outcomes() == [1.0, 0.5, 0.0] and reopened.win_rate().value == 0.5
    with pytest.raises(InputError, match="choice"):
        compare.blind_vote(votes, pair, "both", "ann")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_policy):
    """A run with 16 labels, a reward model and a 2-step RL run, all trained through the app's subprocess jobs."""
    context = AppContext.open(tmp_path_factory.mktemp("trained") / "run", reward_backbone="tiny-random-llama",
                              policy=LoadedPolicy("tiny-random-llama", *tiny_policy))
    while context.store.count_labels() < 16:
        pair, _ = ranking.next_pair(context, "ann")
        choice = "A" if len(pair.completion_a) < len(pair.completion_b) else "B"  # a learnable rule: shorter wins
        ranking.submit_label(context, pair.pair_id, choice, "ann", f"{pair.pair_id}:{choice}")
    training.start_reward_training(context, 1)
    status = _wait(context.jobs, "reward", timeout=240)
    assert status["state"] == "finished", status["error"]
    assert "finished" in training.job_markdown(status, "Reward-model training")
    training.start_rl(context, "rloo", 2, 0.05, False)
    status = _wait(context.jobs, "rl", timeout=300)
    assert status["state"] == "finished", status["error"]
    yield context
    context.close()


def test_reward_model_tab_after_training(trained):
    assert trained.has_reward_model() and trained.run.read_metrics("reward")
    assert "accuracy vs labels" in training.reward_summary(trained)
    diagnostics = training.reward_diagnostics(trained)
    assert "accuracy" in diagnostics["text"] and diagnostics["calibration"] is not None
    assert isinstance(training.score_text(trained, "Say hi.", "Hi!"), float)
    with pytest.raises(InputError, match="limit is 4,000"):
        training.score_text(trained, "Say hi.", "x" * 1_000_000)


def test_votes_reveal_the_reward_model_and_active_selection_picks_the_closest(trained):
    pair, note = ranking.next_pair(trained, "eve", active=True)
    assert "least sure" in note
    pool = trained.store.next_unlabelled("eve", limit=64)
    margins = ranking.reward_margins(trained, pool)
    assert margins[pair.pair_id] == min(margins.values())
    label, reveal = ranking.submit_label(trained, pair.pair_id, "A", "eve", "eve1:A", reveal=True)
    assert (label.score_a, label.score_b) == (reveal.score_a, reveal.score_b) and 0 < reveal.p_a < 1
    assert reveal.agrees == (reveal.score_a > reveal.score_b)
    assert "Reward model: A =" in ranking.reveal_markdown(reveal, True)


def test_rl_tab_and_compare_after_training(trained):
    assert trained.has_tuned_policy() and "rl/policy" in trained.model_choices()
    assert training.rl_curves(trained).data  # at least one panel with points
    with pytest.raises(InputError, match="already holds an RL run"):
        training.start_rl(trained, "rloo", 2, 0.05, False)
    result = compare.compare_prompt(trained, "Give one tip for a rainy day.", 3)
    assert isinstance(result["base"], str) and len(result["gold"]) == 2 and result["proxy"][0] is not None
    pair, left, right = compare.new_blind_pair(trained)
    assert {left, right} >= {left} and pair.tuned_side in ("left", "right")
    mixed = ranking.pair_for_prompt(trained, "Name a fruit.", trained.policy.name, "rl/policy")
    assert {mixed.model_a, mixed.model_b} == {"tiny-random-llama", "rl/policy"}


def test_tuned_policies_decode_in_fp32_where_the_base_decodes_in_bf16(trained, tiny_policy, monkeypatch):
    import copy

    import workbench.models

    monkeypatch.setattr(workbench.models, "cpu_has_native_bf16", lambda: True)
    trained._policies.clear()  # loaded afresh under the patched CPU check
    tuned, _ = trained.model_for("rl/policy")
    assert next(tuned.parameters()).dtype == torch.float32  # bf16 would round most RL updates away
    base = prepare_for_decoding(copy.deepcopy(tiny_policy[0]), rows=2)
    assert next(base.parameters()).dtype == torch.bfloat16
    trained._policies.clear()  # later tests load their own copies
