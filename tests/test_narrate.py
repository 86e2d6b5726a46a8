"""The notebooks' computed sentences say what the numbers did, and call noise level."""

import math

import numpy as np
import pytest

from workbench import narrate


def test_change_calls_a_clear_trend_and_leaves_noise_level():
    assert narrate.change([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])[2] == "rose"
    assert narrate.change([0.6, 0.5, 0.4, 0.3, 0.2, 0.1])[2] == "fell"
    noise = np.random.default_rng(0).normal(0, 1, 30).tolist()
    assert narrate.change(noise)[2] == "stayed level"
    assert narrate.change([0.69, 0.5, 0.3, 0.1])[2] == "too few points"  # no noise estimate from 4 values
    assert "too few to tell" in narrate.describe_change([0.690, 0.691, 0.692, 0.693], "the loss")
    with pytest.raises(ValueError):
        narrate.change([])


def test_loss_at_ln2_is_called_chance_and_a_falling_loss_learning():
    flat = [0.694, 0.693, 0.692, 0.694, 0.693, 0.691]
    assert "chance" in narrate.loss_sentence(flat)
    falling = [0.69, 0.66, 0.6, 0.52, 0.45, 0.4]
    assert "learnt to separate" in narrate.loss_sentence(falling) and "fell" in narrate.loss_sentence(falling)


def test_learning_curve_sentence_reads_overlap_chance_and_the_right_edge():
    overlapping = narrate.learning_curve_sentence([50, 100, 200, 400], [0.63, 0.645, 0.665, 0.655],
                                                  [0.53, 0.55, 0.57, 0.56], [0.72, 0.74, 0.76, 0.75])
    assert "cannot tell" in overlapping and "flat" in overlapping and "0.63 at 50" in overlapping
    rising = narrate.learning_curve_sentence([400, 50, 100], [0.9, 0.55, 0.7], [0.85, 0.45, 0.62], [0.95, 0.65, 0.78])
    assert "clear rise" in rising and "still rising" in rising and "includes chance" not in rising


def test_calibration_sentence_tells_under_from_over_confidence():
    bins_under = [{"bin_low": 0.4, "bin_high": 0.5, "n": 50, "mean_predicted": 0.49, "observed": 0.3},
                  {"bin_low": 0.5, "bin_high": 0.6, "n": 50, "mean_predicted": 0.51, "observed": 0.7}]
    text = narrate.calibration_sentence(bins_under, 0.19)
    assert "under-confident" in text and "100%" in text and "2 point(s)" in text
    bins_over = [{"bin_low": 0.0, "bin_high": 0.1, "n": 50, "mean_predicted": 0.05, "observed": 0.4},
                 {"bin_low": 0.9, "bin_high": 1.0, "n": 50, "mean_predicted": 0.95, "observed": 0.6}]
    assert "over-confident" in narrate.calibration_sentence(bins_over, 0.35)


def test_ranking_sentence_names_both_tops_and_counts_concordant_pairs():
    text = narrate.ranking_sentence(["good", "bad", "meh"], [0.1, 0.3, 0.2], [1.0, 0.0, -1.0])
    assert "“bad” first" in text and "gold puts “good” first" in text and "1 of the 3 pairs" in text


def test_rl_sentence_separates_learning_from_proxy_only_gains():
    def rows(proxy, gold):
        return [{"step": i, "rloo/reward": p, "rloo/rewards/gold/mean": g} for i, (p, g) in enumerate(zip(proxy, gold))]
    up = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert "learnt what the labeler wanted" in narrate.rl_sentence(rows(up, up), "rloo")
    assert "without the gold" in narrate.rl_sentence(rows(up, [0.2, 0.1, 0.2, 0.1, 0.2, 0.1]), "rloo")
    assert "did not rise" in narrate.rl_sentence(rows(up[::-1], up), "rloo")
    assert "too few" in narrate.rl_sentence(rows(up[:2], up[:2]), "rloo")


def test_distance_sentence_scales_with_kl():
    assert "barely moved" in narrate.distance_sentence(0.1)
    assert "moved far" in narrate.distance_sentence(15.0) and f"{math.exp(15):.3g}" in narrate.distance_sentence(15.0)
