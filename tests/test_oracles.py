import math

import pytest

from workbench.oracles import ORACLES, SimulatedLabeler, concise, get_oracle, no_repeat, positive, upbeat_concise

UPBEAT = "What a wonderful sunny morning, I loved every minute of the walk by the lake."
GLOOMY = "What an awful grey morning, I hated every minute of the walk by the lake."


def test_gold_rewards_follow_their_formulas():
    assert positive("", UPBEAT) > 0.5 > -0.5 > positive("", GLOOMY)
    assert concise("", " ".join(["word"] * 15)) == 0.0
    assert concise("", "two words") == pytest.approx(-0.6)  # 6 words short of the 8-word window
    assert concise("", " ".join(["w"] * 40)) == pytest.approx(-1.0)  # 10 words over 30
    assert no_repeat("", "a b c d e") == 0.0
    assert no_repeat("", "the cat sat the cat sat the cat sat") == pytest.approx(-4 / 7)  # 7 trigrams, 3 distinct
    text = "the cat sat the cat sat"
    assert upbeat_concise("", text) == pytest.approx(positive("", text) + concise("", text) + no_repeat("", text))
    assert set(ORACLES) == {"positive", "concise", "no-repeat", "upbeat-concise", "task", "helpful-upbeat-concise"}
    with pytest.raises(ValueError, match="Unknown oracle 'nice'"):
        get_oracle("nice")


def test_bradley_terry_probability_and_noise():
    careful = SimulatedLabeler("positive", temperature=0.1, seed=0)
    diff = positive("", UPBEAT) - positive("", GLOOMY)
    assert careful.prob_a("", UPBEAT, GLOOMY) == pytest.approx(1 / (1 + math.exp(-diff / 0.1)))
    assert careful.prob_a("", UPBEAT, GLOOMY) + careful.prob_a("", GLOOMY, UPBEAT) == pytest.approx(1.0)
    # a noisy annotator sometimes disagrees with gold; an exact one never does
    noisy = SimulatedLabeler("positive", temperature=5.0, seed=0)
    picks = [noisy.choose("", UPBEAT, GLOOMY) for _ in range(2000)]
    expected = noisy.prob_a("", UPBEAT, GLOOMY)
    assert abs(picks.count("A") / 2000 - expected) < 0.04 and picks.count("B") > 0
    exact = SimulatedLabeler("positive", temperature=0)
    assert {exact.choose("", UPBEAT, GLOOMY) for _ in range(50)} == {"A"}
    assert exact.choose("", UPBEAT, UPBEAT) == "tie"


def test_labeler_is_reproducible_for_a_seed():
    pairs = [(UPBEAT, GLOOMY), ("fine", "fine thanks"), (GLOOMY, "ok then")] * 20
    runs = [[SimulatedLabeler(temperature=0.5, seed=s).choose("", a, b) for a, b in pairs] for s in (1, 1, 2)]
    assert runs[0] == runs[1] != runs[2]
    with pytest.raises(ValueError, match="temperature"):
        SimulatedLabeler(temperature=-1)
