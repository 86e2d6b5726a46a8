"""Reward-model kinds (embedding head, fine-tuned, ensemble, auto), uncertainty, active selection, ties, learning
curves, and an embedding-head RM driving TRL's RLOO: real tiny models, real fits."""

import copy
import itertools
import json
import math
import random

import pytest
import torch

from workbench.reward import RewardModel, RewardModelConfig, train_reward_model
from workbench.reward.embedding_head import EmbeddingHeadRewardModel, fit_heads, text_features
from workbench.reward.ensemble import EnsembleRewardModel
from workbench.reward.kinds import AUTO_THRESHOLDS, choose_kind
from workbench.reward.learning_curve import (CEILING, CurveConfig, clear_gold_agreement, gold_agreement,
                                             learning_curves, summarise_curves)
from workbench.reward.train import load_reward_encoder
from workbench.reward.uncertainty import PairPreference, pair_preferences, rank_by_uncertainty, select_uncertain

from test_reward import GLOOMY, UPBEAT, sentiment_rows

FAST = dict(save_checkpoints=False, oracle="positive", max_length=64, batch_size=8)


@pytest.fixture(scope="module")
def encoder():
    return load_reward_encoder("minilm-l6")


@pytest.fixture(scope="module")
def head_rm(tmp_path_factory):
    out = tmp_path_factory.mktemp("head")
    return train_reward_model(sentiment_rows(40), RewardModelConfig(kind="embedding-head", **FAST), out)


@pytest.mark.parametrize("kind,extra", [("minilm-l6", {}), ("policy", {"backbone": "tiny-random-llama"}),
                                        ("ensemble", {"ensemble_size": 3}),
                                        ("ensemble", {"ensemble_size": 2, "ensemble_member": "policy",
                                                      "backbone": "tiny-random-llama"})])
def test_each_kind_trains_saves_and_scores(kind, extra, tmp_path):
    result = train_reward_model(sentiment_rows(24), RewardModelConfig(kind=kind, **{**FAST, **extra}), tmp_path)
    manifest = json.loads((result.model_dir / "workbench_reward.json").read_text())
    assert result.kind == manifest["kind"] == kind and "asked for" in result.kind_reason
    rm = RewardModel.load(result.model_dir, bf16=False)
    scores = rm.score(["Tell me about place 1."] * 2, [UPBEAT[0], GLOOMY[0]])
    assert all(isinstance(s, float) and s == s for s in scores)
    bf16 = RewardModel.load(result.model_dir, bf16=True)  # what every AVX512-BF16 CPU and bf16 GPU loads
    assert bf16.score(["Tell me about place 1."] * 2, [UPBEAT[0], GLOOMY[0]]) == pytest.approx(scores, rel=0.1, abs=0.05)
    members = rm.member_scores(["Tell me."], [UPBEAT[1]])
    assert len(members[0]) == (extra.get("ensemble_size", 1) if kind == "ensemble" else 1)
    assert json.loads((tmp_path / "reward" / "eval.json").read_text())["kind"] == kind
    heads = kind == "ensemble" and extra.get("ensemble_member", "embedding-head") == "embedding-head"
    assert (tmp_path / "reward" / "label_curve.json").exists() == heads  # only head kinds have the cheap curve


def test_embedding_head_learns_and_reloads_identically(head_rm):
    assert head_rm.kind == "embedding-head" and head_rm.accuracy.value >= 0.9 and head_rm.seconds < 60
    curve = json.loads((head_rm.model_dir.parent / "label_curve.json").read_text())
    assert [row["n_labels"] for row in curve][-1] == head_rm.n_train - math.ceil(head_rm.n_train / 5)  # 5 folds
    assert curve[-1]["accuracy"] >= 0.8 and curve[-1]["gold_accuracy"] >= 0.8  # sentiment: labels = gold
    rm = RewardModel.load(head_rm.model_dir, bf16=False)
    assert rm.prob_a_over_b(["x"], [UPBEAT[2]], [GLOOMY[2]])[0] > 0.8
    bf16 = RewardModel.load(head_rm.model_dir, bf16=True)  # the encoder in bf16, the fitted head still fp32
    assert bf16.model.heads.weight.dtype == torch.float32 and bf16.prob_a_over_b(["x"], [UPBEAT[2]], [GLOOMY[2]])[0] > 0.8
    again = RewardModel.load(head_rm.model_dir, bf16=False)
    texts = [UPBEAT[3], GLOOMY[3]]
    assert rm.score(["p", "p"], texts) == again.score(["p", "p"], texts)


def test_auto_picks_by_usable_label_count():
    (first, limit), (second, _) = AUTO_THRESHOLDS[0], AUTO_THRESHOLDS[1]
    assert choose_kind("auto", None, 10).kind == first
    assert choose_kind("auto", None, int(limit) - 1).kind == first
    assert choose_kind("auto", "minilm-l6", int(limit)).kind == second
    assert "auto" in choose_kind("auto", None, 10).reason
    assert choose_kind("auto", "tiny-random-llama", 10).kind == "policy"  # another architecture: fine-tune it
    assert choose_kind("policy", None, 10).backbone == "smollm2-135m-instruct"
    with pytest.raises(ValueError, match="kind"):
        choose_kind("bert", None, 10)


