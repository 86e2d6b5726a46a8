"""Shared fixtures. Tests never reach the Hugging Face Hub: HF_HUB_OFFLINE is forced here."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from workbench.models import load_policy  # noqa: E402


@pytest.fixture(scope="session")
def tiny_policy():
    """(model, tokenizer) of tiny-random-llama: fast, deterministic, gibberish."""
    return load_policy("tiny-random-llama")


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the real default policy, from its offline copy."""
    return load_policy("smollm2-135m-instruct")
