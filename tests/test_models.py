import json
import logging
import os
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workbench import models
from workbench.generation import SamplingConfig, generate
from workbench.models import ModelNotFoundError, load_policy, load_reward_backbone, resolve_model


def test_default_policy_resolves_to_offline_copy_when_hub_offline():
    resolved = resolve_model("smollm2-135m-instruct")
    assert resolved.source == "offline-copy"
    folder = Path(resolved.path)
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    assert json.loads((folder / "workbench.json").read_text())["name"] == "smollm2-135m-instruct"


def test_default_policy_writes_coherent_english(smollm2):
    model, tokenizer = smollm2
    assert 130e6 < model.num_parameters() < 140e6
    prompts = ["Write a one-sentence review of a movie you loved.", "Give one tip for cooking rice."]
    completions = generate(model, tokenizer, prompts, SamplingConfig(max_new_tokens=32, temperature=0))
    for completion in completions:
        words = completion.text.split()
        assert len(words) >= 5, completion.text
        alphabetic = [w for w in words if w.strip(".,!?;:'\"()-").isascii() and w.strip(".,!?;:'\"()-").isalpha()]
        assert len(alphabetic) / len(words) > 0.8, completion.text
    common = {"the", "a", "and", "of", "to", "is", "i", "it", "with", "for", "in", "was", "you"}
    assert common & {w.lower().strip(".,!?") for c in completions for w in c.text.split()}


def test_cached_copy_loads_fast_and_is_not_rebuilt():
    manifest = Path(resolve_model("smollm2-135m-instruct").path) / "workbench.json"
    before = manifest.stat().st_mtime_ns
    started = time.perf_counter()
    load_policy("smollm2-135m-instruct")
    elapsed = time.perf_counter() - started
    assert manifest.stat().st_mtime_ns == before  # the conversion did not run again
    assert elapsed < 10, f"a cached load took {elapsed:.1f} s"


@pytest.mark.slow
def test_gguf_conversion_from_scratch_matches_cached_copy(tmp_path, monkeypatch):
    """Convert the wheel's GGUF in an empty WORKBENCH_HOME (reusing the GGUF already on disk, no download)."""
    gguf = models.find_smollm2_gguf()
    cached = Path(resolve_model("smollm2-135m-instruct").path)
    tiny_reference = Path(resolve_model("tiny-random-llama").path)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    os.symlink(gguf, tmp_path / "downloads" / models.SMOLLM2_GGUF)
    built = models.prepare_offline_copy("smollm2-135m-instruct")
    assert built == tmp_path / "models" / "smollm2-135m-instruct"
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    fresh, reference = load_file(built / "model.safetensors"), load_file(cached / "model.safetensors")
    assert fresh.keys() == reference.keys()
    assert all(torch.equal(fresh[k], reference[k]) for k in fresh)
    # the tiny test model is built from a fixed seed: identical on every machine
    tiny = models.prepare_offline_copy("tiny-random-llama")
    a, b = load_file(tiny / "model.safetensors"), load_file(tiny_reference / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_model_error_names_what_was_tried():
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("no-such-model")
    message = str(info.value)
    assert "no-such-model" in message and "smollm2-135m-instruct" in message and "Fix" in message


def test_missing_local_path_is_reported_as_a_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a directory"):
        resolve_model(str(tmp_path / "missing"))


def test_hub_id_offline_without_cache_gives_clear_error():
    with pytest.raises(ModelNotFoundError) as info:
        load_policy("someone/not-cached-model")
    assert "HF_HUB_OFFLINE" in str(info.value) and "someone/not-cached-model" in str(info.value)


def test_local_directory_loads(tmp_path, tiny_policy):
    model, tokenizer = tiny_policy
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert resolve_model(str(tmp_path)).source == "local"
    reloaded, _ = load_policy(str(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))


def test_reward_backbone_has_eos_and_scalar_head():
    model, tokenizer = load_reward_backbone("minilm-l6")
    assert tokenizer.eos_token == tokenizer.sep_token
    batch = tokenizer(["a fine day", "a terrible day"], return_tensors="pt", padding=True)
    with torch.no_grad():
        scores = model(**batch).logits
    assert scores.shape == (2, 1)
    assert model.config.eos_token_id == tokenizer.eos_token_id  # else the Trainer "aligns" it, with a warning


def test_new_score_head_is_not_reported_but_other_load_problems_are(capfd):
    load_reward_backbone("tiny-random-llama")  # its score head is new: transformers' LOAD REPORT lists it MISSING
    assert "LOAD REPORT" not in capfd.readouterr().err

    def report(*rows):
        table = "Key | Status | \n---+---+-\n" + "".join(f"{key} | \x1b[31m{status}\x1b[0m | \n" for key, status in rows)
        message = f"LlamaForSequenceClassification LOAD REPORT from: x\n{table}\nNotes:\n- MISSING: newly initialized."
        return logging.LogRecord("transformers.modeling_utils", logging.WARNING, __file__, 0, message, None, None)

    quiet = models.NewScoreHeadReport()
    assert not quiet.filter(report(("score.weight", "MISSING"))) and not quiet.filter(report(("classifier.bias", "MISSING")))
    assert quiet.filter(report(("score.weight", "MISSING"), ("model.norm.weight", "MISSING")))
    assert quiet.filter(report(("score.weight", "MISMATCH")))
    assert quiet.filter(logging.LogRecord("transformers", logging.WARNING, __file__, 0, "another warning", None, None))


def test_trl_configs_do_not_warn_about_the_renamed_gradient_checkpointing(tmp_path, tiny_policy):
    from trl import RewardConfig

    with warnings.catch_warnings(record=True) as caught:
        models.load_tokenizer("tiny-random-llama")  # as every trainer does before building TRL's config
        RewardConfig(output_dir=str(tmp_path), gradient_checkpointing=False, bf16=False, use_cpu=True, report_to="none")
        assert not tiny_policy[0].is_gradient_checkpointing
    assert not [w for w in caught if "gradient_checkpointing" in str(w.message)], [str(w.message) for w in caught]


def test_bf16_loading(tiny_policy):
    model, _ = load_policy("tiny-random-llama", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_policy("tiny-random-llama", dtype="float8")
