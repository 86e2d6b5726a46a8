"""stream_pair: the same pair as make_pairs for the same config, streamed with its sides in display order."""

from workbench.data import PromptRecord
from workbench.preferences import PairConfig, make_pairs, stream_pair

RECORD = PromptRecord(id="p1", prompt="Describe a lighthouse at night.")


def test_one_policy_streams_both_sides_at_once_and_ends_with_make_pairs_pair(tiny_policy):
    for seed in (0, 1):  # both side orders (the coin of seed 0 and of seed 1 differ)
        config = PairConfig(max_new_tokens=10, seed=seed, batch_size=1)
        drafts = list(stream_pair(RECORD, tiny_policy, config, model_names=("m", "m")))
        expected = make_pairs([RECORD], tiny_policy, config, model_names=("m", "m"))[0]
        *partial, last = drafts
        assert last.done and last.pair.pair_id == expected.pair_id and last.pair.swapped == expected.swapped
        assert (last.text_a, last.text_b) == (expected.completion_a, expected.completion_b)
        assert all(not d.done and d.pair is None for d in partial) and len(partial) >= 2
        assert partial[0].text_a and partial[0].text_b  # both sides grow from the first step on


def test_two_policies_stream_one_side_after_the_other(tiny_policy):
    config = PairConfig(max_new_tokens=8, seed=0, batch_size=1)
    drafts = list(stream_pair(RECORD, tiny_policy, config, policy_b=tiny_policy, model_names=("base", "tuned")))
    expected = make_pairs([RECORD], tiny_policy, config, policy_b=tiny_policy, model_names=("base", "tuned"))[0]
    assert drafts[-1].pair == expected.__class__(**{**expected.__dict__, "created_at": drafts[-1].pair.created_at})
    first_side = "text_b" if expected.swapped else "text_a"  # the first policy's sample, wherever it is shown
    assert any(getattr(d, first_side) and not getattr(d, "text_a" if first_side == "text_b" else "text_b")
               for d in drafts)  # a moment when only the first policy's side had text
