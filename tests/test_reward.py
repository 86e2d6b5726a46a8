"""Reward model: real TRL RewardTrainer on small backbones, real scoring, diagnostics."""

import json

import numpy as np
import pytest
import torch

from workbench.evaluation.metrics import calibration_bins, expected_calibration_error, pairwise_accuracy, pearson
from workbench.evaluation.reward_diagnostics import diagnose_reward_model
from workbench.models import load_reward_backbone
from workbench.reward import RewardModel, RewardModelConfig, reward_text, train_reward_model
from workbench.reward.learning_curve import reward_learning_curve

UPBEAT = ["I loved it, a wonderful and happy day.", "Great food and friendly staff, highly recommended.",
          "What a lovely, cheerful little place to relax.", "A bright, joyful and delightful morning."]
GLOOMY = ["It was awful and I hated every minute.", "Terrible service, cold food, never again.",
          "A sad, gloomy and boring afternoon.", "Dreadful weather and a miserable long queue."]


def sentiment_rows(n: int, offset: int = 0) -> list[dict]:
    return [{"prompt": f"Tell me about place {i}.", "chosen": f"{UPBEAT[i % 4]} Visit {i}.",
             "rejected": f"{GLOOMY[(i + 1) % 4]} Visit {i}."} for i in range(offset, offset + n)]


def test_accuracy_counts_ties_as_half():
    estimate = pairwise_accuracy([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 4.0, -1.0])
    assert estimate.value == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert estimate.low <= estimate.value <= estimate.high and estimate.n == 4


def test_calibration_and_correlation_helpers():
    bins = calibration_bins([0.1, 0.15, 0.9, 0.95], [0, 0, 1, 1], n_bins=10)
    assert [b["n"] for b in bins] == [2, 2] and expected_calibration_error(bins) == pytest.approx(0.1)  # (0.125 + 0.075) / 2
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0) and np.isnan(pearson([1, 1], [1, 2]))


def test_reward_text_uses_the_separator_and_order_of_the_backbone():
    _, bert = load_reward_backbone("minilm-l6")
    _, llama = load_reward_backbone("tiny-random-llama")
    prompt = [{"role": "user", "content": "Hi?"}]
    assert reward_text(bert, prompt, "Hello.") == "Hello. [SEP] Hi?"  # encoders read the completion first
    assert reward_text(bert, prompt, "Hello.", "prompt <sep> completion") == "Hi? [SEP] Hello."
    assert reward_text(llama, prompt, "Hello.") == "Hi?\nHello."  # decoders: prompt first, the last token sees both
    with pytest.raises(ValueError, match="text_format"):
        reward_text(bert, prompt, "Hello.", "completion only")


def test_models_trained_before_the_completion_first_order_still_score_as_trained(tmp_path):
    """A manifest without "text_format", or with the old prompt-first order, scores prompt first."""
    model, tokenizer = load_reward_backbone("minilm-l6")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "workbench_reward.json").write_text(json.dumps({"backbone": "minilm-l6", "max_length": 64}))
    old = RewardModel.load(tmp_path, bf16=False)
    assert old.text_format == "prompt <sep> completion"
    as_trained = RewardModel(old.model, tokenizer, bf16=False, text_format="prompt <sep> completion")
    assert old.score(["Hi?"], ["Hello there."]) == as_trained.score(["Hi?"], ["Hello there."])


def test_train_on_policy_architecture_changes_weights_and_learns(tmp_path):
    """The tiny Llama as a sequence classifier: weights change, the run dir is complete."""
    rows = sentiment_rows(48)
    before, _ = load_reward_backbone("tiny-random-llama")
    config = RewardModelConfig(backbone="tiny-random-llama", epochs=2, learning_rate=3e-3, batch_size=8,
                               save_steps=4, logging_steps=2)
    result = train_reward_model(rows, config, tmp_path)
    trained = RewardModel.load(result.model_dir, bf16=False)
    changed = [n for n, p in trained.model.named_parameters() if not torch.equal(p, before.state_dict()[n])]
    assert changed
    assert result.n_train + result.n_val == 48 and result.n_dropped_too_long == 0
    assert sorted(p.name for p in (tmp_path / "reward" / "checkpoints").glob("checkpoint-*"))
    assert json.loads((tmp_path / "reward" / "eval.json").read_text())["n_val"] == result.n_val
    assert any("rm/loss" in row for row in json.loads("[" + ",".join(
        (tmp_path / "metrics.jsonl").read_text().splitlines()) + "]"))


@pytest.mark.slow
def test_minilm_reward_model_learns_sentiment_and_diagnostics(tmp_path):
    result = train_reward_model(sentiment_rows(64), RewardModelConfig(epochs=3, save_steps=1000), tmp_path)
    assert result.accuracy.value >= 0.9 and result.gold_accuracy.value >= 0.9
    rm = RewardModel.load(result.model_dir)
    report = diagnose_reward_model(rm, sentiment_rows(20, offset=100), oracle="positive")
    assert report["accuracy"]["value"] >= 0.9 and report["gold_accuracy"]["value"] >= 0.9
    assert sum(b["n"] for b in report["calibration"]) == 20
    assert len(report["scores"]) == len(report["lengths"]) == 40
    assert rm.prob_a_over_b(["x"], [UPBEAT[0]], [GLOOMY[0]])[0] > 0.5


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    rows = sentiment_rows(32)
    config = RewardModelConfig(backbone="tiny-random-llama", epochs=1, batch_size=8, save_steps=2, val_fraction=0.0)
    train_reward_model(rows, config, tmp_path)
    first_steps = [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())]
    from dataclasses import replace

    train_reward_model(rows, replace(config, epochs=2, resume=True), tmp_path)
    state = json.loads((tmp_path / "reward" / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8  # 4 steps per epoch; the resumed run did only epoch 2
    steps = [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())]
    assert min(steps[len(first_steps):]) > max(first_steps)


def test_learning_curve_has_one_row_per_size(tmp_path):
    config = RewardModelConfig(backbone="tiny-random-llama", epochs=1, batch_size=8, save_steps=1000, oracle="positive")
    curve = reward_learning_curve(sentiment_rows(24), sentiment_rows(8, offset=50), [8, 16], config, tmp_path)
    assert [row["n_labels"] for row in curve] == [8, 16]
    assert all(0 <= row["gold_accuracy"]["value"] <= 1 for row in curve)
    with pytest.raises(ValueError, match="larger than"):
        reward_learning_curve(sentiment_rows(4), sentiment_rows(2), [8], config, tmp_path)


def test_empty_input_and_unknown_model_dir(tmp_path):
    with pytest.raises(ValueError, match="No preference pairs"):
        train_reward_model([], RewardModelConfig(), tmp_path)
    with pytest.raises(FileNotFoundError, match="not a trained reward model"):
        RewardModel.load(tmp_path)
