"""The real app on 127.0.0.1 through gradio_client: labels, concurrency, validation, file routes, auth."""

import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from gradio_client import Client

from tests.app.conftest import start_app, stop_app


def client(url, **kwargs) -> Client:
    return Client(url, verbose=False, **kwargs)


def test_page_is_served_on_loopback(served_app):
    html = urllib.request.urlopen(served_app.url, timeout=10).read().decode()
    assert "RLHF workbench" in html and served_app.url.startswith("http://127.0.0.1:")
    queue = served_app.demo._queue  # the per-event analytics summary stays small (see GRADIO_QUEUE_ANALYTICS)
    assert queue.ANALYTICS_MAX_EVENTS <= 100 and queue.ANAYLTICS_CACHE_FREQUENCY >= 1000


def test_new_pair_then_twenty_labels_land_in_the_store(served_app, seeded_pairs):
    c = client(served_app.url)
    pair = c.predict("Describe a lighthouse.", api_name="/new_pair")
    assert served_app.ctx.store.get_pair(pair["pair_id"]).prompt == "Describe a lighthouse."
    before = served_app.ctx.store.count_labels("twenty")
    for i, p in enumerate(seeded_pairs):
        result = c.predict(p.pair_id, ["A", "B", "tie", "both_bad", "skip"][i % 5], "twenty", f"twenty-{i}",
                           api_name="/label")
        assert result["pair_id"] == p.pair_id and result["annotator"] == "twenty"
    assert served_app.ctx.store.count_labels("twenty") == before + 20
    assert c.predict("twenty", api_name="/progress")["mine"] == 20


def test_stream_pair_sends_both_sides_as_they_grow_then_the_stored_pair(served_app):
    c = client(served_app.url)
    updates = list(c.submit("Describe a windmill.", api_name="/stream_pair"))
    *partial, last = updates
    assert len(partial) >= 2 and all(u["pair_id"] is None for u in partial)  # not votable while being written
    assert partial[0]["completion_a"] and partial[0]["completion_b"]
    pair = served_app.ctx.store.get_pair(last["pair_id"])
    assert (last["completion_a"], last["completion_b"]) == (pair.completion_a, pair.completion_b)
    label = c.predict(last["pair_id"], "B", "streamer", uuid.uuid4().hex, api_name="/label")
    assert label["pair_id"] == pair.pair_id


def test_eight_concurrent_clients_write_exactly_their_labels(served_app, seeded_pairs):
    store = served_app.ctx.store
    before = store.count_labels()

    def annotate(worker: int) -> list[int]:
        c = client(served_app.url)
        ids = []
        for i in range(50):
            pair = seeded_pairs[i % len(seeded_pairs)]
            submission = f"w{worker}-{i}"
            ids.append(c.predict(pair.pair_id, "A" if i % 2 else "B", f"worker{worker}", submission,
                                 api_name="/label")["label_id"])
            if i % 10 == 0:  # a re-sent request (e.g. after a timeout) must not add a label
                assert c.predict(pair.pair_id, "A" if i % 2 else "B", f"worker{worker}", submission,
                                 api_name="/label")["label_id"] == ids[-1]
        return ids

    with ThreadPoolExecutor(8) as pool:
        label_ids = [i for ids in pool.map(annotate, range(8)) for i in ids]
    assert len(label_ids) == len(set(label_ids)) == 400  # no duplicates, no errors
    submissions = [l.submission_id for l in store.current_labels(include_undone=True) if l.annotator.startswith("worker")]
    revisions = store.connection().execute("SELECT COUNT(*) FROM labels WHERE annotator LIKE 'worker%'").fetchone()[0]
    assert revisions == 400 and len(submissions) == 8 * 20  # 50 votes over 20 pairs: revisions, not duplicates
    assert store.count_labels() == before + 8 * 20


@pytest.mark.parametrize("args, match", [
    (lambda p: (p, "C", "ann", "bad-1"), "choice must be one of"),
    (lambda p: ("no-such-pair", "A", "ann", "bad-2"), "Unknown pair"),
    (lambda p: (p, "A", "x" * 1_000_000, "bad-3"), "limit is 64"),
    (lambda p: (p, "A", "ann", "x" * 1_000_000), "submission_id"),
])
def test_invalid_labels_are_rejected_and_nothing_is_written(served_app, seeded_pairs, args, match):
    c = client(served_app.url)
    before = served_app.ctx.store.connection().execute("SELECT COUNT(*) FROM labels").fetchone()[0]
    with pytest.raises(Exception, match=match):
        c.predict(*args(seeded_pairs[0].pair_id), api_name="/label")
    assert served_app.ctx.store.connection().execute("SELECT COUNT(*) FROM labels").fetchone()[0] == before


def test_a_megabyte_prompt_is_rejected(served_app):
    pairs = served_app.ctx.store.count_pairs()
    with pytest.raises(Exception, match="limit is 2,000"):
        client(served_app.url).predict("x" * 1_000_000, api_name="/new_pair")
    assert served_app.ctx.store.count_pairs() == pairs


@pytest.mark.parametrize("path", [
    "{db}", "{root}/prefs.sqlite-wal", "{root}/app/jobs/reward.err", "../../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd",
    "/etc/passwd", "{cwd}/pyproject.toml",
])
def test_run_directory_and_traversal_are_not_served(served_app, path):
    import os

    target = path.format(db=served_app.ctx.store.path, root=served_app.ctx.root, cwd=os.getcwd())
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{served_app.url}gradio_api/file={target}", timeout=10)
    assert error.value.code in (403, 404)


def test_with_auth_calls_need_a_login_and_labels_carry_its_name(tmp_path, tiny_policy):
    app = start_app(tmp_path / "run", tiny_policy, auth=[("alice", "s3cret-A"), ("bob", "s3cret-B")])
    try:
        for credentials in (None, ("alice", "wrong")):
            with pytest.raises(Exception) as refused:  # AuthenticationError or ValueError, by case
                client(app.url, auth=credentials).predict("bob", api_name="/progress")
            assert "login" in str(refused.value).lower() or "auth" in str(refused.value).lower()
        raw = urllib.request.Request(f"{app.url}gradio_api/call/progress", data=b'{"data": ["bob"]}',
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as error:  # the HTTP API itself, not only the client
            urllib.request.urlopen(raw, timeout=10)
        assert error.value.code in (401, 403)
        alice = client(app.url, auth=("alice", "s3cret-A"))
        shown = alice.predict("Describe rain.", api_name="/new_pair")
        result = alice.predict(shown["pair_id"], "A", "mallory", uuid.uuid4().hex, api_name="/label")
        assert result["annotator"] == "alice"  # the login name, not the claimed one
        assert [l.annotator for l in app.ctx.store.current_labels()] == ["alice"]
    finally:
        stop_app(app)
