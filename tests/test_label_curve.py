"""The cross-validated learning curve of an embedding head on its own labels (reward/label_curve.py)."""

import torch

from workbench.reward.label_curve import label_curve, size_ladder, wilson_interval

HIDDEN = 16


def synthetic(n: int, seed: int = 0, noise: float = 0.0):
    """Head-shaped features (n, 2 * HIDDEN + 2) of two sides whose gold is a fixed linear function of e(reply)."""
    generator = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, 2 * HIDDEN + 2, generator=generator), torch.randn(n, 2 * HIDDEN + 2, generator=generator)
    direction = torch.zeros(2 * HIDDEN + 2)
    direction[:HIDDEN] = torch.randn(HIDDEN, generator=generator)
    gold_a, gold_b = a @ direction, b @ direction
    flip = torch.rand(n, generator=generator) < noise
    a_wins = (gold_a > gold_b) ^ flip
    chosen, rejected = torch.where(a_wins[:, None], a, b), torch.where(a_wins[:, None], b, a)
    return chosen, rejected, torch.where(a_wins, gold_a, gold_b), torch.where(a_wins, gold_b, gold_a)


def test_size_ladder_doubles_and_ends_at_the_largest_size():
    assert size_ladder(100) == [8, 16, 32, 64, 100] and size_ladder(8) == [8] and size_ladder(5) == [5]
    assert size_ladder(1) == []


def test_the_curve_rises_with_labels_and_is_measured_on_every_pair():
    chosen, rejected, gold_c, gold_r = synthetic(200)
    curve = label_curve(chosen, rejected, torch.ones(200), l2=1.0, gold_chosen=gold_c, gold_rejected=gold_r)
    assert [row["n_labels"] for row in curve] == [8, 16, 32, 64, 128, 160]
    assert curve[-1]["accuracy"] >= 0.85 > curve[0]["accuracy"]
    for row in curve:
        assert row["n_evaluated"] == 200 and row["low"] <= row["accuracy"] <= row["high"]
        assert row["gold_accuracy"] == row["accuracy"]  # labels are the gold's order
    assert curve[-1]["log_loss"] < curve[0]["log_loss"]


def test_noisy_labels_lower_accuracy_against_labels_more_than_against_gold():
    chosen, rejected, gold_c, gold_r = synthetic(300, seed=1, noise=0.25)
    last = label_curve(chosen, rejected, torch.ones(300), l2=1.0, gold_chosen=gold_c, gold_rejected=gold_r)[-1]
    assert last["gold_accuracy"] > last["accuracy"]  # the head learns the gold through the label noise


def test_ties_are_trained_but_not_counted_in_accuracy():
    chosen, rejected, _, _ = synthetic(40, seed=2)
    targets = torch.ones(40)
    targets[:10] = 0.5
    curve = label_curve(chosen, rejected, targets, l2=1.0)
    assert all(row["n_evaluated"] == 30 and "gold_accuracy" not in row for row in curve)
    assert label_curve(chosen[:1], rejected[:1], torch.ones(1), l2=1.0) == []  # one pair: nothing to cross-validate


def test_wilson_interval_brackets_the_rate():
    low, high = wilson_interval(8, 10)
    assert 0.4 < low < 0.8 < high < 1.0 and wilson_interval(0, 0) == (0.0, 1.0)
