"""The app against a web page on the same machine and a careless client: Host/Origin allow-list, login throttling,
security headers, API signatures, re-used submission ids, the run directory's path, 64 concurrent label clients."""

import http.client
import json
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from apps.context import AppContext, LoadedPolicy
from apps.security import GuardConfig, allowed_hosts
from apps.workbench_app import build_demo, serve
from tests.app.conftest import free_port

EVIL = "evil.example"


def request(url: str, method: str, path: str, body=None, headers=None, form=False):
    """(status, lower-case headers, parsed JSON or text) of one plain HTTP request."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = urllib.parse.urlencode(body).encode() if form else json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded" if form else "application/json")
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    raw = response.read().decode("utf-8", "replace")
    connection.close()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw
    return response.status, {k.lower(): v for k, v in response.getheaders()}, parsed


@pytest.fixture(scope="module")
def seeded_pairs(served_app):
    """20 stored pairs written directly (these tests are about requests, not generation: no model time)."""
    from workbench.preferences import Pair

    pairs = [Pair(Pair.make_id("Say hi.", f"hi {i}", f"hello {i}", "m", "m"), "Say hi.", f"hi {i}", f"hello {i}",
                  "m", "m", False) for i in range(20)]
    served_app.ctx.store.add_pairs(pairs)
    return pairs


def label_rows(app) -> int:
    return app.ctx.store.connection().execute("SELECT COUNT(*) FROM labels").fetchone()[0]


def fn_index(demo, elem_id: str) -> int:
    """The index of the click event of the component with this elem_id (how the page calls it)."""
    block = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)
    return next(i for i, fn in demo.fns.items() if any(t[0] == block._id for t in fn.targets))


def label_body(pair_id, *extra, submission=None):
    return {"data": [pair_id, "A", "sec", submission or uuid.uuid4().hex, *extra]}


@pytest.mark.parametrize("headers", [
    {"Host": EVIL}, {"Host": f"{EVIL}:7860", "Origin": f"http://{EVIL}"}, {"Origin": f"http://{EVIL}"},
    {"Origin": "null"}, {"Host": "127.0.0.1.evil.example"},
])
def test_other_hosts_and_origins_are_refused_and_nothing_is_written(served_app, seeded_pairs, headers):
    before = label_rows(served_app)
    status, got, body = request(served_app.url, "POST", "/gradio_api/run/label", label_body(seeded_pairs[0].pair_id),
                                headers)
    assert status == 403 and "refused" in body["error"] or "answers only" in body["error"]
    assert got["x-frame-options"] == "DENY" and label_rows(served_app) == before
    status, _, body = request(served_app.url, "GET", "/config", headers=headers)
    assert status == 403  # every route, reads too: a rebound page learns nothing


def test_loopback_names_and_own_origin_are_served(served_app, seeded_pairs):
    port = urllib.parse.urlsplit(served_app.url).port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        status, _, body = request(served_app.url, "POST", "/gradio_api/run/label",
                                  label_body(seeded_pairs[1].pair_id), {"Host": host, "Origin": f"http://{host}"})
        assert status == 200, body


def test_job_start_stop_and_blind_votes_are_refused_from_another_host(served_app):
    ctx, demo = served_app.ctx, served_app.demo
    votes = ctx.root / "blind_votes.sqlite"
    before = votes.stat().st_size if votes.exists() else None
    blind = next(i for i, fn in demo.fns.items() if fn.name == "on_blind_vote")
    for index in (fn_index(demo, "rl-start"), fn_index(demo, "rl-stop"), fn_index(demo, "rm-train"), blind):
        data = [None] * len(demo.fns[index].inputs)
        status, _, body = request(served_app.url, "POST", "/gradio_api/queue/join",
                                  {"data": data, "fn_index": index, "session_hash": "rebind"},
                                  {"Host": EVIL, "Origin": f"http://{EVIL}"})
        assert status == 403, body
    assert ctx.jobs.status("rl")["state"] == "idle" and ctx.jobs.status("reward")["state"] == "idle"
    assert (votes.stat().st_size if votes.exists() else None) == before


def test_security_headers_on_every_response(served_app):
    for method, path in (("GET", "/"), ("GET", "/config"), ("GET", "/gradio_api/info"), ("GET", "/no-such-page"),
                         ("POST", "/gradio_api/run/no_such_endpoint")):
        _, headers, _ = request(served_app.url, method, path, {"data": []} if method == "POST" else None)
        assert headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"], path


def test_page_and_config_name_the_run_directory_only_by_name(served_app):
    root = str(served_app.ctx.root)
    for path in ("/", "/config"):
        _, _, body = request(served_app.url, "GET", path)
        text = body if isinstance(body, str) else json.dumps(body)
        assert root not in text and served_app.ctx.root.name in text, path


def test_show_paths_names_the_absolute_path(ctx):
    texts = [str(getattr(b, "value", "")) for b in build_demo(context=ctx, show_paths=True).blocks.values()]
    assert any(str(ctx.root) in text for text in texts)


@pytest.mark.parametrize("path, body, status, match", [
    ("/gradio_api/run/label", lambda p: label_body(p, "extra"), 422, "takes 4 values"),
    ("/gradio_api/run/label", lambda p: {"data": [p, "A", "sec"]}, 422, "got 3 values"),
    ("/gradio_api/run/label", lambda p: {"data": "not-a-list"}, 422, "takes 4 values"),
    ("/gradio_api/run/label", lambda p: b"{not json", 422, "not JSON"),
    ("/gradio_api/call/label", lambda p: label_body(p, "extra"), 422, "takes 4 values"),
    ("/gradio_api/run/no_such_endpoint", lambda p: label_body(p), 404, "no API endpoint /no_such_endpoint"),
    ("/gradio_api/call/no_such_endpoint", lambda p: label_body(p), 404, "no API endpoint"),
    ("/gradio_api/run/on_vote", lambda p: label_body(p), 404, "no API endpoint"),  # the page's handlers are private
    ("/gradio_api/queue/join", lambda p: {"data": [], "fn_index": 10_000, "session_hash": "x"}, 404, "fn_index"),
])
def test_requests_that_do_not_match_an_endpoint_are_refused(served_app, seeded_pairs, path, body, status, match):
    before = label_rows(served_app)
    got, _, reply = request(served_app.url, "POST", path, body(seeded_pairs[2].pair_id))
    assert got == status and match in reply["error"], reply
    assert label_rows(served_app) == before


def test_queue_join_of_an_api_endpoint_checks_its_signature(served_app, seeded_pairs):
    index = next(i for i, fn in served_app.demo.fns.items() if fn.api_name == "label")
    status, _, reply = request(served_app.url, "POST", "/gradio_api/queue/join",
                               {**label_body(seeded_pairs[2].pair_id, "extra"), "fn_index": index,
                                "session_hash": "s"})
    assert status == 422 and "takes 4 values" in reply["error"]


def test_a_reused_submission_id_on_another_pair_is_a_clear_error(served_app, seeded_pairs):
    submission = uuid.uuid4().hex
    first = request(served_app.url, "POST", "/gradio_api/run/label",
                    label_body(seeded_pairs[3].pair_id, submission=submission))
    assert first[0] == 200
    before = label_rows(served_app)
    status, _, reply = request(served_app.url, "POST", "/gradio_api/run/label",
                               label_body(seeded_pairs[4].pair_id, submission=submission))
    assert status != 200 and "already used for another vote (on another pair)" in json.dumps(reply)
    assert "StopIteration" not in json.dumps(reply) and label_rows(served_app) == before


def test_allowed_hosts_follow_host_root_path_and_extra_names():
    names = allowed_hosts("192.168.1.5", "https://lab.example/workbench", ["Proxy.Internal", " "])
    assert names == {"127.0.0.1", "localhost", "::1", "192.168.1.5", "lab.example", "proxy.internal"}
    assert allowed_hosts("0.0.0.0") == {"127.0.0.1", "localhost", "::1"}  # every interface: names must be given


def test_wrong_passwords_are_throttled_per_user_and_address(tmp_path, tiny_policy):
    ctx = AppContext.open(tmp_path / "run", policy=LoadedPolicy("tiny-random-llama", *tiny_policy))
    demo = build_demo(context=ctx)
    port = free_port()
    guard = GuardConfig(max_failures=5, window_s=60, lockout_s=1.0)
    serve(demo, "127.0.0.1", port, auth=[("alice", "s3cret-A")], prevent_thread_lock=True, quiet=True, guard=guard)
    url = f"http://127.0.0.1:{port}/"
    try:
        statuses = [request(url, "POST", "/login", {"username": "alice", "password": f"wrong{i}"}, form=True)
                    for i in range(40)]
        codes = [s for s, _, _ in statuses]
        assert codes[:5] == [400] * 5 and set(codes[5:]) == {429}, codes
        assert int(statuses[-1][1]["retry-after"]) >= 1 and "too many failed logins" in statuses[-1][2]["error"]
        assert request(url, "POST", "/login", {"username": "alice", "password": "s3cret-A"}, form=True)[0] == 429
        time.sleep(1.1)  # the lockout (1 s, doubled per further failure: only 5 failures were counted) is over
        status, headers, _ = request(url, "POST", "/login", {"username": "alice", "password": "s3cret-A"}, form=True)
        assert status == 200 and "access-token" in headers.get("set-cookie", "")
    finally:
        demo.close()
        ctx.close()


def test_sixty_four_concurrent_label_clients_write_each_label_once(served_app, seeded_pairs):
    """64 clients x 3 labels over plain HTTP through the guard, each client's first re-sent: each stored once."""
    store = served_app.ctx.store
    before = label_rows(served_app)

    def annotate(worker: int) -> list[int]:
        ids = []
        for i in range(3):
            pair = seeded_pairs[(worker + i) % len(seeded_pairs)]
            body = {"data": [pair.pair_id, "AB"[i % 2], f"c{worker}", f"c{worker}-{i}"]}
            status, _, reply = request(served_app.url, "POST", "/gradio_api/run/label", body)
            assert status == 200, reply
            ids.append(reply["data"][0]["label_id"])
            if i == 0:  # a re-send after a timeout returns the same label
                again = request(served_app.url, "POST", "/gradio_api/run/label", body)[2]
                assert again["data"][0]["label_id"] == ids[-1]
        return ids

    with ThreadPoolExecutor(64) as pool:
        ids = [i for batch in pool.map(annotate, range(64)) for i in batch]
    assert len(ids) == len(set(ids)) == 192 and label_rows(served_app) == before + 192
    mine = store.connection().execute("SELECT COUNT(DISTINCT submission_id) FROM labels WHERE annotator LIKE 'c%'")
    assert mine.fetchone()[0] == 192


