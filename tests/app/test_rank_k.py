"""The Rank tab's "rank K" mode through its handlers (no Gradio): tiny-random-llama, a temporary run, real SQLite,
a real (tiny) reward model for the reveal."""

import pytest

from apps import guidance, rank_k
from apps.handlers import InputError
from apps.workbench_app import SHORTCUTS, build_demo
from workbench.data import builtin_prompts
from workbench.preferences.pairs import PairConfig
from workbench.preferences.rankings import RankingStore, make_ranking_sets, stream_ranking_set


def _rows(ctx) -> int:
    """Every ranking row ever written (revisions included): what 'nothing was written' is checked against."""
    return ctx.store.connection().execute("SELECT COUNT(*) FROM rankings").fetchone()[0]


def test_a_streamed_set_is_the_set_make_ranking_sets_draws(tiny_policy):
    record, config = builtin_prompts("train")[0], PairConfig(max_new_tokens=8, seed=5, batch_size=3)
    *drafts, last = stream_ranking_set(record, tiny_policy, 3, config)
    assert drafts and all(len(d.texts) == 3 and d.ranking_set is None for d in drafts)
    whole = make_ranking_sets([record], tiny_policy, 3, config)[0]
    assert last.done and last.ranking_set.set_id == whole.set_id
    assert last.ranking_set.display_order == whole.display_order and last.texts == list(whole.completions)


def test_k_answers_stream_stacked_then_a_ranking_lands_with_its_order_and_display_order(ctx):
    updates = [(shown, RankingStore(ctx.store).count_sets()) for shown in rank_k.stream_next_set(ctx, "ann", 4)]
    *partial, (last, stored) = updates
    assert partial and all(s.ranking_set is None and n == 0 for s, n in partial)  # nothing rankable yet
    assert partial[0][0].answer_labels() == [f"{i} · writing…" for i in (1, 2, 3, 4)]
    labels = last.answer_labels()
    assert stored == 1 and [label.split(" · ")[0] for label in labels] == ["1", "2", "3", "4"]
    assert all(f"{len(text.split())} word" in label for label, text in zip(labels, last.texts))
    ranking_set = last.ranking_set
    assert last.texts == list(ranking_set.completions) and sorted(ranking_set.display_order) == [0, 1, 2, 3]
    ranking, reveal = rank_k.submit_ranking(ctx, ranking_set.set_id, "3 1 4 2", "ann", "tok:rank")
    assert ranking.ranks == (2, 4, 1, 3) and ranking.choice == "rank" and reveal.scores is None  # no RM asked
    (current,) = RankingStore(ctx.store).current("ann")
    assert current.ranks == (2, 4, 1, 3) and current.set_id == ranking_set.set_id
    assert RankingStore(ctx.store).get_set(ranking_set.set_id).display_order == ranking_set.display_order
    assert rank_k.next_set(ctx, "ann", 4).set_id != ranking_set.set_id  # ranked: the next one is new
    assert rank_k.next_set(ctx, "bob", 4).set_id == ranking_set.set_id  # another annotator still gets it


def test_a_resent_ranking_adds_nothing_and_undo_is_a_revision(ctx):
    ranking_set = rank_k.next_set(ctx, "ann", 3)
    first, _ = rank_k.submit_ranking(ctx, ranking_set.set_id, "2 3 1", "ann", "t1:rank")
    again, _ = rank_k.submit_ranking(ctx, ranking_set.set_id, "2 3 1", "ann", "t1:rank")
    assert again.ranking_id == first.ranking_id and _rows(ctx) == 1
    with pytest.raises(InputError, match="re-send must repeat the request exactly"):
        rank_k.submit_ranking(ctx, ranking_set.set_id, "1 2 3", "ann", "t1:rank")
    assert _rows(ctx) == 1
    undone = rank_k.undo_last_ranking(ctx, "ann", "t1:undo")
    assert (undone.choice, undone.revision, undone.set_id) == ("undo", 2, ranking_set.set_id)
    assert [r.choice for r in RankingStore(ctx.store).history(ranking_set.set_id)] == ["rank", "undo"]
    assert rank_k.progress(ctx, "ann")["mine"] == 0
    assert rank_k.next_set(ctx, "ann", 3).set_id == ranking_set.set_id  # undone: shown again
    assert rank_k.undo_last_ranking(ctx, "ann", "t2:undo") is None


@pytest.mark.parametrize("text, match", [
    ("3 1 4", "not a ranking of all 4 answers .* 2 missing"),
    ("3 1 4 4", "answer 4 appears twice"),
    ("3 1 5 2", "there is no answer 5; this set has answers 1 to 4"),
    ("0 1 2 3", "there is no answer 0"),
    ("3 1 x 2", "'x' is not an answer number"),
    ("3 1 4 2 10", "answer 1 appears twice"),  # one key per answer: "10" is 1 then 0
    ("3==1 4 2", "'=' must join two answer numbers"),
    ("3 1 4 2=", "ends with '='"),
    ("", "No ranking yet"),
    (None, "No ranking yet"),
    (5, "Ranking must be text"),
    ("1 " * 200, "limit is 200"),
])
def test_invalid_rankings_are_refused_with_what_is_wrong_and_nothing_is_written(ctx, text, match):
    ranking_set = rank_k.next_set(ctx, "ann", 4)
    with pytest.raises(InputError, match=match):
        rank_k.submit_ranking(ctx, ranking_set.set_id, text, "ann", "bad:rank")
    assert _rows(ctx) == 0


