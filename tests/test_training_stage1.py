import json

import pytest
import torch

from workbench.data import PromptFileError
from workbench.models import load_policy
from workbench.pretrain import PretrainConfig, pretrain
from workbench.runs import RunDir
from workbench.sft import SFTRunConfig, load_sft_rows, supervised_finetune


def test_pretraining_from_scratch_lowers_the_loss(tmp_path):
    config = PretrainConfig(max_steps=12, batch_size=8, seq_len=64, logging_steps=1, warmup_steps=2, sample_tokens=8)
    result = pretrain(config, tmp_path)
    assert result.model_dir.joinpath("model.safetensors").exists()
    assert result.final_loss < result.initial_loss - 0.5  # starts near ln(2048) = 7.6 and must fall
    logged = RunDir(tmp_path).read_metrics("pretrain")
    assert [r["step"] for r in logged if "pretrain/loss" in r] == list(range(1, 13))
    samples = json.loads((tmp_path / "pretrain" / "samples.json").read_text())
    assert len(samples["before"]) == len(samples["after"]) == len(config.sample_prompts)
    assert json.loads((tmp_path / "pretrain" / "config.json").read_text())["max_steps"] == 12
    model, tokenizer = load_policy(str(result.model_dir))  # the saved model is a normal checkpoint
    assert len(tokenizer) <= config.vocab_size and model.num_parameters() == result.n_parameters


def test_sft_changes_the_weights(tmp_path):
    data = tmp_path / "sft.jsonl"
    rows = [{"prompt": f"Question {i}?", "completion": f"Answer number {i}."} for i in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before, _ = load_policy("tiny-random-llama")
    summary = supervised_finetune(SFTRunConfig(data=str(data), model="tiny-random-llama", max_steps=3,
                                               learning_rate=1e-3, logging_steps=1), tmp_path)
    after, _ = load_policy(summary["model_dir"])
    assert summary["steps"] == 3 and summary["n_rows"] == 6
    changed = [name for name, p in after.named_parameters() if not torch.equal(p, before.state_dict()[name])]
    assert changed, "no weight changed during SFT"
    assert RunDir(tmp_path).read_metrics("sft")


@pytest.mark.parametrize("rows, match", [
    ([{"question": "x"}], r"row 1 has columns \['question'\]"),
    ([{"prompt": "x", "completion": "y"}, {"prompt": "x", "completion": ""}], r"row 2: field 'completion'"),
])
def test_sft_rows_are_validated(tmp_path, rows, match):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PromptFileError, match=match):
        load_sft_rows(str(path))