LOCK_HOLDER = ("import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
               "c.execute('BEGIN IMMEDIATE')\nprint('locked', flush=True)\nsys.stdin.readline()\n")


def test_a_store_fault_reaches_the_client_nothing_is_acknowledged_and_reads_go_on(served_app, seeded_pairs):
    """Another process holds the store's write lock past the busy timeout (shortened here from 30 s)."""
    import subprocess
    import sys

    from gradio_client import Client

    store = served_app.ctx.store
    store.busy_timeout_s = 0.3
    store.close()  # connections reopen with the short timeout
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(store.path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    body = label_body(seeded_pairs[5].pair_id)
    try:
        assert holder.stdout.readline() == "locked\n"
        before = label_rows(served_app)
        status, _, reply = request(served_app.url, "POST", "/gradio_api/run/label", body)
        assert status != 200 and "labels cannot be saved: another process has held" in json.dumps(reply)
        assert label_rows(served_app) == before
        assert Client(served_app.url, verbose=False).predict("sec", api_name="/progress")["everyone"] >= 0
    finally:
        holder.communicate("release\n", timeout=30)
        store.busy_timeout_s = 30.0
        store.close()
    status, _, reply = request(served_app.url, "POST", "/gradio_api/run/label", body)  # the same click, re-sent
    assert status == 200 and label_rows(served_app) == before + 1