def test_ensemble_uncertainty_is_zero_for_identical_members_and_positive_otherwise(tmp_path):
    from workbench.models import load_reward_backbone

    member, tokenizer = load_reward_backbone("tiny-random-llama")
    torch.manual_seed(1)
    other, _ = load_reward_backbone("tiny-random-llama")
    with torch.no_grad():
        other.score.weight.normal_(0, 0.5)
    prompts, a, b = ["Tell me."] * 3, UPBEAT[:3], GLOOMY[:3]
    same = RewardModel(EnsembleRewardModel([member, copy.deepcopy(member), copy.deepcopy(member)]), tokenizer, bf16=False)
    assert all(p.std == pytest.approx(0.0, abs=1e-7) and p.source == "ensemble" for p in pair_preferences(same, prompts, a, b))
    mixed = RewardModel(EnsembleRewardModel([member, other]), tokenizer, bf16=False)
    assert all(p.std > 1e-4 for p in pair_preferences(mixed, prompts, a, b))
    # the ensemble's reward is the members' mean
    single = RewardModel(member, tokenizer, bf16=False).score(prompts, a)
    assert same.score(prompts, a) == pytest.approx(single, abs=1e-5)


def test_embedding_head_reaches_090_from_50_labels_on_a_linear_embedding_gold(encoder):
    """Gold = projection of the reply's sentence embedding on the embeddings' first principal direction."""
    model, tokenizer = EmbeddingHeadRewardModel(encoder[0], encoder[1]), encoder[1]
    subjects = ["The hotel", "Our trip", "The concert", "This phone", "The cafe", "My new job", "The film", "The park"]
    adjectives = ["wonderful", "awful", "boring", "delightful", "noisy", "calm", "expensive", "cheap", "crowded", "cozy"]
    texts = [f"{s} was {a}." for s, a in itertools.product(subjects, adjectives)]
    features = text_features(model, tokenizer, ["Tell me."] * len(texts), texts)  # (80, D)
    embeddings = features[:, : encoder[0].config.hidden_size]
    direction = torch.linalg.svd(embeddings - embeddings.mean(0), full_matrices=False).Vh[0]
    gold = embeddings @ direction  # (80,)
    rng = random.Random(0)
    train = [rng.sample(range(len(texts)), 2) for _ in range(50)]
    held_out = [rng.sample(range(len(texts)), 2) for _ in range(300)]
    chosen = torch.tensor([i if gold[i] > gold[j] else j for i, j in train])
    rejected = torch.tensor([j if gold[i] > gold[j] else i for i, j in train])
    fit_heads(model, features[chosen], features[rejected], torch.ones(50), RewardModelConfig.head_l2)
    scores = model.head_scores(features)[:, 0].detach()
    first, second = torch.tensor([i for i, _ in held_out]), torch.tensor([j for _, j in held_out])
    assert gold_agreement(scores[first], scores[second], gold[first], gold[second]) >= 0.9


def test_a_tie_only_training_set_leaves_p_at_one_half(tmp_path):
    rows = [{**row, "choice": "tie"} for row in sentiment_rows(20)]
    result = train_reward_model(rows, RewardModelConfig(kind="embedding-head", **FAST), tmp_path)
    assert result.n_ties == 20 and json.loads((result.model_dir / "workbench_reward.json").read_text())["n_ties"] == 20
    rm = RewardModel.load(result.model_dir, bf16=False)
    assert rm.prob_a_over_b(["Tell me."] * 2, UPBEAT[:2], GLOOMY[:2]) == pytest.approx([0.5, 0.5], abs=1e-3)


def test_ties_reach_the_reward_trainer_as_both_orderings(tmp_path):
    rows = sentiment_rows(16) + [{**row, "choice": "tie"} for row in sentiment_rows(8, offset=40)]
    config = RewardModelConfig(kind="policy", backbone="tiny-random-llama", val_fraction=0.0, **FAST)
    result = train_reward_model(rows, config, tmp_path)
    assert result.n_ties == 8 and result.n_train == 24
    assert json.loads((tmp_path / "reward" / "eval.json").read_text())["n_ties"] == 8


