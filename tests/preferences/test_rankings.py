"""Rankings of K completions: store guarantees (idempotent, revisions, undo, kill -9), export to pairs, import,
the simulated Plackett-Luce ranker, and reward-model training that weighs each ranking once. Real SQLite."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from itertools import combinations

import pytest
import torch

from workbench.oracles import SimulatedLabeler
from workbench.preferences import PreferenceImportError, PreferenceStore
from workbench.preferences.ranking_io import export_ranking_pairs, import_rankings
from workbench.preferences.rankings import (
    RankingSet,
    RankingStore,
    dense_ranks,
    make_ranking_sets,
    rank_with,
    ranks_from_order,
)
from workbench.preferences.store import _SCHEMA
from workbench.reward.embedding_head import EmbeddingHeadRewardModel, fit_bradley_terry, fit_heads, text_features
from workbench.reward.listwise import fit_heads_plackett_luce, fit_plackett_luce, ranking_groups, ranking_weights

ANSWERS = ["Warm sand and gentle waves.", "Blue water under a wide sky.", "A beach.", "Gulls, salt and sunlight."]


def ranking_set(prompt="Describe a beach.", completions=ANSWERS) -> RankingSet:
    models = ["m"] * len(completions)
    return RankingSet(RankingSet.make_id(prompt, completions, models), prompt, completions, models,
                      list(range(len(completions)))[::-1], {"seed": 0})


@pytest.fixture
def store(tmp_path):
    with PreferenceStore(tmp_path / "prefs.sqlite") as store:
        yield store


def test_ranking_with_ties_exports_exactly_its_pairs(store):
    rankings, shown = RankingStore(store), ranking_set()
    assert rankings.add_sets([shown]) == 1 and rankings.add_sets([shown]) == 0
    made = rankings.add_ranking(shown.set_id, [2, 1, 2, 4], "ann", "s1")  # positions 0 and 2 tied; 4 -> dense 3
    assert made.ranks == (2, 1, 2, 3)
    c = ANSWERS
    expected = {(c[1], c[0], "B"), (c[0], c[3], "A"), (c[1], c[2], "A"), (c[1], c[3], "A"), (c[2], c[3], "A")}
    dataset, report = export_ranking_pairs(store)
    rows = dataset.to_list()
    assert {(r["chosen"], r["rejected"], r["choice"]) for r in rows} == expected and len(rows) == 5
    assert {r["ranking_id"] for r in rows} == {made.ranking_id} and report["dropped_ties"] == 1
    assert set(dataset.column_names) >= {"prompt", "chosen", "rejected", "ranking_id"}
    kept = export_ranking_pairs(store, ties="keep")[0].to_list()
    assert len(kept) == 6 == len(list(combinations(range(4), 2)))
    assert {(r["chosen"], r["rejected"]) for r in kept if r["choice"] == "tie"} == {(c[0], c[2])}
    assert rankings.stats()["n_pairs"] == 5 and rankings.stats()["n_texts_read"] == 4


def test_resent_ranking_adds_nothing_and_changed_resend_is_refused(store):
    rankings, shown = RankingStore(store), ranking_set()
    rankings.add_sets([shown])
    first = rankings.add_ranking(shown.set_id, [1, 2, 3, 4], "ann", "s1")
    assert rankings.add_ranking(shown.set_id, [1, 2, 3, 4], "ann", "s1") == first
    with pytest.raises(ValueError, match="re-send must repeat"):
        rankings.add_ranking(shown.set_id, [4, 3, 2, 1], "ann", "s1")
    with pytest.raises(ValueError, match="one rank per completion"):
        rankings.add_ranking(shown.set_id, [1, 2], "ann", "s2")
    with pytest.raises(KeyError, match="not in"):
        rankings.add_ranking("nope", [1, 2, 3, 4], "ann", "s3")
    assert store.connection().execute("SELECT COUNT(*) FROM rankings").fetchone()[0] == 1


def test_undo_and_rerank_are_revisions_and_all_bad_is_allowed(store):
    rankings, shown, other = RankingStore(store), ranking_set(), ranking_set("Describe a lake.")
    rankings.add_sets([shown, other])
    rankings.add_ranking(shown.set_id, [1, 2, 3, 4], "ann", "s1")
    rankings.add_ranking(shown.set_id, [4, 3, 2, 1], "ann", "s2")  # changed mind: revision 2
    rankings.add_ranking(other.set_id, None, "ann", "s3", choice="all_bad")
    undone = rankings.undo_last("ann", "u1")  # withdraws the latest that counts: the all_bad one
    assert (undone.choice, undone.set_id, undone.revision) == ("undo", other.set_id, 2)
    assert rankings.undo_last("ann", "u1") == undone  # a re-sent undo is the same revision
    assert [r.revision for r in rankings.history(shown.set_id)] == [1, 2]
    assert [(r.set_id, r.ranks) for r in rankings.current()] == [(shown.set_id, (4, 3, 2, 1))]
    assert [s.set_id for s in rankings.next_unranked("ann", None)] == [other.set_id]
    assert ranks_from_order([2, 0], 4) == (2, 3, 1, 3) and dense_ranks([5 // 5, 3, 3, 4], 4) == (1, 2, 2, 3)


def test_store_from_before_rankings_opens_and_gains_the_tables(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as connection:  # a round-1 store: labels tables only, schema version 1
        for statement in _SCHEMA:
            connection.execute(statement)
        connection.execute("PRAGMA user_version = 1")
    with PreferenceStore(path, read_only=True) as old:
        assert not old.has_rankings() and RankingStore(old).current() == [] and RankingStore(old).sets() == []
    with PreferenceStore(path) as upgraded:
        assert upgraded.has_rankings() and RankingStore(upgraded).add_sets([ranking_set()]) == 1


WRITER = """
import sys
from workbench.preferences import PreferenceStore
from workbench.preferences.rankings import RankingStore
rankings = RankingStore(PreferenceStore(sys.argv[1]))
sets = [s.set_id for s in rankings.sets()]
index = 0
while True:
    ranks = [(index + i) % 4 + 1 for i in range(4)]
    made = rankings.add_ranking(sets[index % len(sets)], ranks, f"ann{index % 3}", f"sub-{index}")
    print(made.submission_id, flush=True)  # the acknowledgement: add_ranking returned after COMMIT
    index += 1
