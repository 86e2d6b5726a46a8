"""RL next to best-of-n, restated as Gao et al. (2022) find it: the best best-of-n measured, equal sampling compute,
and gold gain per nat of KL."""

import math

import pytest

from workbench.evaluation.bestofn import bon_gold_at_n, bon_kl, rl_vs_bon_summary

ROWS = [{"n": n, "kl": bon_kl(n), "gold": gold} for n, gold in ((1, 0.10), (2, 0.20), (4, 0.35), (8, 0.30))]


def test_best_bon_is_the_largest_measured_gain_not_the_largest_n():
    summary = rl_vs_bon_summary({"gold": 0.40, "kl": 10.0}, 0.10, ROWS, None, 16)
    assert summary["best_bon"]["n"] == 4 and summary["best_bon"]["gold_gain"] == pytest.approx(0.25)
    assert summary["rl_gold_gain"] == pytest.approx(0.30) and summary["rl_ge_best_bon"]
    assert summary["rl_gain_per_nat"] == pytest.approx(0.03)
    assert summary["best_bon"]["gain_per_nat"] == pytest.approx(0.25 / bon_kl(4))
    assert "equal_compute" not in summary  # no RL sampling count (e.g. DPO): nothing to match


def test_equal_compute_gives_best_of_n_the_completions_rl_sampled():
    # RL sampled 48 completions while training; answering 16 prompts costs 16 more: best-of-4 per prompt
    summary = rl_vs_bon_summary({"gold": 0.30, "kl": 5.0}, 0.10, ROWS, 48, 16)
    equal = summary["equal_compute"]
    assert equal["bon_n"] == 4 and equal["bon_gold_gain"] == pytest.approx(0.25) and not equal["clamped"]
    assert not equal["rl_ge_bon"] and summary["rl_gold_gain"] == pytest.approx(0.20)
    far = rl_vs_bon_summary({"gold": 0.30, "kl": 5.0}, 0.10, ROWS, 16 * 63, 16)["equal_compute"]
    assert far["bon_n"] == 64 and far["clamped"] and far["bon_gold_gain"] == pytest.approx(0.20)  # held at n = 8


def test_bon_gold_interpolates_in_log_n():
    assert bon_gold_at_n(ROWS, 1) == pytest.approx(0.10)
    assert bon_gold_at_n(ROWS, math.sqrt(2)) == pytest.approx(0.15)  # halfway from n = 1 to 2 in ln n
    assert bon_gold_at_n(ROWS, 100) == pytest.approx(0.30)