def test_active_selection_returns_the_pairs_of_largest_uncertainty(head_rm):
    preferences = [PairPreference(0.9, 0.01, "x"), PairPreference(0.5, 0.0, "x"), PairPreference(0.7, 0.2, "x"),
                   PairPreference(0.6, 0.2, "x")]
    assert rank_by_uncertainty(preferences) == [3, 2, 0, 1]  # std first, then closeness of p to 0.5
    rm = RewardModel.load(head_rm.model_dir, bf16=False)
    pool = sentiment_rows(12, offset=200)
    prompts = [r["prompt"] for r in pool]
    a = [r["chosen"] for r in pool[:6]] + [f"{UPBEAT[i % 4]} and {GLOOMY[i % 4]}" for i in range(6)]
    b = [r["rejected"] for r in pool[:6]] + [f"{GLOOMY[(i + 1) % 4]} and {UPBEAT[(i + 2) % 4]}" for i in range(6)]
    preferences = pair_preferences(rm, prompts, a, b)
    assert {p.source for p in preferences} == {"laplace"} and all(0 <= p.std <= 0.5 for p in preferences)
    picked = select_uncertain(rm, prompts, a, b, k=4)
    stds = [p.std for p in preferences]
    assert min(stds[i] for i in picked) >= max(s for i, s in enumerate(stds) if i not in picked)


def test_learning_curves_random_active_and_ceiling(tmp_path):
    pairs = [{"prompt": r["prompt"], "a": r["chosen"], "b": r["rejected"]} for r in sentiment_rows(40)]
    pairs = [p if i % 2 else {**p, "a": p["b"], "b": p["a"]} for i, p in enumerate(pairs)]
    config = CurveConfig(labelers=("positive",), kinds=("embedding-head",), sizes=(10, 20), seeds=(0, 1),
                         active_start=10, rm=RewardModelConfig(oracle=None, ensemble_size=3, **{
                             k: v for k, v in FAST.items() if k != "oracle"}))
    rows = learning_curves(pairs[:30], pairs[30:], config, tmp_path)
    assert {(r["kind"], r["selection"]) for r in rows} == {("embedding-head", "random"), ("embedding-head", "active"),
                                                          (CEILING, "random")}
    assert len(rows) == 3 * 2 * 2 and all(0 <= r["gold_accuracy"] <= 1 for r in rows)
    assert all(r["gold_accuracy"] == 1.0 for r in rows if r["kind"] == CEILING)  # VADER separates these texts
    assert all(r["clear_gold_accuracy"] == 1.0 for r in rows if r["kind"] == CEILING)
    assert all(0 < r["n_clear_pairs"] <= 10 for r in rows)  # the 10 held-out pairs, some clear
    summary = summarise_curves(rows)
    assert len(summary) == 6 and all(s["low"] <= s["gold_accuracy"] <= s["high"] and s["n_seeds"] == 2 for s in summary)
    assert all(s["clear_gold_accuracy"] is None or 0 <= s["clear_gold_accuracy"] <= 1 for s in summary)


def test_clear_gold_agreement_counts_only_pairs_past_the_margin():
    gold_a, gold_b = torch.tensor([1.0, 0.0, 0.2, 0.0]), torch.tensor([0.0, 1.0, 0.0, 0.1])  # last two are close
    scores_a, scores_b = torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0, 1.0])  # right on pairs 0 and 3
    assert gold_agreement(scores_a, scores_b, gold_a, gold_b) == 0.5  # pairs 0 and 3 right
    assert clear_gold_agreement(scores_a, scores_b, gold_a, gold_b) == 0.5  # of the clear pairs 0 and 1, pair 0
    assert clear_gold_agreement(scores_a, scores_b, gold_a, gold_b, margin=2.0) is None  # no pair that clear


def test_rloo_trains_against_an_embedding_head_reward_model(head_rm, tmp_path):
    from workbench.rl import RLConfig
    from workbench.rl.rewards import load_reward_classifier
    from workbench.rl.train import build_trainer
    from workbench.runs import RunDir

    model, tokenizer = load_reward_classifier(head_rm.model_dir)
    manifest = json.loads((head_rm.model_dir / "workbench_reward.json").read_text())
    raw = RewardModel.load(head_rm.model_dir, bf16=False)
    texts = [UPBEAT[0], GLOOMY[0]]
    # TRL's path: chat template, no added special tokens, right padding -> logits (B, 1), normalised
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": t}],
                                              tokenize=False) for t in texts]
    batch = tokenizer(rendered, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    logits = model(**batch).logits
    stats = manifest["score_stats"]
    assert logits.shape == (2, 1)
    expected = [(s - stats["mean"]) / stats["std"] for s in raw.score(["Hi?"] * 2, texts)]
    assert logits[:, 0].tolist() == pytest.approx(expected, abs=1e-4)

    config = RLConfig(policy="tiny-random-llama", reward=str(head_rm.model_dir), steps=2, max_new_tokens=8,
                      save_steps=100, learning_rate=1e-3, oracle="positive")
    trainer = build_trainer(config, RunDir(tmp_path), preference_rows=sentiment_rows(8))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(not torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
    rewards = [r["rloo/rewards/model/mean"] for r in RunDir(tmp_path).read_metrics("rl") if "rloo/rewards/model/mean" in r]
    assert rewards and all(r == r for r in rewards)
