"""Handlers directly, then the real app on 127.0.0.1 through gradio_client."""

import socket
import urllib.request

import pytest
from gradio_client import Client

from apps.handlers import InputError, LoadedPolicy, sample_completions
from apps.workbench_app import build_demo


@pytest.fixture(scope="module")
def policy(tiny_policy):
    return LoadedPolicy("tiny-random-llama", *tiny_policy)


def test_sample_completions_returns_rows(policy):
    rows = sample_completions(policy, "Tell me a fact.", n=3, temperature=0.7, max_new_tokens=5, seed=1)
    assert [r["sample"] for r in rows] == [1, 2, 3]
    assert all(1 <= r["tokens"] <= 5 and r["mean_logprob"] <= 0 for r in rows)
    assert rows == sample_completions(policy, "Tell me a fact.", n=3, temperature=0.7, max_new_tokens=5, seed=1)


@pytest.mark.parametrize("kwargs, match", [
    ({"prompt": "  "}, "Write a prompt"),
    ({"prompt": "x" * 2001}, "limit is 2000"),
    ({"n": 9}, "between 1 and 8"),
    ({"temperature": 3}, "Temperature"),
    ({"max_new_tokens": 0}, "Max new tokens"),
    ({"seed": -1}, "Seed"),
])
def test_bad_requests_are_refused(policy, kwargs, match):
    request = {"prompt": "hi", "n": 1, "temperature": 0.7, "max_new_tokens": 4, "seed": 0, **kwargs}
    with pytest.raises(InputError, match=match):
        sample_completions(policy, **request)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served_app():
    port = _free_port()
    demo = build_demo("tiny-random-llama")
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name="127.0.0.1", server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                enable_monitoring=False, show_error=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_generate_through_the_api(served_app):
    client = Client(served_app, verbose=False)
    table = client.predict("Describe a park.", 2, 0.7, 8, 3, api_name="/generate")
    assert [row[0] for row in table["data"]] == [1, 2]
    assert all(isinstance(row[1], str) for row in table["data"])


def test_invalid_request_is_an_error_not_a_crash(served_app):
    client = Client(served_app, verbose=False)
    with pytest.raises(Exception, match="Write a prompt"):
        client.predict("", 1, 0.7, 8, 0, api_name="/generate")
    assert client.predict("ok", 1, 0.7, 8, 0, api_name="/generate")["data"]  # still serving


def test_page_is_served_on_loopback(served_app):
    html = urllib.request.urlopen(served_app, timeout=10).read().decode()
    assert "RLHF workbench" in html
