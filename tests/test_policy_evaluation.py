"""Stage-3 evaluation: KL estimates, best-of-n maths and curve fits, the before/after report, the pipeline."""

import copy
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.data import builtin_prompts
from workbench.evaluation.bestofn import (
    bon_gold_at,
    bon_kl,
    expected_best_of_n,
    fit_overoptimisation,
    matched_rl_vs_bon,
    overoptimisation_curve,
)
from workbench.evaluation.policy_eval import PolicyEvalConfig, evaluate_policies, sequence_kl
from workbench.generation import generate

ROOT = Path(__file__).resolve().parents[1]


def test_bon_kl_is_analytic():
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert bon_kl(64) == pytest.approx(math.log(64) - 63 / 64)
    with pytest.raises(ValueError):
        bon_kl(0)


def test_expected_best_of_n_matches_brute_force_over_all_subsets():
    rng = np.random.default_rng(0)
    selection, values = rng.normal(size=7), rng.normal(size=7)
    for n in (1, 2, 3, 7):
        subsets = list(itertools.combinations(range(7), n))
        brute = np.mean([values[max(s, key=lambda i: selection[i])] for s in subsets])
        assert expected_best_of_n(selection, values, n) == pytest.approx(brute)
    assert expected_best_of_n(selection, selection, 1) == pytest.approx(selection.mean())


@pytest.mark.parametrize("form,alpha,beta", [("bon", 1.3, 0.4), ("rl", 0.9, 0.25)])
def test_overoptimisation_fits_recover_known_coefficients(form, alpha, beta):
    d = np.linspace(0.1, 3.0, 25)
    truth = overoptimisation_curve({"form": form, "alpha": alpha, "beta": beta}, d)
    noisy = truth + np.random.default_rng(1).normal(scale=0.01, size=d.size)
    fit = fit_overoptimisation(d, noisy, form)
    assert fit["alpha"] == pytest.approx(alpha, abs=0.03) and fit["beta"] == pytest.approx(beta, abs=0.03)
    with pytest.raises(ValueError, match="form"):
        fit_overoptimisation(d, noisy, "linear")


def test_bon_gold_interpolates_between_measured_n():
    rows = [{"sqrt_kl": 0.0, "gold": 0.0}, {"sqrt_kl": 1.0, "gold": 1.0}]
    assert bon_gold_at(rows, 0.5) == pytest.approx(0.5)
    assert bon_gold_at(rows, 2.0) == pytest.approx(1.0)  # clamped beyond the largest n


def test_rl_vs_best_of_n_is_matched_only_inside_best_of_n_range():
    bon = [{"sqrt_kl": 0.0, "gold": 0.2}, {"sqrt_kl": 0.5, "gold": 0.3}, {"sqrt_kl": 1.0, "gold": 0.5}]
    rl = [{"name": "base", "sqrt_kl": 0.0, "gold": 0.1}, {"name": "step-3", "sqrt_kl": 0.75, "gold": 0.3},
          {"name": "step-2", "sqrt_kl": 0.25, "gold": 0.2}, {"name": "final", "sqrt_kl": 3.0, "gold": 0.9}]
    matched = matched_rl_vs_bon(rl, bon)
    assert matched["name"] == "step-3"  # the largest KL that best-of-n also reaches; "final" lies beyond it
    assert matched["rl_gold_gain"] == pytest.approx(0.2)  # each side over its own start: 0.3 - 0.1
    assert matched["bon_gold_gain"] == pytest.approx(0.2)  # interpolated at 0.75: 0.4 - 0.2
    assert matched_rl_vs_bon([rl[0], rl[3]], bon) is None


def test_sequence_kl_of_a_policy_against_itself_is_zero_and_of_a_changed_one_positive(tiny_policy):
    model, tokenizer = tiny_policy
    config = PolicyEvalConfig(n_prompts=16, max_new_tokens=8, temperature=0.7)
    prompts = [r.prompt for r in builtin_prompts("heldout")[:16]]
    samples = generate(model, tokenizer, prompts, config.sampling())
    ids = [s.token_ids for s in samples]
    assert np.allclose(sequence_kl(model, model, tokenizer, prompts, ids, 0.7), 0.0, atol=1e-5)

    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.lm_head.weight.add_(torch.randn_like(changed.lm_head.weight) * 0.05, alpha=1.0)
    tuned_samples = generate(changed, tokenizer, prompts, config.sampling())
    kl = sequence_kl(changed, model, tokenizer, prompts, [s.token_ids for s in tuned_samples], 0.7)
    assert kl.mean() > 0.05  # KL(changed || base) estimated from the changed policy's own samples


class LengthReward:
    """A stand-in reward model: the completion's length in characters."""

    def score(self, prompts, completions):
        return [float(len(c)) for c in completions]


