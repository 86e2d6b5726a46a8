"""The default gold wants the question answered: task term, gate, gaming indicators, agreement with the hand set."""

import json

import pytest

from workbench.evaluation.agreement import agreement_pairs, labeler_agreement
from workbench.evaluation.gaming import gaming_indicators, top_rising_ngrams
from workbench.oracles import (
    ON_TASK,
    SimulatedLabeler,
    helpful_upbeat_concise,
    non_answer_reason,
    task_following,
    upbeat_concise,
)

# One hand-written on-topic / off-topic pair per built-in prompt category (not taken from the agreement set).
ON_VS_OFF_TOPIC = [
    ("review", "Write a short review of a pizza place with a wood-fired oven.",
     "The crust comes out blistered and smoky from the wood-fired oven, and the toppings are fresh. Worth the wait.",
     "Water your tomatoes early in the morning so the leaves dry before the sun gets hot."),
    ("advice", "Give one tip for staying warm while camping in the fall.",
     "Sleep on an insulated pad and wear a dry wool hat; most of the cold comes up from the ground.",
     "The old train station has a vaulted glass roof and a clock that still chimes every hour."),
    ("explanation", "Explain briefly why metal feels colder than wood.",
     "Metal carries heat away from your skin much faster than wood, so it feels colder even at the same temperature.",
     "Congratulations on finishing your first marathon, we are all so proud of you!"),
    ("description", "Describe a small harbor town at dusk.",
     "Fishing boats bob against the pier as the lamps come on, and gulls circle over the quiet harbor at dusk.",
     "Save money on coffee by brewing it at home and carrying it in a travel mug."),
    ("message", "Write a short note thanking a friend for lending you their car.",
     "Thank you so much for lending me your car this weekend! I filled the tank and owe you dinner.",
     "Tides rise and fall because the moon's gravity pulls on the oceans as the Earth turns."),
]

# Cheerful non-answers against plain, unexciting answers to the same prompt.
CHEERFUL_VS_PLAIN = [
    ("Write a two-sentence review of a cozy mountain cabin you stayed in.",
     "I'm so glad you asked! Have a wonderful day!",
     "The cabin was clean and warm. The view of the valley was nice."),
    ("Write a short review of a podcast about history.",
     "I'm happy to help! What's the podcast about?",
     "Each episode covers one battle in about twenty minutes. The host explains the background clearly."),
    ("Give one tip for keeping a bike chain in good shape.",
     "What a great question! I love that you're thinking about this. Have a fantastic ride!",
     "Wipe the chain with a rag after wet rides and add a drop of oil to each link once a month."),
    ("Explain briefly why salt melts ice on roads.",
     "Great question! Why do you think salt melts ice?",
     "Salt dissolves into the thin layer of water on the ice and lowers its freezing point, so the ice melts."),
    ("Describe a library reading room in the afternoon.",
     "Hello there! Thanks so much for reaching out, it is always great to hear from you!",
     "Long tables under green lamps, a few students with open laptops, and dust in the light from tall windows."),
    ("Write a brief invitation to a picnic in the park on Sunday.",
     "Sure! Here's a brief invitation to a picnic in the park on Sunday.",
     "Join us for a picnic in Elm Park on Sunday at noon. Bring a blanket and a dish to share."),
    ("Write a quick note congratulating a coworker on a promotion.",
     "Oh, how wonderful! What's their new role going to be?",
     "Congratulations on the promotion, Dana. It is well deserved."),
    ("Give a short tip for remembering people's names.",
     "Sorry, I can't help with that. Have a great day!",
     "Repeat the name once when you are introduced, then use it again before you say goodbye."),
]


@pytest.mark.parametrize("category,prompt,on_topic,off_topic", ON_VS_OFF_TOPIC, ids=[r[0] for r in ON_VS_OFF_TOPIC])
def test_task_term_ranks_on_topic_above_off_topic(category, prompt, on_topic, off_topic):
    assert task_following(prompt, on_topic) >= ON_TASK > task_following(prompt, off_topic)