"""


def test_acknowledged_rankings_survive_kill_9(store):
    RankingStore(store).add_sets([ranking_set(f"Describe place {i}.") for i in range(10)])
    store.close()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store.path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    acknowledged, deadline = [], time.monotonic() + 60
    while len(acknowledged) < 60 and time.monotonic() < deadline:
        line = writer.stdout.readline()
        assert line, f"writer exited: {writer.stderr.read()}"
        acknowledged.append(line.strip())
    os.kill(writer.pid, signal.SIGKILL)  # mid-transaction, most likely
    writer.wait()
    acknowledged += [line.strip() for line in writer.stdout.read().splitlines(keepends=True) if line.endswith("\n")]
    with PreferenceStore(store.path) as reopened:
        assert reopened.connection().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in reopened.connection().execute("SELECT submission_id FROM rankings")}
        assert len(acknowledged) >= 60 and set(acknowledged) <= stored


def test_ranking_import_is_validated_idempotent_and_round_trips(store, tmp_path):
    good = tmp_path / "rankings.jsonl"
    rows = [{"prompt": "Describe a beach.", "completions": ANSWERS, "ranks": [2, 1, 2, 3]},
            {"prompt": [{"role": "user", "content": "Hi?"}], "completions": ["Hello!", "Hey."], "ranks": [1, 2],
             "annotator": "bo"}]
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert import_rankings(good, store).n_imported == 2 and import_rankings(good, store).n_imported == 0
    dataset, report = export_ranking_pairs(store)
    assert report["n_rankings"] == 2 and report["n_rows"] == 5 + 1 and report["format"] == "conversational"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "p", "completions": ["a"], "ranks": [1]},
        {"prompt": "p", "completions": ["a", "a"], "ranks": [1, 2]},
        {"prompt": "p", "completions": ["a", "b"], "ranks": [1, 7]},
        {"prompt": "", "completions": ["a", "b"], "ranks": [1, 2]},
        {"prompt": "p", "completions": ["a", "b"]}]) + "\n")
    with pytest.raises(PreferenceImportError) as caught:
        import_rankings(bad, store)
    assert [(e.row, e.field) for e in caught.value.errors] == [(1, "completions"), (2, "completions"), (3, "ranks"),
                                                                (4, "prompt"), (5, "ranks")]
    assert len(RankingStore(store).current()) == 2  # nothing written


def test_simulated_ranker_is_gold_order_at_zero_noise_and_near_uniform_at_high_noise():
    answers = ["one two three four five six seven eight nine", "one two three four five six", "one two three",
               "one"]  # `concise` gold: 0, -0.2, -0.5, -0.7
    assert SimulatedLabeler("concise", temperature=0).rank("p", answers) == [1, 2, 3, 4]
    assert SimulatedLabeler("concise", temperature=0).rank("p", answers[:2] + answers[:1]) == [1, 2, 1]  # tie
    noisy = SimulatedLabeler("concise", temperature=100.0, seed=1)
    tops = Counter(noisy.rank("p", answers).index(1) for _ in range(4000))
    assert all(abs(tops[i] / 4000 - 0.25) < 0.03 for i in range(4)), tops
    careful = SimulatedLabeler("concise", temperature=0.1, seed=2)  # K = 2 is the pair labeler's BT draw
    share = sum(careful.rank("p", answers[:2])[0] == 1 for _ in range(4000)) / 4000
    assert abs(share - careful.prob_a("p", answers[0], answers[1])) < 0.03


def test_ranking_weights_reach_the_loss_once_per_ranking():
    """Synthetic features: one ranking of 4 (6 pairs) and one plain pair. Each ranking weighs 1 in total; the
    weighted BT fit equals the fit on the same pairs with 6x the prior (the same loss up to a factor)."""
    texts = [f"t{i}" for i in range(4)]
    rows = [{"prompt": "p", "chosen": texts[i], "rejected": texts[j], "choice": "A", "ranking_id": 7}
            for i, j in combinations(range(4), 2)] + [{"prompt": "q", "chosen": "x", "rejected": "y", "choice": "A"}]
    weights = ranking_weights(rows)
    assert torch.allclose(weights, torch.tensor([1 / 6] * 6 + [1.0], dtype=torch.float64))
    assert float(weights[:6].sum()) == pytest.approx(1.0)
    generator = torch.Generator().manual_seed(0)
    diffs = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    targets = torch.ones(6)
    weighted, _ = fit_bradley_terry(diffs, targets, l2=1.0, weights=ranking_weights(rows[:6]))
    rescaled, _ = fit_bradley_terry(diffs, targets, l2=6.0)
    unweighted, _ = fit_bradley_terry(diffs, targets, l2=1.0)
    assert torch.allclose(weighted, rescaled, atol=1e-6) and not torch.allclose(weighted, unweighted, atol=1e-3)
    groups = ranking_groups(rows)
    assert sorted(sorted(ranks) for _, ranks in groups) == [[1, 2], [1, 2, 3, 4]]


def test_plackett_luce_of_pairs_is_bradley_terry():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 6, generator=generator, dtype=torch.float64)  # 20 pairs: rows i and 20 + i
    groups = [([i, 20 + i], [1, 2]) for i in range(20)]
    w_pl, _ = fit_plackett_luce(features, groups, l2=0.5)
    w_bt, _ = fit_bradley_terry(features[:20] - features[20:], torch.ones(20), l2=0.5)
    assert torch.allclose(w_pl, w_bt, atol=1e-6)


def test_sampled_sets_rank_and_train_an_embedding_head(tiny_policy, tmp_path):
    """K samples per prompt in one batch with a recorded display order, ranked by the simulated labeler, exported
    and trained on: the saved head is the fit with each ranking's pairs weighted once; Plackett-Luce fits too."""
    from workbench.data import PromptRecord
    from workbench.preferences.pairs import PairConfig
    from workbench.reward import RewardModelConfig, train_reward_model

    prompts = [PromptRecord(f"q{i}", f"Say something about topic {i}.") for i in range(6)]
    sets = make_ranking_sets(prompts, tiny_policy, 3, PairConfig(max_new_tokens=8, batch_size=8))
    assert sets and all(s.k == 3 and sorted(s.display_order) == [0, 1, 2] for s in sets)
    with PreferenceStore(tmp_path / "prefs.sqlite") as store:
        rankings = RankingStore(store)
        rankings.add_sets(sets)
        labeler = SimulatedLabeler("concise", temperature=0.1)
        assert rank_with(rankings, sets, labeler) == len(sets) and rank_with(rankings, sets, labeler) == 0
        rows = export_ranking_pairs(store, ties="keep")[0].to_list()
    assert len(rows) == 3 * len(sets)
    # a weak prior: with the default strong one, equal 1/3 weights would only rescale the prior (same direction)
    config = RewardModelConfig(kind="embedding-head", oracle=None, val_fraction=0.0, save_checkpoints=False,
                               max_length=64, head_l2=10.0)
    result = train_reward_model(rows, config, tmp_path / "rm")
    trained = EmbeddingHeadRewardModel.load(result.model_dir)[0]
    # the same head refitted by hand with each ranking's pairs weighing 1/3: what training did
    tokenizer = trained_tokenizer(result)
    model = EmbeddingHeadRewardModel(trained.encoder, tokenizer)
    prompts = [r["prompt"] for r in rows]
    chosen = text_features(model, tokenizer, prompts, [r["chosen"] for r in rows], 64)
    rejected = text_features(model, tokenizer, prompts, [r["rejected"] for r in rows], 64)
    targets = torch.tensor([0.5 if r["choice"] == "tie" else 1.0 for r in rows])
    fit_heads(model, chosen, rejected, targets, config.head_l2, weights=ranking_weights(rows))
    assert torch.allclose(model.heads.weight, trained.heads.weight, atol=1e-4)
    fit_heads(model, chosen, rejected, targets, config.head_l2)  # every pair weight 1: another head
    change = (model.heads.weight - trained.heads.weight).norm() / trained.heads.weight.norm()
    assert change > 0.01  # relative: the Platt scale sets the weights' size
    fit_heads_plackett_luce(model, chosen, rejected, rows, config.head_l2)  # listwise: orders the training sets
    scores = model.head_scores(torch.cat([chosen, rejected]))[:, 0]
    decisive = [i for i, r in enumerate(rows) if r["choice"] != "tie"]
    assert sum(float(scores[i]) > float(scores[len(rows) + i]) for i in decisive) >= 0.7 * len(decisive)


def trained_tokenizer(result):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(result.model_dir)


def test_cli_label_rank_k_stats_and_export(tmp_path, capsys):
    from workbench.cli import main

    db = str(tmp_path / "prefs.sqlite")
    assert main(["label", "--db", db, "--pairs", "4", "--rank-k", "3", "--policy", "tiny-random-llama",
                 "--max-new-tokens", "8", "--oracle", "concise", "--json"]) == 0
    labelled = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert labelled["k"] == 3 and labelled["n_new_rankings"] == labelled["n_sets"] > 0
    assert main(["prefs", "stats", "--db", db]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_labels"] == 0 and stats["rankings"]["n_rankings"] == labelled["n_sets"]
    assert stats["rankings"]["n_texts_read"] == 3 * labelled["n_sets"]
    out = str(tmp_path / "ranked.jsonl")
    assert main(["prefs", "export", out, "--db", db, "--rankings", "--ties", "keep", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_rows"] == 3 * labelled["n_sets"]
    assert main(["label", "--db", db, "--rank-k", "12", "--policy", "tiny-random-llama"]) == 2
    assert "--rank-k 12" in capsys.readouterr().err
