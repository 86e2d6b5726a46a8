"""The app closes the loop for a person (issue 19): guidance, honest counts and intervals, job status for people,
persona top-up, exports, the blind test's prompt and identical pairs. Real tiny models, real SQLite, real jobs."""

import json
import sys
import time
import zipfile

import pytest

from apps import compare, exports, guidance, persona, ranking, training
from apps.handlers import InputError
from apps.jobs import JobRunner, step_progress
from apps.workbench_app import build_demo


def _label(ctx, choices, annotator="ann"):
    """New pairs written in one batch (faster than one streamed pair at a time), labelled with `choices`."""
    pairs = ranking.generate_pairs(ctx, ranking.next_prompts(ctx, len(choices)))
    for pair, choice in zip(pairs, choices):
        ranking.submit_label(ctx, pair.pair_id, choice, annotator, f"{pair.pair_id}:{annotator}:{choice}")
    return pairs


def test_usable_labels_are_counted_apart_from_ties_both_bad_skips_and_identical_pairs(ctx):
    from workbench.preferences import Pair

    _label(ctx, ["A", "B", "tie", "both_bad", "skip"])
    same = Pair(pair_id="same-1", prompt_id="p", prompt="Say hi.", completion_a="hi", completion_b="hi",
                model_a="m", model_b="m", swapped=False)
    ctx.store.add_pairs([same])
    ranking.submit_label(ctx, "same-1", "A", "ann", "same:A")
    counts = guidance.label_counts(ctx)
    assert (counts.total, counts.preferences, counts.ties, counts.both_bad, counts.skips, counts.identical) == \
        (6, 2, 1, 1, 1, 1)
    assert counts.usable == 3 and counts.human == 6 and counts.simulated == 0
    needed = guidance.enough_labels(ctx)
    assert needed == ctx.label_target  # the number comes from the app's target, not a copy
    text = guidance.labels_markdown(counts, needed)
    assert "**3 usable**" in text and "1 both bad, 1 skipped, 1 on identical replies" in text
    assert f"below ~{needed} usable labels the reward model is near chance" in text
    assert "47 more to go" in text and "Pick the reply" in guidance.rank_guidance(counts, needed, False)
    assert "train the reward model" in guidance.rank_guidance(guidance.LabelCounts(preferences=needed), needed, False)


def test_intervals_carry_their_n_and_say_when_there_are_too_few():
    assert guidance.estimate_markdown(0.667, 0.0, 1.0, 3) == "0.67 (95% CI 0.00–1.00, n = 3 pairs; too few to tell, aim for 20+)"
    assert "too few" not in guidance.estimate_markdown(0.7, 0.6, 0.8, guidance.TOO_FEW_N)
    assert guidance.estimate_markdown(float("nan"), None, None, 0, "votes") == "– (n = 0 votes)"


def test_the_reward_model_disagrees_only_by_a_margin_and_its_verdict_quotes_the_pair(ctx):
    assert guidance.verdict("A", 0.5) == "unsure" and guidance.verdict("B", 0.45) == "unsure"
    assert guidance.verdict("A", 0.2) == "disagrees" and guidance.verdict("B", 0.2) == "agrees"
    assert guidance.verdict("tie", 0.9) == "" and guidance.verdict("A", None) == ""
    pair, _ = ranking.next_pair(ctx, "ann")
    equal = ranking.reveal_markdown(ranking.Reveal("A", 0.1, 0.1, 0.5), True, pair)
    assert "disagrees" not in equal and "cannot tell" in equal and "**Last pair**" in equal
    assert " ".join(pair.completion_a.split())[:40] in equal
    assert "**disagrees**" in ranking.reveal_markdown(ranking.Reveal("A", -1.0, 1.0, 0.12), True, pair)
    assert "✅" not in equal and "⚠" not in equal  # no emoji the page has no font for