def test_reusing_base_samples_gives_the_same_evaluation(tiny_policy):
    model, tokenizer = tiny_policy
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.lm_head.weight.add_(torch.randn_like(changed.lm_head.weight) * 0.05)
    config = PolicyEvalConfig(n_prompts=6, max_new_tokens=6, oracle="positive")
    first = evaluate_policies(model, changed, tokenizer, LengthReward(), config)
    again = evaluate_policies(model, changed, tokenizer, LengthReward(), config, base_samples=first["base_samples"])
    assert again["summary"] == first["summary"] and again["table"] == first["table"]
    with pytest.raises(ValueError, match="other prompts"):
        evaluate_policies(model, changed, tokenizer, LengthReward(), PolicyEvalConfig(n_prompts=5, max_new_tokens=6),
                          base_samples=first["base_samples"])


@pytest.mark.parametrize("precision, bf16", [({"bf16": True}, True), ({"bf16": False}, False), ({}, False)])
def test_evaluation_samples_in_fp32_unless_asked_and_scores_log_probs_outside_autocast(precision, bf16, tiny_policy,
                                                                                       monkeypatch):
    # fp32 by default even where bf16 is native: bf16 rounding erases most of an RL run's weight updates
    import workbench.evaluation.policy_eval as policy_eval

    model, tokenizer = tiny_policy
    seen = {"generate": [], "log-probs": []}
    generate, logprobs = policy_eval.generate, policy_eval.completion_logprobs

    def recording(name, function):
        def wrapper(*args, **kwargs):
            seen[name].append(torch.is_autocast_enabled("cpu"))
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(policy_eval, "generate", recording("generate", generate))
    monkeypatch.setattr(policy_eval, "completion_logprobs", recording("log-probs", logprobs))
    evaluate_policies(model, model, tokenizer, LengthReward(), PolicyEvalConfig(n_prompts=2, max_new_tokens=4, **precision))
    assert seen["generate"] == [bf16, bf16] and seen["log-probs"] == [False, False]


def test_pipeline_smoke_runs_every_stage_and_reports(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "workbench", "pipeline", "--preset", "smoke", "--out", str(out),
                           "--json"], cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ,
                                                                                     "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    headline = json.loads(done.stdout.strip().splitlines()[-1])
    assert headline["rl_steps"] == 2 and headline["n_labels"] > 0
    for key in ("gold_win_rate", "proxy_win_rate", "kl"):
        estimate = headline[key]
        assert estimate["low"] <= estimate["value"] <= estimate["high"]
    assert set(headline["seconds"]) == {"labels", "reward_model", "rl", "evaluate", "total"}
    report = json.loads((out / "rl" / "eval.json").read_text())
    assert [row["n"] for row in report["best_of_n"]] == [1, 2, 4]
    # the report says how best-of-n was sized, and with which sampler
    assert report["config"]["bon_prompts"] == 2 and report["config"]["bon_max_n"] == 4 and "temperature" in report["config"]
    assert report["rl_points"][0]["name"] == "base" and report["rl_points"][-1]["name"] == "final"
    assert any(p["name"].startswith("checkpoint-") for p in report["rl_points"])  # save_steps=1 in the smoke preset
    assert len(report["table"]) == 4 and {"base", "tuned", "base_gold", "tuned_proxy"} <= set(report["table"][0])
    assert report["token_logratios"]["tokens"]
    assert (out / "pipeline.json").exists()
    # the restated RL vs best-of-n: the best best-of-n, equal sampling compute, gain per nat
    assert {"best_bon", "equal_compute", "rl_gain_per_nat"} <= set(report["rl_vs_bon"])
    assert report["rl_vs_bon"]["equal_compute"]["rl_completions"] == 2 * 4 * 4  # steps x prompts x generations
    trust = headline["rm_trust"]  # a tiny RM on 24 noisy labels: RL's step shrinks unless its CI clears chance
    preset = headline["preset"]
    assert trust["rl_learning_rate"] == preset["learning_rate"] * (1.0 if trust["trusted"] else preset["weak_rm_lr_scale"])
    rl_config = json.loads((out / "rl" / "config.json").read_text())
    assert rl_config["learning_rate"] == trust["rl_learning_rate"] and rl_config["shaping"] == preset["shaping"]
    assert rl_config["lora_learning_rate"] == pytest.approx(1e-4 * trust["rl_learning_rate"] / preset["learning_rate"])


def test_reward_model_trust_needs_the_ci_above_chance():
    from workbench.evaluation.metrics import Estimate
    from workbench.pipeline import reward_model_trust

    assert reward_model_trust(Estimate(0.70, 0.58, 0.81, 64))["trusted"]
    weak = reward_model_trust(Estimate(0.56, 0.44, 0.69, 64))
    assert not weak["trusted"] and "includes chance" in weak["why"]


def test_evaluate_cli_rejects_a_missing_policy(tmp_path):
    done = subprocess.run([sys.executable, "-m", "workbench", "evaluate", "--policy", str(tmp_path / "nope"),
                           "--reward", str(tmp_path / "nope_rm"), "--json"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "error" in done.stderr