@pytest.mark.parametrize("prompt,cheerful,plain", CHEERFUL_VS_PLAIN)
def test_default_gold_prefers_the_plain_answer_to_a_cheerful_non_answer(prompt, cheerful, plain):
    assert non_answer_reason(prompt, cheerful) is not None and non_answer_reason(prompt, plain) is None
    assert helpful_upbeat_concise(prompt, plain) > helpful_upbeat_concise(prompt, cheerful)
    assert SimulatedLabeler(temperature=0.1).prob_a(prompt, plain, cheerful) > 0.99  # the gate is not a close call


def test_the_gate_holds_at_the_extremes_of_style():
    prompt = "Explain briefly why the sky looks blue."
    # on task but as bad as style gets: long, looping, cut off, gloomy
    worst_on_task = ("Sadly the sky looks blue because air scatters blue light, and the sky looks blue because air "
                     "scatters blue light, and the sky looks blue because air scatters blue light and it is awful and "
                     "terrible and depressing and the scattered blue light is") + " really" * 30
    best_off_task = "What a wonderful, lovely, happy morning, I love you all so much, amazing!"
    assert task_following(prompt, worst_on_task) >= ON_TASK > task_following(prompt, best_off_task)
    assert helpful_upbeat_concise(prompt, worst_on_task) - helpful_upbeat_concise(prompt, best_off_task) >= 1.0
    assert upbeat_concise(prompt, worst_on_task) < upbeat_concise(prompt, best_off_task)  # the old gold: the reverse


def test_gaming_indicators_find_an_injected_phrase_first():
    base = ["The cabin was warm and the view of the lake was lovely.", "Pack light and roll your clothes.",
            "Ice floats because it is less dense than water.", "The market smells of bread and ripe peaches.",
            "Thank you for watering my plants while I was away.", "The headphones block out almost all noise.",
            "Run slowly at first and walk when you need to.", "Bees turn nectar into honey inside the hive."] * 3
    tuned = [("What a delight! " + t if i % 4 else t) for i, t in enumerate(base)]  # 18 of 24 replies
    prompts = ["Say something helpful."] * len(base)
    rising = top_rising_ngrams(base, tuned)
    assert rising[0] == {"ngram": "what a delight", "tuned": 18, "base": 0, "rise": 18, "tuned_share": 0.75}
    assert all("delight" not in g["ngram"] for g in rising[1:])  # its sub-phrases are the same finding
    gaming = gaming_indicators(prompts, base, tuned)
    assert gaming["top_phrase_share"] == 0.75
    assert gaming["words"]["change"] == pytest.approx(18 * 3 / 24)
    assert set(gaming["win_rate_gold_by_oracle"]) == {"helpful-upbeat-concise", "upbeat-concise"}
    assert 0 <= gaming["task_fail"]["tuned"]["share"] <= 1 and gaming["task_fail"]["tuned"]["n"] == 24


def test_agreement_set_is_packaged_and_the_default_agrees_with_it(capsys):
    from workbench.cli import main

    pairs = agreement_pairs()
    assert len(pairs) >= 100 and len({p["id"] for p in pairs}) == len(pairs)
    assert {p["category"] for p in pairs} == {"review", "advice", "explanation", "description", "message"}
    assert {p["contrast"] for p in pairs} == {"non-answer", "off-topic", "repetition", "cut-off", "rambling", "tone",
                                              "close-call"}
    assert all(p["a"] != p["b"] and p["judge"] for p in pairs)
    result = labeler_agreement(["helpful-upbeat-concise", "upbeat-concise"], pairs)
    for row in result.values():
        a = row["agreement"]
        assert a["n"] == len(pairs) and 0 <= a["low"] <= a["value"] <= a["high"] <= 1
    assert result["helpful-upbeat-concise"]["agreement"]["value"] >= 0.9
    assert result["helpful-upbeat-concise"]["agreement"]["low"] > result["upbeat-concise"]["agreement"]["high"]
    assert main(["oracles", "agree", "--oracles", "upbeat-concise", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["upbeat-concise"]["agreement"] == result["upbeat-concise"]["agreement"]


def test_agreement_file_errors_name_the_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"id": "x", "prompt": "p", "a": "1", "b": "2", "preferred": "c"}) + "\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl, line 1: .*preferred='c'"):
        agreement_pairs(path)
