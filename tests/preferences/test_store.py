"""PreferenceStore on a real SQLite file: durability, concurrency, revisions, validation, statistics."""

import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from workbench.preferences import Pair, PreferenceStore, cohens_kappa

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # for prefs_writer, the helper script the subprocesses run
from prefs_writer import N_PAIRS, submission  # noqa: E402


def make_pair(index: int, prompt="Write a haiku.", completion_a=None, completion_b=None) -> Pair:
    a, b = completion_a or f"left {index}", completion_b or f"right {index}"
    return Pair(Pair.make_id(prompt, a, b, "m1", "m2"), prompt, a, b, "m1", "m2", swapped=bool(index % 2),
                generation={"seed": index, "temperature": 0.7}, prompt_id=f"q{index}", created_at=1000.0 + index)


@pytest.fixture
def store(tmp_path):
    with PreferenceStore(tmp_path / "prefs.sqlite") as store:
        yield store


def label_rows(path) -> int:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT COUNT(*) FROM labels").fetchone()[0]


def test_pragmas_and_schema_on_every_connection(store):
    results = []
    thread = threading.Thread(target=lambda: results.append(store.connection()))
    thread.start()
    thread.join()
    assert results[0] is not store.connection()  # one connection per thread
    for connection in (store.connection(), results[0]):
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert connection.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
        assert connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 1
    PreferenceStore(store.path).close()  # reopening an existing store is a no-op on the schema


def test_pairs_round_trip_and_idempotent_add(store):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    pairs = [make_pair(0), make_pair(1), make_pair(2, prompt=chat)]
    assert store.add_pairs(pairs) == 3
    assert store.add_pairs([make_pair(0), make_pair(3)]) == 1  # re-adding is a no-op
    assert store.pairs() == [*pairs, make_pair(3)] and store.count_pairs() == 4
    assert store.get_pair(pairs[2].pair_id).prompt == chat and store.get_pair(pairs[2].pair_id).prompt_text == "Hi?"
    assert store.pairs(limit=2) == pairs[:2]
    changed = Pair(**{**make_pair(1).__dict__, "model_b": "other"})
    with pytest.raises(ValueError, match=f"{changed.pair_id}.*different \\['model_b'\\]"):
        store.add_pairs([make_pair(7), changed])
    assert store.count_pairs() == 4  # make_pair(7) was rolled back with the conflicting one
    with pytest.raises(KeyError, match="'nope' is not in"):
        store.get_pair("nope")
    with pytest.raises(ValueError, match="prompt message 1 must be"):
        Pair("x", [{"content": "no role"}], "a", "b", "m", "m", False)
    with pytest.raises(ValueError, match="swapped must be"):
        Pair("x", "p", "a", "b", "m", "m", "yes")


def test_revisions_undo_history_and_current_labels(store):
    p0, p1, p2 = (make_pair(i) for i in range(3))
    store.add_pairs([p0, p1, p2])
    first = store.add_label(p0.pair_id, "A", "alice", "s1", score_a=0.5, score_b=-1)
    second = store.add_label(p0.pair_id, "B", "alice", "s2", comment="changed my mind")
    assert (first.revision, second.revision) == (1, 2) and second.score_b is None
    assert first.score_b == -1.0 and isinstance(first.score_b, float)
    store.add_label(p0.pair_id, "tie", "bob", "s3")
    store.add_label(p1.pair_id, "A", "alice", "s4")
    assert [(label.pair_id, label.choice) for label in store.current_labels("alice")] == [(p0.pair_id, "B"),
                                                                                          (p1.pair_id, "A")]
    assert store.next_unlabelled("alice", limit=None) == [p2] and store.next_unlabelled("bob") == [p1]

    undo = store.undo_last("alice", "u1")  # the most recent label: p1
    assert (undo.pair_id, undo.choice, undo.revision) == (p1.pair_id, "undo", 2)
    assert store.undo_last("alice", "u1") == undo  # re-sent: no second undo
    assert store.undo_last("alice", "u2").pair_id == p0.pair_id  # then the one before
    assert store.undo_last("alice", "u3") is None and not store.has_submission("u3")
    assert store.current_labels("alice") == [] and store.count_labels() == 1 and store.count_labels("bob") == 1
    assert [label.choice for label in store.current_labels(include_undone=True)] == ["tie", "undo", "undo"]
    assert store.next_unlabelled("alice", limit=5) == [p0, p1, p2]  # undone pairs are open again

    relabel = store.add_label(p0.pair_id, "A", "alice", "s5")
    assert relabel.revision == 4  # A, B, undo, A: every vote kept, nothing overwritten
    assert [(label.annotator, label.choice, label.revision) for label in store.history(p0.pair_id)] == [
        ("alice", "A", 1), ("alice", "B", 2), ("bob", "tie", 1), ("alice", "undo", 3), ("alice", "A", 4)]
    with pytest.raises(ValueError, match="'s5' already made label"):
        store.undo_last("alice", "s5")  # a submission id names one request only
    with pytest.raises(KeyError):
        store.history("nope")