@pytest.mark.parametrize("change, match", [
    ({"set_id": "does-not-exist"}, "Unknown set"),
    ({"set_id": "x" * 1_000}, "set_id must be"),
    ({"annotator": "<script>"}, "letters, digits"),
    ({"submission_id": "a b"}, "submission_id"),
])
def test_invalid_requests_are_refused_and_nothing_is_written(ctx, change, match):
    ranking_set = rank_k.next_set(ctx, "ann", 2)
    request = {"set_id": ranking_set.set_id, "text": "2 1", "annotator": "ann", "submission_id": "s:rank", **change}
    with pytest.raises(InputError, match=match):
        rank_k.submit_ranking(ctx, **request)
    assert _rows(ctx) == 0
    with pytest.raises(InputError, match="K must be between 2 and 9"):
        next(rank_k.stream_next_set(ctx, "ann", 10))


def test_clicks_build_the_ranking_best_first(ctx):
    text = ""
    for number in (3, 1, 4, 2):
        text = rank_k.add_pick(text, number, 4)
    assert text == "3 1 4 2" and rank_k.parse_ranks(text, 4) == (2, 4, 1, 3)
    assert rank_k.add_pick("3=1", 4, 4) == "3=1 4"  # a typed tie, then a click
    with pytest.raises(InputError, match="Answer 3 is already ranked"):
        rank_k.add_pick("3 1", 3, 4)
    with pytest.raises(InputError, match="Answer must be between 1 and 4"):
        rank_k.add_pick("3 1", 7, 4)
    assert all(f"rankk-pick-{n}" in SHORTCUTS[str(n)] for n in range(1, 10))  # keys 1-9 pick answers


def test_ties_all_bad_and_progress_count_rankings_and_the_pairs_they_yield(ctx):
    tied_set = rank_k.next_set(ctx, "ann", 4)
    tied, _ = rank_k.submit_ranking(ctx, tied_set.set_id, "3=1 4 2", "ann", "a:rank")
    assert tied.ranks == (1, 3, 1, 2)
    bad_set = rank_k.next_set(ctx, "ann", 3)
    bad, reveal = rank_k.submit_ranking(ctx, bad_set.set_id, " ", "ann", "b:all_bad", all_bad=True)
    assert (bad.choice, bad.ranks) == ("all_bad", None)
    assert "Saved: **All bad**" in rank_k.reveal_markdown(reveal, False)
    counts = rank_k.progress(ctx, "ann")
    assert (counts["mine"], counts["mine_pairs"], counts["pairs"], counts["tied_pairs"], counts["sets"]) == \
        (2, 5, 5, 1, 2)  # C(4, 2) = 6 minus one tie; an all-bad answer yields no pairs
    assert rank_k.progress(ctx, "bob")["mine"] == 0
    text = rank_k.progress_markdown(counts)
    assert "**Your rankings: 2**, 5 pairs for the reward model" in text and "(+ 1 tied" in text
    labels = guidance.label_counts(ctx)
    assert (labels.rankings, labels.ranking_pairs, labels.usable) == (1, 6, 6)  # train-rm keeps ties
    assert "6 pairs of 1 ranking" in guidance.labels_markdown(labels, 50)
    assert "rank K" in guidance.rank_guidance(labels, 50, False)  # the pair mode points to rank K
    assert "Order the answers best first" in guidance.rank_guidance(labels, 50, False, rank_k=True)


def test_the_reward_model_is_revealed_per_answer_after_the_ranking(ctx):
    from workbench.reward import RewardModelConfig, train_reward_model

    ranking_set = rank_k.next_set(ctx, "ann", 4)
    _, reveal = rank_k.submit_ranking(ctx, ranking_set.set_id, "1 2 3 4", "ann", "n:rank", reveal=True)
    assert reveal.scores is None and "No reward model yet" in rank_k.reveal_markdown(reveal, False, ranking_set)
    texts = list(ranking_set.completions)  # an embedding-head RM (MiniLM, exact head fit) in reward/model
    rows = [{"prompt": ranking_set.prompt, "chosen": texts[i], "rejected": texts[j]} for i, j in ((0, 1), (2, 3))]
    config = RewardModelConfig(kind="embedding-head", oracle=None, val_fraction=0.0, max_length=64,
                               save_checkpoints=False)
    train_reward_model(rows, config, ctx.root)
    assert ctx.has_reward_model()
    other = rank_k.next_set(ctx, "ann", 4)
    _, reveal = rank_k.submit_ranking(ctx, other.set_id, "2 1 4=3", "ann", "m:rank", reveal=True)
    assert len(reveal.scores) == 4 and all(isinstance(s, float) for s in reveal.scores)
    agree, untied = reveal.agreement()
    assert untied == 5 and 0 <= agree <= 5
    text = rank_k.reveal_markdown(reveal, True, other)
    assert "**Last set**" in text and "Saved: **ranking** 2 > 1 > 3 = 4" in text
    assert all(f"{i} = {s:+.2f}" in text for i, s in enumerate(reveal.scores, start=1))
    assert f"It orders {agree} of your 5 untied pairs" in text


def test_the_rank_tab_builds_with_both_modes(ctx):
    demo = build_demo(context=ctx)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"rank-mode", "rank-k", "rankk-order", "rankk-submit", "rankk-all-bad", "rankk-undo"} <= ids
    assert {f"rankk-pick-{n}" for n in range(1, 10)} <= ids and {"vote-A", "undo-last"} <= ids
