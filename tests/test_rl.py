"""Stage 3: TRL's RLOO / GRPO / DPO on the tiny models, the reward plumbing, resume after kill -9."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.models import load_reward_backbone, resolve_model
from workbench.reward import RewardModel, RewardModelConfig, train_reward_model
from workbench.rl import RLConfig, train_policy
from workbench.rl.rewards import GoldRewardLogger, eos_penalty, load_reward_classifier, reward_chat_template
from workbench.rl.train import _common_args, build_trainer, dpo_rows, snapshot_dirs
from workbench.runs import RunDir

sys.path.insert(0, str(Path(__file__).parent))
from test_reward import sentiment_rows  # noqa: E402
from kill9 import kill_after_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory) -> Path:
    """A reward model on the tiny Llama backbone (trained a few steps; quality is irrelevant here)."""
    out = tmp_path_factory.mktemp("rm")
    config = RewardModelConfig(backbone="tiny-random-llama", epochs=1, batch_size=8, save_checkpoints=False,
                               oracle="positive")
    return train_reward_model(sentiment_rows(24), config, out).model_dir


def tiny_config(reward: Path, **overrides) -> RLConfig:
    values = dict(policy="tiny-random-llama", reward=str(reward), steps=2, max_new_tokens=8, save_steps=100,
                  learning_rate=1e-3, oracle="positive")
    return RLConfig(**{**values, **overrides})


@pytest.mark.parametrize("algo", ["rloo", "grpo", "dpo"])
def test_each_algorithm_moves_the_policy_and_never_the_reference(algo, tiny_rm, tmp_path):
    config = tiny_config(tiny_rm, algo=algo)
    trainer = build_trainer(config, RunDir(tmp_path), preference_rows=sentiment_rows(16))
    policy_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    reference = getattr(trainer, "ref_model", None)
    assert reference is not None, f"{algo}: beta > 0 must give a frozen reference model"
    reference_before = {k: v.clone() for k, v in reference.state_dict().items()}
    trainer.train()
    assert trainer.state.global_step == 2
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, policy_before[k])]
    assert changed, f"{algo}: no policy weight changed"
    assert all(torch.equal(v, reference_before[k]) for k, v in reference.state_dict().items()), \
        f"{algo}: the reference model moved"
    rows = RunDir(tmp_path).read_metrics("rl")
    assert [r["step"] for r in rows if f"{algo}/loss" in r] == [1, 2]


def test_train_policy_writes_policy_samples_and_gold_metrics(tiny_rm, tmp_path):
    result = train_policy(tiny_config(tiny_rm), tmp_path)
    assert result.global_step == 2
    manifest = json.loads((result.policy_dir / "workbench_policy.json").read_text())
    assert manifest["algo"] == "rloo" and manifest["steps"] == 2
    samples = [json.loads(line) for line in (tmp_path / "rl" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 8 and {s["step"] for s in samples} == {1, 2}  # 2 prompts x 4 completions per step
    rows = RunDir(tmp_path).read_metrics("rl")
    assert all("rloo/rewards/gold/mean" in r and "rloo/kl" in r for r in rows if "rloo/loss" in r)
    with pytest.raises(FileExistsError, match="--resume"):
        train_policy(tiny_config(tiny_rm), tmp_path)
    with pytest.raises(ValueError, match="steps must stay 2"):  # a resumed schedule would run at learning rate 0
        train_policy(tiny_config(tiny_rm, steps=5, resume=True), tmp_path)


@pytest.mark.parametrize("algo", ["rloo", "grpo"])
@pytest.mark.parametrize("bf16", [True, False])
def test_completions_are_sampled_under_the_trainers_autocast(algo, bf16, tiny_rm, tmp_path):
    """TRL samples outside autocast; the workbench samples in the precision it then scores the samples in."""
    trainer = build_trainer(tiny_config(tiny_rm, algo=algo, steps=1, bf16=bf16), RunDir(tmp_path))
    model, seen = trainer.model, []
    generate = model.generate

    def recording_generate(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return generate(*args, **kwargs)

    model.generate = recording_generate
    trainer.train()
    assert seen and all(flag == bf16 for flag in seen), f"{algo}, bf16={bf16}: generate saw autocast {seen}"
    assert type(trainer).__name__ == {"rloo": "RLOOTrainer", "grpo": "GRPOTrainer"}[algo]


def test_lora_run_saves_a_merged_plain_model(tiny_rm, tmp_path):
    result = train_policy(tiny_config(tiny_rm, lora=True, lora_learning_rate=1e-2), tmp_path)
    assert not (result.policy_dir / "adapter_config.json").exists()
    from workbench.models import load_policy

    tuned, _ = load_policy(str(result.policy_dir))
    base, _ = load_policy("tiny-random-llama")
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), base.state_dict().values()))


@pytest.mark.parametrize("lora", [False, True])
def test_snapshots_are_policies_between_the_base_and_the_final_one(lora, tiny_rm, tmp_path):
    from workbench.evaluation.report import intermediate_policies, load_checkpoint_policy
    from workbench.models import load_policy

    config = tiny_config(tiny_rm, steps=3, save_steps=2, snapshot_steps=(1, 3), lora=lora, lora_learning_rate=1e-2)
    result = train_policy(config, tmp_path)
    assert [p.name for p in snapshot_dirs(tmp_path / "rl")] == ["step-1", "step-3"]
    assert not list((tmp_path / "rl" / "snapshots").glob(".*")), "a partial snapshot was left behind"
    # the evaluation's points before the final policy: snapshots and checkpoints by step, the last step left out
    points = intermediate_policies(result.policy_dir)
    assert [name for name, _ in points] == ["step-1", "checkpoint-2"]
    weights = lambda model: list(model.state_dict().values())  # noqa: E731
    base = weights(load_policy("tiny-random-llama")[0])
    step1 = weights(load_checkpoint_policy(points[0][1], "tiny-random-llama"))
    step3 = weights(load_checkpoint_policy(snapshot_dirs(tmp_path / "rl")[1], "tiny-random-llama"))
    final = weights(load_policy(str(result.policy_dir))[0])
    assert any(not torch.equal(a, b) for a, b in zip(step1, base)), "the step-1 snapshot is the base policy"
    assert any(not torch.equal(a, b) for a, b in zip(step1, final)), "the step-1 snapshot is the final policy"
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(step3, final)), "the last snapshot is not the policy"
    with pytest.raises(ValueError, match="snapshot_steps must lie in 1..steps=3"):
        tiny_config(tiny_rm, steps=3, snapshot_steps=(4,))


@pytest.mark.parametrize("backbone,text_format", [("minilm-l6", None), ("minilm-l6", "prompt <sep> completion"),
                                                  ("tiny-random-llama", None)])
def test_trl_reward_path_sees_the_same_tokens_as_scoring(backbone, text_format):
    """TRL renders conversational samples with the reward tokenizer's chat template, then tokenizes without
    special tokens; that must equal the text and tokens the reward model was trained and scored on."""
    from trl.data_utils import apply_chat_template

    from workbench.reward.score import reward_text

    _, tokenizer = load_reward_backbone(backbone)
    tokenizer.chat_template = reward_chat_template(tokenizer, text_format)
    prompt, completion = "Describe a sunny beach.", "Warm sand, bright sky, happy kids."
    rendered = apply_chat_template({"messages": [{"role": "user", "content": prompt},
                                                 {"role": "assistant", "content": completion}]}, tokenizer)["text"]
    via_trl = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    via_scoring = tokenizer(reward_text(tokenizer, prompt, completion, text_format))["input_ids"]
    assert via_trl == via_scoring
    # a multi-turn history with the shaping's system turn: the RM sees every user/assistant turn, not the system one
    history = [{"role": "system", "content": "Reply in one or two short sentences."},
               {"role": "user", "content": "Name a beach town."}, {"role": "assistant", "content": "Brighton."},
               {"role": "user", "content": prompt}]
    rendered = apply_chat_template({"messages": [*history, {"role": "assistant", "content": completion}]},
                                   tokenizer)["text"]
    expected = reward_text(tokenizer, history, completion, text_format)
    assert "User: Name a beach town.\n\nAssistant: Brighton.\n\nUser: " + prompt in expected
    assert "Reply in one" not in expected
    assert tokenizer(rendered, add_special_tokens=False)["input_ids"] == tokenizer(expected)["input_ids"]
    shaped = apply_chat_template({"messages": [history[0], history[-1], {"role": "assistant", "content": completion}]},
                                 tokenizer)["text"]  # one user turn behind the system one: as a plain prompt
    assert tokenizer(shaped, add_special_tokens=False)["input_ids"] == via_scoring


def test_normalised_classifier_scores_are_standardised(tiny_rm):
    manifest = json.loads((tiny_rm / "workbench_reward.json").read_text())
    mean, std = manifest["score_stats"]["mean"], manifest["score_stats"]["std"]
    assert std > 0
    raw = RewardModel.load(tiny_rm, bf16=False)
    model, tokenizer = load_reward_classifier(tiny_rm, normalize=True)
    scaled = RewardModel(model, tokenizer, bf16=False)
    prompts, texts = ["Tell me about place 1."] * 2, ["I loved it.", "Dreadful and sad."]
    expected = [(r - mean) / std for r in raw.score(prompts, texts)]
    assert scaled.score(prompts, texts) == pytest.approx(expected, abs=1e-4)


def test_eos_penalty_and_gold_logger(tmp_path):
    penalty = eos_penalty(1.0, [2])
    assert penalty(prompts=["p", "p"], completions=["a", "b"], completion_ids=[[5, 2], [5, 6]]) == [0.0, -1.0]
    logger = GoldRewardLogger("positive", tmp_path / "samples.jsonl", eos_token_ids=[2])
    scores = logger(prompts=[[{"role": "user", "content": "Hi"}]] * 2,
                    completions=[[{"role": "assistant", "content": "I love this!"}],
                                 [{"role": "assistant", "content": "I hate this."}]],
                    completion_ids=[[7, 2], [7, 8]])
    assert scores[0] > 0 > scores[1]
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [r["finished"] for r in rows] == [True, False] and rows[0]["prompt"] == "Hi"


@pytest.mark.parametrize("cuda", [True, False])
def test_policy_weights_stay_fp32_under_bf16_autocast(cuda, monkeypatch, tmp_path):
    import workbench.rl.train as rl_train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(rl_train, "resolve_bf16", lambda bf16: True)
    args = _common_args(RLConfig(reward="rm"), tmp_path)
    # bf16 weights would round away most optimiser steps (a step of 1e-6 can move 0.4 % of the policy's weights)
    assert args["bf16"] is True and args["model_init_kwargs"]["dtype"] == "float32"


def test_dpo_rows_are_conversations():
    row = dpo_rows([{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}])[0]
    assert row["prompt"] == [{"role": "user", "content": "Hi"}]
    assert row["chosen"] == [{"role": "assistant", "content": "Hello!"}]


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="reward model"):
        RLConfig(algo="rloo", reward=None)
    with pytest.raises(ValueError, match="algo"):
        RLConfig(algo="ppo2", reward="x")
    with pytest.raises(ValueError, match="num_generations"):
        RLConfig(reward="x", num_generations=1)
    RLConfig(algo="dpo")  # DPO needs no reward model


def _metrics(out: Path) -> list[dict]:
    return [r for r in RunDir(out).read_metrics("rl") if "rloo/loss" in r]


def _train_rl_cmd(out: Path, reward: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "workbench", "train-rl", "--policy", "tiny-random-llama", "--reward", str(reward),
            "--out", str(out), "--steps", "6", "--save-steps", "3", "--max-new-tokens", "8", "--oracle", "positive",
            "--learning-rate", "1e-3", "--json", *extra]


def test_resume_after_kill_minus_9_continues_the_run(tiny_rm, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_train_rl_cmd(straight, tiny_rm), check=True, env=env, cwd=ROOT, capture_output=True)

    killed = tmp_path / "killed"
    kill_after_checkpoint(_train_rl_cmd(killed, tiny_rm), killed, 3, env, ROOT)

    resumed = subprocess.run(_train_rl_cmd(killed, tiny_rm, "--resume"), check=True, env=env, cwd=ROOT,
                             capture_output=True, text=True)
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["global_step"] == 6 and summary["resumed_from"] == 3
    steps = [r["step"] for r in _metrics(killed)]
    assert steps == [1, 2, 3, 4, 5, 6] == [r["step"] for r in _metrics(straight)]
    samples = [json.loads(line)["step"] for line in (killed / "rl" / "samples.jsonl").read_text().splitlines()]
    assert sorted(set(samples)) == [1, 2, 3, 4, 5, 6] and len(samples) == 6 * 8  # each step's samples exactly once
    # the first three steps ran from the same seed in both runs
    for a, b in zip(_metrics(killed)[:3], _metrics(straight)[:3]):
        assert a["rloo/rewards/model/mean"] == pytest.approx(b["rloo/rewards/model/mean"], rel=1e-4)


def test_offline_reference_copy_is_untouched_by_training(tiny_rm, tmp_path):
    weights = Path(resolve_model("tiny-random-llama").path) / "model.safetensors"
    before = weights.read_bytes()
    train_policy(tiny_config(tiny_rm, steps=1), tmp_path)
    assert weights.read_bytes() == before
