import copy
import threading
import time

import pytest
import torch

from workbench.generation import (
    AnswerShaping,
    SamplingConfig,
    SentenceStop,
    _RowStreamer,
    completion_logprobs,
    format_prompt,
    generate,
    generate_stream,
    perplexity,
    prepack_for_decoding,
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
    config = SamplingConfig(max_new_tokens=20, temperature=1.0, seed=3)
    completions = generate(model, tokenizer, PROMPTS, config)
    forward = completion_logprobs(model, tokenizer, PROMPTS, [c.token_ids for c in completions],
                                  system_prompt=config.shaping.active_system_prompt)  # the prompt they were sampled with
    for completion, reference in zip(completions, forward):
        assert len(completion.logprobs) == len(completion.token_ids) == len(reference)
        assert torch.allclose(torch.tensor(completion.logprobs), torch.tensor(reference), atol=1e-3)
        assert all(lp <= 0 for lp in completion.logprobs)


def test_generation_stops_at_eos_and_strips_special_tokens(smollm2):
    model, tokenizer = smollm2
    completions = generate(model, tokenizer, ["Say hello in two words."],
                           SamplingConfig(max_new_tokens=40, temperature=0, shaping=AnswerShaping.off()))
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


def test_stream_grows_every_row_then_ends_with_exactly_what_generate_returns(tiny_policy):
    model, tokenizer = tiny_policy
    config = SamplingConfig(max_new_tokens=12, temperature=1.0, seed=3, batch_size=2)
    whole = generate(model, tokenizer, PROMPTS[:2], config)
    updates = list(generate_stream(model, tokenizer, PROMPTS[:2], config))
    partial, last = updates[:-1], updates[-1]
    assert len(partial) >= 2 and all(u.completions is None and len(u.texts) == 2 for u in partial)
    assert partial[0].texts != partial[-1].texts  # the texts grew while decoding
    assert last.completions == whole and last.texts == [c.text for c in whole]


def test_streamer_ignores_the_prompt_and_stops_each_row_at_its_eos(tiny_policy):
    _, tokenizer = tiny_policy
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    word = tokenizer("hello", add_special_tokens=False)["input_ids"]
    published = []
    streamer = _RowStreamer(tokenizer, 2, SentenceStop(tokenizer, [eos], AnswerShaping.off()), published.append)
    streamer.put(torch.tensor([word * 3, word * 3]))  # (B, T): the prompt, as generate() sends it first
    assert published == []
    for step in ([word[0], word[0]], [eos, word[0]], [pad, word[0]]):  # row 0 ends, then gets padding
        streamer.put(torch.tensor(step))
    assert streamer.ids == [[word[0], eos], [word[0]] * 3] and streamer.finished == [True, False]
    assert published[-1].texts == [tokenizer.decode([word[0]]).strip(), tokenizer.decode([word[0]] * 3).strip()]


def test_closing_a_stream_stops_decoding_and_frees_its_lock(tiny_policy):
    model, tokenizer = tiny_policy
    lock = threading.Lock()
    stream = generate_stream(model, tokenizer, PROMPTS[:2], SamplingConfig(max_new_tokens=2000, batch_size=2),
                             lock=lock)
    first = next(stream)
    assert lock.locked() and first.completions is None
    started = time.perf_counter()
    stream.close()  # e.g. the browser tab was closed
    assert not lock.locked() and time.perf_counter() - started < 5
    with pytest.raises(ValueError, match="one batch"):
        next(generate_stream(model, tokenizer, PROMPTS, SamplingConfig(batch_size=2)))


def test_prepacked_linears_compute_the_same_function(tiny_policy):
    model, tokenizer = tiny_policy
    packed = copy.deepcopy(model)
    assert prepack_for_decoding(packed, rows=2) == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert set(packed.state_dict()) == set(model.state_dict())  # checkpoints are unchanged
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.inference_mode():
        for inputs in (ids, ids[:, :1]):  # the prefill (plain weights) and a decoding step (packed weights)
            torch.testing.assert_close(packed(inputs).logits, model(inputs).logits, rtol=1e-4, atol=1e-5)
    config = SamplingConfig(max_new_tokens=16, temperature=0, batch_size=2)
    assert [c.token_ids for c in generate(packed, tokenizer, PROMPTS[:2], config)] == \
        [c.token_ids for c in generate(model, tokenizer, PROMPTS[:2], config)]
