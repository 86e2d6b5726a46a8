"""workbench.tutorial: what counts as a finished stage in the shared run directory. Files only, no model is run:
the notebook chain test (tests/notebooks) runs the real stages and checks that 03 and 04 reuse them."""

import json
import os
from dataclasses import asdict, replace

from workbench.evaluation.report import EvaluateConfig
from workbench.runs import write_json_atomic
from workbench.tutorial import Stage, ensure_evaluation, ensure_reward_model, ensure_rl, finished_evaluation, handoff_line


def _finished_rl_run(run):
    write_json_atomic(run / "rl" / "config.json", {"algo": "rloo", "steps": 2, "policy": "tiny-random-llama"})
    write_json_atomic(run / "rl" / "policy" / "workbench_policy.json", {"base": "tiny-random-llama", "steps": 2})


def test_handoff_line_says_what_was_reused_and_what_ran():
    line = handoff_line("runs/t", Stage("labels", True, "p", "24"), Stage("RL", False, "q"))
    assert line == "runs/t: reused labels (24); ran RL"
    assert handoff_line("runs/t", Stage("labels", True, "p")).endswith("reused labels; ran nothing")


def test_finished_stages_are_reused_without_training(tmp_path):
    summary = {"kind": "embedding-head", "accuracy": 0.75, "accuracy_ci": [0.5, 1.0], "n_val": 4, "n_evaluated": 4}
    write_json_atomic(tmp_path / "reward" / "eval.json", summary)
    _finished_rl_run(tmp_path)
    reward = ensure_reward_model(tmp_path, rows=[], config=None)  # no rows: training would fail
    assert reward.reused and reward.model_dir == tmp_path / "reward" / "model"
    assert (reward.accuracy.value, reward.accuracy.low, reward.accuracy.n) == (0.75, 0.5, 4)
    rl = ensure_rl(tmp_path, config=None, preference_rows=[])
    assert rl.reused and rl.config["steps"] == 2 and rl.describe() == "RL (rloo, 2 steps)"


def test_an_evaluation_is_reused_only_for_the_same_config_and_policy(tmp_path):
    _finished_rl_run(tmp_path)
    config = EvaluateConfig(base="tiny-random-llama", policy=str(tmp_path / "rl" / "policy"),
                            reward=str(tmp_path / "reward" / "model"), n_prompts=4)
    assert finished_evaluation(config) is None  # nothing evaluated yet
    write_json_atomic(tmp_path / "rl" / "eval.json", {"config": asdict(config), "n_prompts": 4})
    assert finished_evaluation(config)["n_prompts"] == 4
    evaluation = ensure_evaluation(config)
    assert evaluation.reused and evaluation.report["path"] == str(tmp_path / "rl" / "eval.json")
    assert finished_evaluation(replace(config, n_prompts=8)) is None  # other settings
    manifest = tmp_path / "rl" / "policy" / "workbench_policy.json"
    later = (tmp_path / "rl" / "eval.json").stat().st_mtime_ns + 10**9
    os.utime(manifest, ns=(later, later))  # the policy was trained again after the evaluation
    assert finished_evaluation(config) is None
    assert json.loads((tmp_path / "rl" / "eval.json").read_text())["n_prompts"] == 4