def test_job_status_reads_like_a_product_step_counter_eta_and_a_sentence(tmp_path):
    script = ("import sys, time, json\n"
              "print('transformers/modeling_utils.py:3312: FutureWarning: something', file=sys.stderr)\n"
              "for i in range(3):\n"
              "    print(f'\\r {i * 25}%|##   | {i}/4 [00:0{2 * i}<00:08,  2.00s/it]', end='', file=sys.stderr, flush=True)\n"
              "    time.sleep(0.4)\n"
              "time.sleep(30)\n")
    runner = JobRunner(tmp_path)
    runner.start("rl", [sys.executable, "-c", script])
    deadline = time.time() + 30
    while (runner.status("rl")["steps"] or {}).get("done") != 2 and time.time() < deadline:
        time.sleep(0.2)
    status = runner.status("rl")
    text = training.job_markdown(status, "RL run")
    assert "step 2 of 4" in text and "50%" in text and "about 4 s left" in text  # 4 s elapsed / 2 steps x 2 left
    assert "FutureWarning" not in text and "it/s" not in text and "s/it" not in text and "modeling_utils" not in text
    runner.stop("rl")
    assert "stopped" in training.job_markdown(runner.status("rl"), "RL run")
    runner.start("crash", [sys.executable, "-c", "import sys; print('x.py:1: FutureWarning: noise', file=sys.stderr);"
                           "print('ValueError: the reward folder is empty', file=sys.stderr); sys.exit(2)"])
    while runner.status("crash")["state"] == "running":
        time.sleep(0.1)
    failed = training.job_markdown(runner.status("crash"), "Reward-model training")
    assert "ValueError: the reward folder is empty" in failed and "FutureWarning" not in failed
    done = {"state": "finished", "seconds": 12.0, "result": {"kind": "embedding-head", "n_train": 14, "n_ties": 3,
                                                              "n_val": 3, "accuracy": 0.667, "accuracy_ci": [0, 1]}}
    line = training.job_markdown(done, "Reward-model training", training.reward_finished)
    assert "14 training pairs (3 of them ties)" in line and "n = 3 pairs; too few to tell" in line
    assert "model_dir" not in line and step_progress(["no bar here"]) is None


def test_a_finished_rl_run_offers_a_new_run_not_resume(ctx):
    checkpoint = ctx.root / "rl" / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2, "max_steps": 2}))
    with pytest.raises(InputError, match="finished after 2 steps. To start a new run, tick 'New run") as refused:
        training.start_rl(ctx, "dpo", 2, 0.05, False)
    assert "Resume" not in str(refused.value)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2, "max_steps": 5}))
    with pytest.raises(InputError, match="Press Resume"):
        training.start_rl(ctx, "dpo", 2, 0.05, False)
    assert training.rl_settings(ctx) is None  # nothing runs: the page keeps its own fields


def test_persona_top_up_is_stored_apart_and_compared_with_the_person(ctx):
    human = _label(ctx, ["A", "B", "A"])
    lines = list(persona.top_up(ctx, "upbeat-concise", 4, "careful (T = 0.1)"))
    assert "labelled 4 new pairs and 3 pairs people had labelled" in lines[-1]
    names = {label.annotator for label in ctx.store.current_labels()}
    assert names == {"ann", "sim:upbeat-concise:T=0.1"}
    stats = persona.persona_stats(ctx)
    assert (stats["human"], stats["simulated"]) == (3, 7)
    (row,) = stats["agreement"]
    assert row["n"] == 3 and row["person"] == "ann" and -1 <= row["kappa"] <= 1
    text = persona.persona_markdown(stats)
    assert "3 by people" in text and "7 simulated" in text and "too few shared pairs" in text
    assert guidance.label_counts(ctx).simulated == 7
    assert {p.pair_id for p in human} <= {l.pair_id for l in ctx.store.current_labels("sim:upbeat-concise:T=0.1")}
    for bad, match in (({"oracle": "nobody"}, "Persona must be one of"), ({"n": 10**6}, "Pairs to label"),
                       ({"noise": "loud"}, "Noise must be a number")):
        with pytest.raises(InputError, match=match):
            next(persona.top_up(ctx, **{"oracle": "concise", "n": 1, "noise": 0.1, **bad}))