def test_resent_submission_is_one_row_and_changed_content_is_refused(store):
    store.add_pairs([make_pair(0)])
    pair_id = make_pair(0).pair_id
    label = store.add_label(pair_id, "A", "alice", "sub-1", score_a=1.5)
    assert store.add_label(pair_id, "A", "alice", "sub-1", score_a=1.5) == label
    assert label_rows(store.path) == 1
    with pytest.raises(ValueError, match=r"'sub-1' already made label 1 with different \['choice'\]"):
        store.add_label(pair_id, "B", "alice", "sub-1", score_a=1.5)
    with sqlite3.connect(store.path) as connection, pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        connection.execute("INSERT INTO labels (submission_id, pair_id, annotator, choice, revision, created_at) "
                           "VALUES ('sub-1', ?, 'bob', 'A', 1, 0)", (pair_id,))  # the constraint, not only a check
    assert label_rows(store.path) == 1


@pytest.mark.parametrize("change, field", [
    ({"choice": "C"}, "choice"), ({"choice": "undo"}, "choice"), ({"choice": None}, "choice"),
    ({"pair_id": "nope"}, "pair_id"), ({"pair_id": 3}, "pair_id"),
    ({"annotator": ""}, "annotator"), ({"annotator": "  "}, "annotator"), ({"annotator": "x" * 101}, "annotator"),
    ({"annotator": None}, "annotator"), ({"submission_id": ""}, "submission_id"),
    ({"submission_id": "s" * 201}, "submission_id"), ({"submission_id": 5}, "submission_id"),
    ({"comment": "c" * 2001}, "comment"), ({"comment": 5}, "comment"),
    ({"score_a": math.nan}, "score_a"), ({"score_a": math.inf}, "score_a"), ({"score_a": "1.0"}, "score_a"),
    ({"score_a": True}, "score_a"), ({"score_b": -math.inf}, "score_b"),
])
def test_invalid_label_is_refused_and_nothing_is_written(store, change, field):
    store.add_pairs([make_pair(0)])
    arguments = {"pair_id": make_pair(0).pair_id, "choice": "A", "annotator": "alice", "submission_id": "s1",
                 **change}
    with pytest.raises(ValueError, match=field):
        store.add_label(**arguments)
    assert label_rows(store.path) == 0
    store.add_label(make_pair(0).pair_id, "A", "alice", "s1", comment="c" * 2000)  # the limits themselves are fine


def test_transaction_groups_writes(store):
    with pytest.raises(RuntimeError), store.transaction():
        store.add_pairs([make_pair(0)])
        store.add_label(make_pair(0).pair_id, "A", "alice", "s1")
        raise RuntimeError("crash before commit")
    assert store.count_pairs() == 0 and label_rows(store.path) == 0
    with store.transaction():
        store.add_pairs([make_pair(0)])
        with pytest.raises(ValueError):
            store.add_label("nope", "A", "alice", "s1")  # a failed inner call undoes only itself
        store.add_label(make_pair(0).pair_id, "A", "alice", "s1")
    assert store.count_labels() == 1


def test_cohens_kappa_hand_computed():
    # p_o = 4/6; p_e = (3·1 + 2·3 + 1·2)/36 = 11/36; κ = (24/36 − 11/36)/(25/36) = 13/25
    assert cohens_kappa(list("AABBTA"), list("ABBBTT")) == pytest.approx(0.52)
    assert cohens_kappa(["A", "A"], ["A", "A"]) == 1.0  # p_e = p_o = 1
    assert cohens_kappa(["A", "B"], ["B", "A"]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="equally long"):
        cohens_kappa(["A"], [])


