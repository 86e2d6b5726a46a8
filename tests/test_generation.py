import pytest
import torch

from workbench.generation import (
    SamplingConfig,
    completion_logprobs,
    format_prompt,
    generate,
    perplexity,
    text_logprobs,
)

PROMPTS = ["Describe a quiet library in one sentence.", "Give one tip for a long flight.",
           "Explain what a rainbow is.", "Write a thank-you note to a neighbour."]


def test_same_seed_same_samples_other_seed_other_samples(tiny_policy):
    model, tokenizer = tiny_policy
    config = SamplingConfig(max_new_tokens=12, temperature=1.0, seed=7)
    first = generate(model, tokenizer, PROMPTS, config)
    again = generate(model, tokenizer, PROMPTS, config)
    other = generate(model, tokenizer, PROMPTS, SamplingConfig(max_new_tokens=12, temperature=1.0, seed=8))
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.token_ids for c in first] != [c.token_ids for c in other]


def test_greedy_batched_equals_unbatched_on_real_model(smollm2):
    model, tokenizer = smollm2
    batched = generate(model, tokenizer, PROMPTS, SamplingConfig(max_new_tokens=16, temperature=0, batch_size=4))
    single = generate(model, tokenizer, PROMPTS, SamplingConfig(max_new_tokens=16, temperature=0, batch_size=1))
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    assert all(c.text for c in batched)


def test_logprobs_match_a_forward_pass(smollm2):
    model, tokenizer = smollm2
    completions = generate(model, tokenizer, PROMPTS, SamplingConfig(max_new_tokens=20, temperature=1.0, seed=3))
    forward = completion_logprobs(model, tokenizer, PROMPTS, [c.token_ids for c in completions])
    for completion, reference in zip(completions, forward):
        assert len(completion.logprobs) == len(completion.token_ids) == len(reference)
        assert torch.allclose(torch.tensor(completion.logprobs), torch.tensor(reference), atol=1e-3)
        assert all(lp <= 0 for lp in completion.logprobs)


def test_generation_stops_at_eos_and_strips_special_tokens(smollm2):
    model, tokenizer = smollm2
    completions = generate(model, tokenizer, ["Say hello in two words."], SamplingConfig(max_new_tokens=40, temperature=0))
    completion = completions[0]
    assert completion.finished and completion.token_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in completion.token_ids[:-1]
    assert "<|im_end|>" not in completion.text


def test_chat_template_is_applied_and_messages_accepted(tiny_policy):
    model, tokenizer = tiny_policy
    text = format_prompt(tokenizer, "Hi there")
    assert "<|im_start|>user\nHi there<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    assert "Be brief." in format_prompt(tokenizer, messages)
    assert len(generate(model, tokenizer, [messages], SamplingConfig(max_new_tokens=4))) == 1


@pytest.mark.parametrize("kwargs", [{"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"batch_size": 0}])
def test_bad_sampling_settings_are_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SamplingConfig(**kwargs)


def test_a_single_string_is_rejected(tiny_policy):
    with pytest.raises(TypeError, match="list of prompts"):
        generate(*tiny_policy, "just one string")


def test_perplexity_prefers_fluent_text(smollm2):
    model, tokenizer = smollm2
    fluent = perplexity(text_logprobs(model, tokenizer, "The cat sat on the mat and looked out of the window.")[1])
    shuffled = perplexity(text_logprobs(model, tokenizer, "window the mat cat of out looked sat and the on The.")[1])
    tokens, logprobs = text_logprobs(model, tokenizer, "Hello world, how are you?")
    assert len(tokens) == len(logprobs) > 3
    assert 1 < fluent < shuffled
