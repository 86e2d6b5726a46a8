"""App fixtures: an AppContext over a temporary run with tiny-random-llama, and the real app served on 127.0.0.1."""

import os
import socket

import pytest
import torch

# One intra-op thread in the app tests and the jobs they start: a tiny model gains nothing from two, and on a
# shared 2-core machine spinning OpenMP workers made a 48-token sample take 2-40 s instead of 0.5 s.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

from apps.context import DEFAULT_REWARD_BACKBONE, AppContext, LoadedPolicy
from apps.workbench_app import build_demo, serve


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ctx(tmp_path, tiny_policy):
    context = AppContext.open(tmp_path / "run", policy=LoadedPolicy("tiny-random-llama", *tiny_policy),
                              label_target=50)
    yield context
    context.close()


class ServedApp:
    def __init__(self, demo, url):
        self.demo, self.url, self.ctx = demo, url, demo.app_context


def start_app(run_dir, tiny_policy, auth=None, reward_backbone: str = DEFAULT_REWARD_BACKBONE) -> ServedApp:
    context = AppContext.open(run_dir, policy=LoadedPolicy("tiny-random-llama", *tiny_policy), label_target=50,
                              reward_backbone=reward_backbone)
    demo = build_demo(context=context)
    port = free_port()
    serve(demo, "127.0.0.1", port, auth=auth, prevent_thread_lock=True, quiet=True)
    return ServedApp(demo, f"http://127.0.0.1:{port}/")


def stop_app(app: ServedApp) -> None:
    app.demo.close()
    app.ctx.close()


@pytest.fixture(scope="module")
def served_app(tmp_path_factory, tiny_policy):
    app = start_app(tmp_path_factory.mktemp("served") / "run", tiny_policy)
    yield app
    stop_app(app)


@pytest.fixture(scope="module")
def seeded_pairs(served_app):
    """20 pairs in the served app's store (generated through the handlers, without the HTTP round trip)."""
    from apps import ranking

    pairs = []
    while len(pairs) < 20:
        pairs += ranking.generate_pairs(served_app.ctx, ranking.next_prompts(served_app.ctx, 10))
    return pairs[:20]