def test_stats(store):
    pairs = [make_pair(0, completion_a="a long answer", completion_b="short"),  # gold (length) prefers A
             make_pair(1, completion_a="x", completion_b="yyy"),  # gold prefers B
             make_pair(2, completion_a="aa", completion_b="bb"),  # gold tie
             make_pair(3)]
    store.add_pairs(pairs)
    votes = {"alice": ["A", "B", "B", "tie"], "bob": ["A", "A", "A", "skip"], "carol": ["both_bad"]}
    store.add_label(pairs[3].pair_id, "A", "alice", "early")  # replaced by alice's later "tie"
    for annotator, choices in votes.items():
        for pair, choice in zip(pairs, choices):
            store.add_label(pair.pair_id, choice, annotator, f"{annotator}-{pair.pair_id}")
    store.add_label(pairs[0].pair_id, "B", "dave", "dave-1")
    store.undo_last("dave", "dave-undo")  # undone labels count nowhere

    stats = store.stats(gold=lambda prompt, text: len(text))
    assert stats["n_pairs"] == 4 and stats["n_labels"] == 9
    assert stats["per_annotator"] == {"alice": 4, "bob": 4, "carol": 1}
    assert stats["per_choice"] == {"A": 4, "B": 2, "tie": 1, "both_bad": 1, "skip": 1}
    assert stats["position_bias"] == {"share_A": pytest.approx(4 / 6), "n": 6}
    agreement = {tuple(row["annotators"]): row for row in stats["agreement"]["pairs"]}
    # alice vs bob: p_o = 1/4; p_e = (1·3)/16; κ = (4/16 − 3/16)/(13/16) = 1/13
    assert agreement["alice", "bob"] == {"annotators": ["alice", "bob"], "n": 4, "raw": 0.25,
                                         "kappa": pytest.approx(1 / 13)}
    assert agreement["alice", "carol"]["n"] == 1 and agreement["alice", "carol"]["kappa"] == 0.0
    assert stats["agreement"]["n_shared"] == 6
    assert stats["agreement"]["mean_raw"] == pytest.approx(0.25 / 3)
    assert stats["agreement"]["mean_kappa"] == pytest.approx(1 / 39)
    # alice: A on p0 (1), B on p1 (1), B on p2 (gold tie: 0.5); bob: 1, 0, 0.5
    assert stats["gold_agreement"]["share"] == pytest.approx(4 / 6) and stats["gold_agreement"]["n"] == 6
    assert stats["gold_agreement"]["per_annotator"]["alice"] == {"share": pytest.approx(2.5 / 3), "n": 3}
    assert "gold_agreement" not in store.stats()
    with PreferenceStore(store.path.parent / "empty.sqlite") as empty:
        assert empty.stats()["position_bias"] == {"share_A": None, "n": 0}


def start_writer(db: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "prefs_writer.py"), str(db), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_threads_and_processes_write_every_label_exactly_once(store):
    """10 writers (8 threads, 2 processes) send 1,000 submissions; each is sent again by the next writer."""
    store.add_pairs([Pair(f"pair{i}", "p", f"a{i}", f"b{i}", "m", "m", False) for i in range(N_PAIRS)])
    ranges = [(100 * w, 100 * w + 100, 100 * ((w + 1) % 10), 100 * ((w + 1) % 10) + 100) for w in range(10)]
    processes = [start_writer(store.path, "batch", *map(str, ranges[w])) for w in (8, 9)]
    for process in processes:  # wait until both have imported everything, so all ten writers overlap
        assert process.stdout.readline() == "ready\n", process.stderr.read()
    errors, start = [], threading.Barrier(8 + 1)

    def write(first, last, resend_first, resend_last):
        start.wait()
        try:
            for own, resent in zip(range(first, last), range(resend_first, resend_last)):
                store.add_label(**submission(own))
                store.add_label(**submission(resent))
        except Exception as error:  # reported below: a thread's exception would otherwise vanish
            errors.append(error)

    threads = [threading.Thread(target=write, args=ranges[w]) for w in range(8)]
    for thread in threads:
        thread.start()
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    start.wait()
    for thread in threads:
        thread.join()
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0 and out == "done\n", err
    assert errors == []

    with sqlite3.connect(store.path) as connection:
        rows = connection.execute("SELECT submission_id, pair_id, annotator, choice, revision, comment, score_a "
                                  "FROM labels").fetchall()
    assert len(rows) == 1000 and len({row[0] for row in rows}) == 1000
    for submission_id, pair_id, annotator, choice, _, comment, score_a in rows:
        sent = submission(int(submission_id.removeprefix("sub-")))
        assert (pair_id, annotator, choice, comment, score_a) == (sent["pair_id"], sent["annotator"], sent["choice"],
                                                                  sent["comment"], sent["score_a"])
    revisions = {}
    for _, pair_id, annotator, _, revision, _, _ in rows:
        revisions.setdefault((pair_id, annotator), []).append(revision)
    assert all(sorted(r) == list(range(1, len(r) + 1)) for r in revisions.values())  # no gaps, no duplicates


def test_acknowledged_labels_survive_kill_9(store):
    store.add_pairs([Pair(f"pair{i}", "p", f"a{i}", f"b{i}", "m", "m", False) for i in range(N_PAIRS)])
    store.close()
    writer = start_writer(store.path, "loop")
    acknowledged, deadline = [], time.monotonic() + 60
    while len(acknowledged) < 300 and time.monotonic() < deadline:
        line = writer.stdout.readline()
        assert line, f"writer exited: {writer.stderr.read()}"
        acknowledged.append(line.strip())
    os.kill(writer.pid, signal.SIGKILL)  # mid-transaction, most likely
    writer.wait()
    acknowledged += [line.strip() for line in writer.stdout.read().splitlines(keepends=True) if line.endswith("\n")]
    assert len(acknowledged) >= 300

    reopened = PreferenceStore(store.path)
    assert reopened.connection().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {row[0] for row in reopened.connection().execute("SELECT submission_id FROM labels")}
    assert set(acknowledged) <= stored
    assert reopened.count_labels() > 0
    reopened.close()
