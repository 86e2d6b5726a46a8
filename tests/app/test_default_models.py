"""One smoke test on the real defaults (smollm2-135m-instruct + minilm-l6): the app starts and makes a pair."""

from gradio_client import Client

from apps.context import AppContext
from apps.workbench_app import build_demo, serve
from tests.app.conftest import free_port


def test_app_starts_on_the_default_models_and_generates_a_pair(tmp_path):
    context = AppContext.open(tmp_path / "run")  # defaults: smollm2-135m-instruct policy, minilm-l6 reward backbone
    demo = build_demo(context=context)
    port = free_port()
    serve(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    try:
        pair = Client(f"http://127.0.0.1:{port}/", verbose=False).predict("alice", api_name="/next_pair")
        assert pair["completion_a"] and pair["completion_b"] and pair["completion_a"] != pair["completion_b"]
        assert context.policy.name == "smollm2-135m-instruct" and context.reward_backbone == "minilm-l6"
        assert context.store.count_pairs() >= 1
    finally:
        demo.close()
        context.close()