def test_exports_and_editing_a_label_as_a_new_revision(ctx):
    with pytest.raises(InputError, match="No labels to download"):
        exports.labels_file(ctx)
    pairs = _label(ctx, ["A", "tie", "skip"])
    path = exports.labels_file(ctx, "jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["choice"] for r in rows) == ["A", "skip", "tie"] and not path.is_relative_to(ctx.root)
    assert exports.labels_file(ctx, "parquet").stat().st_size > 0
    with pytest.raises(InputError, match="No reward model in this run"):
        exports.folder_zip(ctx, "reward model")
    (ctx.root / "reward" / "model").mkdir(parents=True)
    (ctx.root / "reward" / "model" / "manifest.json").write_text("{}")
    with zipfile.ZipFile(exports.folder_zip(ctx, "reward model")) as archive:
        assert archive.namelist() == ["manifest.json"]
    with pytest.raises(InputError, match="Download must be one of"):
        exports.folder_zip(ctx, "../../etc")
    with pytest.raises(InputError, match="No evaluation report"):
        exports.report_file(ctx)
    history = exports.history_rows(ctx, "ann")
    assert [row[0] for row in history] == [p.pair_id for p in reversed(pairs)] and history[0][2] == "skip"
    edited = exports.edit_label(ctx, "ann", pairs[0].pair_id, "B", "edit:1")
    assert edited.revision == 2 and edited.choice == "B"
    assert [label.choice for label in ctx.store.history(pairs[0].pair_id)] == ["A", "B"]
    with pytest.raises(InputError, match="your own labelled pairs"):
        exports.edit_label(ctx, "bob", pairs[0].pair_id, "A", "edit:2")


def test_blind_pairs_show_their_prompt_and_identical_ones_are_counted_apart(ctx, tmp_path):
    from workbench.evaluation.metrics import bootstrap_ci

    ctx.policy.model.save_pretrained(ctx.tuned_dir)  # a "tuned" policy that is the base: identical replies
    ctx.policy.tokenizer.save_pretrained(ctx.tuned_dir)
    votes = compare.BlindVoteStore(tmp_path / "votes.sqlite")
    pair, left, right = compare.new_blind_pair(ctx, None, votes)
    from workbench.data import builtin_prompts
    assert pair.prompt in {r.text for r in builtin_prompts("heldout")}  # never the Rank tab's own-prompt box
    assert pair.identical == (left == right) and votes.count_identical() == int(pair.identical)
    assert f"**Prompt:** {pair.prompt}" in compare.blind_prompt_markdown(pair)
    typed, _, _ = compare.new_blind_pair(ctx, "Name a colour.", votes)
    assert typed.prompt == "Name a colour."
    same = compare.BlindPair("hi", 1, "left", "tok-same", identical=True)
    with pytest.raises(InputError, match="identical"):
        compare.blind_vote(votes, same, "left", "ann")
    votes.add_identical("tok-same", "hi", 1)
    votes.add_identical("tok-same", "hi", 1)  # counted once per drawn pair
    n_identical = votes.count_identical()
    compare.blind_vote(votes, compare.BlindPair("hi", 2, "left", "tok-2"), "left", "ann")
    text = compare.win_rate_markdown(votes.win_rate(), n_identical)
    assert "n = 1 votes; too few to tell" in text and f"{n_identical} drawn pair" in text
    assert votes.win_rate().n == 1 and bootstrap_ci([1.0]).n == 1
    with pytest.raises(InputError, match="reward model and a tuned policy"):
        compare.start_evaluation(ctx, 4)
    with pytest.raises(InputError, match="Held-out prompts must be between"):
        compare.start_evaluation(ctx, 10**6)


def test_the_app_builds_with_every_new_control(ctx):
    demo = build_demo(context=ctx)
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert {"persona-go", "history-go", "edit-go", "labels-download", "eval-go", "eval-status", "blind-prompt",
            "blind-shown-prompt", "folder-download", "report-download", "rl-note"} <= ids


def test_evaluate_from_the_compare_tab_runs_as_a_job_and_fills_the_report(ctx):
    """A real `workbench evaluate` job on tiny models: a reward model fitted here, the base saved as "tuned"."""
    from workbench.reward.train import RewardModelConfig, train_reward_model

    pairs = _label(ctx, ["A", "B"] * 4)
    rows = [{"prompt": p.prompt, "chosen": p.completion_a, "rejected": p.completion_b} for p in pairs]
    train_reward_model(rows, RewardModelConfig(kind="policy", backbone="tiny-random-llama", save_checkpoints=False,
                                               oracle=None, val_fraction=0.0), ctx.root)
    ctx.policy.model.save_pretrained(ctx.tuned_dir)
    ctx.policy.tokenizer.save_pretrained(ctx.tuned_dir)
    assert compare.evaluation_report(ctx) is None
    assert "Evaluation started on 2 held-out prompts" in compare.start_evaluation(ctx, 2)
    command = ctx.jobs.status("evaluate")["command"]
    assert command[command.index("--n-prompts") + 1] == "2" and command[command.index("--base") + 1] == ctx.policy.name
    deadline = time.time() + 240
    while ctx.jobs.status("evaluate")["state"] == "running" and time.time() < deadline:
        time.sleep(0.5)
    status = ctx.jobs.status("evaluate")
    assert status["state"] == "finished", status["error"]
    line = training.job_markdown(status, "Evaluation", compare.evaluation_finished)
    assert "On 2 held-out prompts the tuned policy beats the base" in line and "too few to tell" in line
    report = compare.evaluation_report(ctx)
    assert report["table"] is not None and report["overoptimisation"] is not None and report["win_rates"] is not None
    assert "Gaming indicators" in report["gaming"] and "by the reward model (proxy)" in report["summary"]
    assert line.split("beats the base")[-1] not in report["summary"]  # the job line's sentence is not repeated
    assert exports.report_file(ctx).read_text() == (ctx.root / "rl" / "eval.json").read_text()


def test_the_reward_models_accuracy_carries_the_n_it_was_measured_on(ctx):
    """Ties train as half a win but are not evaluated: the accuracy's n counts the pairs it was measured on. A
    held-out tie made the tab say "n = <held-out labels>" for an accuracy over one pair fewer."""
    from workbench.preferences import export_preferences
    from workbench.reward.train import RewardModelConfig, is_validation, train_reward_model

    config = RewardModelConfig(kind="policy", backbone="tiny-random-llama", save_checkpoints=False, oracle=None)
    held_out = []
    while len(held_out) < 2:  # labels "A" until two of them fall into the validation split
        _label(ctx, ["A"] * 8)
        rows = export_preferences(ctx.store, keep=("A", "B", "tie"))[0].to_list()
        held_out = [r for r in rows if is_validation(r, config.val_fraction)]
    ranking.submit_label(ctx, held_out[0]["pair_id"], "tie", "ann", "relabel:tie")  # same sides: still held out
    rows = export_preferences(ctx.store, keep=("A", "B", "tie"))[0].to_list()
    result = train_reward_model(rows, config, ctx.root).summary()
    n_evaluated = sum(is_validation(r, config.val_fraction) and r["choice"] != "tie" for r in rows)
    assert result["n_val"] == n_evaluated + 1 and result["n_evaluated"] == n_evaluated
    summary = training.reward_summary(ctx)
    assert f"n = {n_evaluated} pairs" in summary and f"n = {n_evaluated + 1}" not in summary
    line = training.reward_finished(result)
    assert f"accuracy on {n_evaluated} held-out labels" in line and f"n = {n_evaluated} pairs" in line



def test_the_reward_model_tab_shows_a_heads_learning_curve_on_the_current_labels(ctx):
    """A head kind (what `auto` trains on the app's labels) has no training steps to plot: the tab shows its
    cross-validated learning curve instead; a fine-tuned kind trained afterwards brings back its step curves."""
    from workbench.preferences import export_preferences
    from workbench.reward.train import RewardModelConfig, train_reward_model

    _label(ctx, ["A"] * 24)
    rows = export_preferences(ctx.store)[0].to_list()
    train_reward_model(rows, RewardModelConfig(kind="embedding-head", max_length=64, oracle=None), ctx.root)
    loss, accuracy = training.reward_curves(ctx)
    curve = json.loads((ctx.root / "reward" / "label_curve.json").read_text())
    assert "learning curve on your labels" in accuracy.layout.title.text
    n_train = json.loads((ctx.root / "reward" / "eval.json").read_text())["n_train"]
    assert list(accuracy.data[1].x) == [row["n_labels"] for row in curve] and curve[-1]["n_evaluated"] == n_train
    assert list(loss.data[0].y) == [row["log_loss"] for row in curve]
    train_reward_model(rows, RewardModelConfig(kind="policy", backbone="tiny-random-llama", save_checkpoints=False,
                                               oracle=None), ctx.root)
    loss, accuracy = training.reward_curves(ctx)
    assert not (ctx.root / "reward" / "label_curve.json").exists() and "training loss" in loss.layout.title.text


def test_back_on_the_rank_tab_a_stale_no_reward_model_hint_is_replaced(ctx):
    pair = _label(ctx, ["A"])[0]
    label, reveal = ranking.submit_label(ctx, pair.pair_id, "B", "ann", "stale:B", reveal=True)
    stale = ranking.reveal_markdown(reveal, False, pair)
    assert ranking.NO_RM_HINT in stale
    assert ranking.refresh_reveal(stale, False) == stale
    fresh = ranking.refresh_reveal(stale, True)
    assert ranking.NO_RM_HINT not in fresh and ranking.RM_NOW_HINT in fresh and pair.completion_a[:20] in fresh
    demo = build_demo(context=ctx)
    rank_tab = next(b for b in demo.blocks.values() if getattr(b, "id", None) == "rank" or getattr(b, "label", None) == "Rank")
    selects = [d for d in demo.config["dependencies"] if [rank_tab._id, "select"] in [list(t) for t in d["targets"]]]
    assert len(selects) == 1  # selecting the tab refreshes its progress line and both reveals
