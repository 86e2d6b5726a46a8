"""Answer shaping: complete, short replies in every stage, with log-probs over exactly the sampled tokens."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.data import builtin_prompts
from workbench.evaluation.policy_eval import sequence_kl
from workbench.generation import (AnswerShaping, SamplingConfig, SentenceStop, completion_logprobs, format_prompt,
                                  generate, generate_stream)
from workbench.preferences import PairConfig, PreferenceStore, export_preferences, make_pairs
from workbench.preferences.pairs import side_finished
from workbench.rl import RLConfig, train_policy
from workbench.runs import RunDir, config_from_dict

sys.path.insert(0, str(Path(__file__).parent))


@pytest.mark.parametrize("text,ends", [
    ("Drink water before bed and keep the room cool.", True),
    ("What a lovely, quiet place to spend a rainy afternoon!", True),
    ('She said the view was "worth every single step of the climb."', True),
    ("Is there anything better than fresh bread in the morning?", True),
    ("Here are a few things you can try tonight: 1.", False),  # a list number, not an end
    ("The room was warm and the staff were kind, e.g.", False),
    ("The room was warm and the staff were kind and", False),
    ("I was not sure what to think of it...", False),  # an ellipsis trails off
    ("Great question.", False),  # too short to be the whole answer (min_words 8)
])
def test_sentence_end_rule(tiny_policy, text, ends):
    _, tokenizer = tiny_policy
    stop = SentenceStop(tokenizer, [tokenizer.eos_token_id], AnswerShaping())
    assert stop.is_sentence_end(text) is ends


def test_cut_keeps_tokens_up_to_eos_or_the_sentence_end_and_never_adds_one(tiny_policy):
    _, tokenizer = tiny_policy
    eos = tokenizer.eos_token_id
    stop = SentenceStop(tokenizer, [eos], AnswerShaping(min_words=3))
    first = tokenizer("Sleep in a cool, dark room.", add_special_tokens=False)["input_ids"]
    rest = tokenizer(" Then read a book", add_special_tokens=False)["input_ids"]
    assert stop.cut(first + rest + [eos]) == (first, "sentence")
    assert stop.cut(rest + [eos, eos]) == (rest + [eos], "eos")
    assert stop.cut(rest) == (rest, "length")
    assert stop.is_complete(first) and stop.is_complete(rest + [eos]) and not stop.is_complete(rest)
    off = SentenceStop(tokenizer, [eos], AnswerShaping.off())
    assert off.cut(first + rest) == (first + rest, "length")  # raw sampling: only EOS or the budget end a reply


def test_system_prompt_leads_the_chat_and_an_existing_one_is_kept(tiny_policy):
    _, tokenizer = tiny_policy
    text = format_prompt(tokenizer, "Hi there", system_prompt="Be brief.")
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>") and "user\nHi there" in text
    own = [{"role": "system", "content": "Talk like a pirate."}, {"role": "user", "content": "Hi"}]
    assert "Be brief." not in format_prompt(tokenizer, own, system_prompt="Be brief.")
    assert "SmolLM" in format_prompt(tokenizer, "Hi there", system_prompt=AnswerShaping.off().active_system_prompt)


def test_shaped_replies_of_the_default_model_end_complete_or_are_flagged_cut(smollm2):
    model, tokenizer = smollm2
    prompts = [r.prompt for r in builtin_prompts("heldout")[:6]]
    config = SamplingConfig(max_new_tokens=64, temperature=1.0, seed=1, batch_size=6)
    stop = SentenceStop(tokenizer, [tokenizer.eos_token_id], config.shaping)
    for completion in generate(model, tokenizer, prompts, config):
        assert completion.finished == (completion.stop_reason != "length")
        if completion.stop_reason == "eos":
            assert completion.token_ids[-1] == tokenizer.eos_token_id
        elif completion.stop_reason == "sentence":
            assert stop.is_sentence_end(completion.text), completion.text
            assert tokenizer.eos_token_id not in completion.token_ids  # nothing was added after the stop
        else:
            assert len(completion.token_ids) == 64  # cut only at the budget
    raw = generate(model, tokenizer, prompts, SamplingConfig(max_new_tokens=64, temperature=1.0, seed=1,
                                                             batch_size=6, shaping=AnswerShaping.off()))
    assert all(c.stop_reason in ("eos", "length") for c in raw)


def test_shaped_logprobs_equal_teacher_forcing_and_self_kl_is_zero(smollm2):
    model, tokenizer = smollm2
    prompts = [r.prompt for r in builtin_prompts("heldout")[:4]]
    config = SamplingConfig(max_new_tokens=48, temperature=1.0, top_p=1.0, top_k=0, seed=5, batch_size=4)
    completions = generate(model, tokenizer, prompts, config)
    assert any(c.stop_reason == "sentence" for c in completions)  # the shaping stop was exercised
    system_prompt = config.shaping.active_system_prompt
    forced = completion_logprobs(model, tokenizer, prompts, [c.token_ids for c in completions],
                                 system_prompt=system_prompt)
    for completion, reference in zip(completions, forced):
        assert len(reference) == len(completion.token_ids)
        assert torch.allclose(torch.tensor(completion.logprobs), torch.tensor(reference), atol=1e-3)
    kl = sequence_kl(model, model, tokenizer, prompts, [c.token_ids for c in completions], 1.0, system_prompt)
    assert np.abs(kl).max() < 1e-4


def test_stream_ends_where_generate_ends_under_shaping(tiny_policy, monkeypatch):
    model, tokenizer = tiny_policy
    # every token may end a sentence once a reply has 3 words: the tiny random model then stops often
    monkeypatch.setattr(SentenceStop, "is_sentence_end", lambda self, text: len(text.split()) >= 3)
    monkeypatch.setattr("workbench.shaping._sentence_end_tokens", lambda tok: frozenset(range(len(tok))))
    config = SamplingConfig(max_new_tokens=24, temperature=1.0, seed=2, batch_size=2)
    whole = generate(model, tokenizer, ["Say something.", "Say more."], config)
    assert {c.stop_reason for c in whole} <= {"sentence", "eos"}
    last = list(generate_stream(model, tokenizer, ["Say something.", "Say more."], config))[-1]
    assert last.completions == whole


def test_pairs_record_shaping_and_each_sides_finish(tiny_policy, tmp_path):
    records = builtin_prompts("train")[:3]
    pairs = make_pairs(records, tiny_policy, PairConfig(max_new_tokens=6, seed=0))
    assert pairs and all(p.generation["shaping"] == AnswerShaping().to_dict() for p in pairs)
    assert all(isinstance(v, bool) for p in pairs for v in side_finished(p))
    with PreferenceStore(tmp_path / "prefs.sqlite") as store:
        store.add_pairs(pairs)
        assert store.get_pair(pairs[0].pair_id).generation == pairs[0].generation


def test_an_old_store_without_shaping_metadata_still_loads_exports_and_trains(tiny_policy, tmp_path):
    from workbench.reward import RewardModelConfig, train_reward_model

    pairs = make_pairs(builtin_prompts("train")[:12], tiny_policy, PairConfig(max_new_tokens=6, seed=0))
    old = [type(p)(**{**p.__dict__, "generation": {"seed": 0, "temperature": 1.0, "max_new_tokens": 48}})
           for p in pairs]  # as round 1 stored them
    with PreferenceStore(tmp_path / "prefs.sqlite") as store:
        store.add_pairs(old)
        for number, pair in enumerate(old):
            store.add_label(pair.pair_id, "AB"[number % 2], "old", f"old-{number}")
        assert side_finished(store.get_pair(old[0].pair_id)) == (None, None)
        dataset, report = export_preferences(store)
    assert report["n_rows"] == len(old)
    result = train_reward_model(dataset.to_list(), RewardModelConfig(backbone="tiny-random-llama", epochs=1,
                                                                     batch_size=4, save_checkpoints=False,
                                                                     oracle="positive"), tmp_path)
    assert result.model_dir.exists()
    assert AnswerShaping.from_dict(None) == AnswerShaping.off()  # settings absent: the pair was sampled raw


def test_configs_carry_shaping_through_json(tmp_path):
    config = config_from_dict(RLConfig, {"reward": "x", "shaping": {"min_words": 5, "system_prompt": "Short."}})
    assert config.shaping == AnswerShaping(min_words=5, system_prompt="Short.")
    RunDir(tmp_path).save_config("rl", config)
    assert RunDir(tmp_path).load_config("rl", RLConfig).shaping == config.shaping


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    from test_reward import sentiment_rows
    from workbench.reward import RewardModelConfig, train_reward_model

    config = RewardModelConfig(backbone="tiny-random-llama", epochs=1, batch_size=8, save_checkpoints=False,
                               oracle="positive")
    return train_reward_model(sentiment_rows(16), config, tmp_path_factory.mktemp("rm")).model_dir


@pytest.mark.parametrize("algo", ["rloo", "grpo"])
def test_rl_samples_with_the_same_shaping_and_still_trains(algo, tiny_rm, tmp_path, monkeypatch):
    """The tiny random model rarely samples '.', so any 3-word reply counts as a sentence end here: every RL
    sample then stops at 3 words (or EOS), and the policy still moves."""
    from workbench.rl.train import build_trainer

    monkeypatch.setattr(SentenceStop, "is_sentence_end", lambda self, text: len(text.split()) >= 3)
    monkeypatch.setattr("workbench.shaping._sentence_end_tokens", lambda tok: frozenset(range(len(tok))))
    config = RLConfig(policy="tiny-random-llama", reward=str(tiny_rm), algo=algo, steps=2, max_new_tokens=12,
                      save_steps=100, learning_rate=1e-3, oracle="positive")
    trainer = build_trainer(config, RunDir(tmp_path))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
    samples = [json.loads(line) for line in (tmp_path / "rl" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["finished"] for s in samples)
    assert all(len(s["completion"].split()) <= 3 for s in samples)
    assert trainer.state.log_history[0]["completions/max_length"] < 12  # rows stopped before the budget


def test_rl_sentence_stopping_patch_restores_what_was_there(tiny_policy):
    """The RL trainers' stop is an instance attribute on the model for one call: a generate someone else set (e.g. a
    recording wrapper) is kept afterwards, and none is left behind otherwise."""
    from workbench.rl.train import _sentence_stopping

    model, tokenizer = tiny_policy
    stop = SentenceStop(tokenizer, [tokenizer.eos_token_id], AnswerShaping())
    calls, original = [], model.generate
    inputs = tokenizer(["hi"], return_tensors="pt")

    def recording(*args, **kwargs):
        calls.append(kwargs.get("stopping_criteria"))
        return original(*args, **kwargs)

    model.generate = recording
    try:
        with _sentence_stopping(model, stop):
            model.generate(**inputs, max_new_tokens=2)
        assert model.generate is recording and calls[0] is not None  # the stop reached generate
    finally:
        del model.generate
    with _sentence_stopping(model, stop):
        model.generate(**inputs, max_new_tokens=2)
    assert "generate" not in vars(model)
