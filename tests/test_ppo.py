"""PPO with a value model (workbench.rl.ppo): its pieces against hand-computed values and brute force, and whole runs
on the tiny models: learning, run files, resume after kill -9, two processes."""

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from workbench.data import PromptRecord
from workbench.rl import RLConfig, train_policy
from workbench.rl import ppo
from workbench.rl.train import build_trainer
from workbench.runs import RunDir

sys.path.insert(0, str(Path(__file__).parent))
from test_rl import tiny_rm  # noqa: E402,F401  (the module-scoped tiny reward model fixture)
from kill9 import kill_after_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# a reward the value model can learn from the prompt alone: +1 for the first prompt, -1 for the second
CONTRAST = [PromptRecord("up", "happy " * 24), PromptRecord("down", "sad " * 24)]


def contrast_reward(prompts: list[str], completions: list[str]) -> list[float]:
    return [1.0 if p.startswith("happy") else -1.0 for p in prompts]


def tiny_ppo(reward: Path, **overrides) -> RLConfig:
    values = dict(policy="tiny-random-llama", reward=str(reward), algo="ppo", steps=2, max_new_tokens=8,
                  save_steps=100, learning_rate=1e-3, oracle="positive", ppo_epochs=2, num_minibatches=2)
    return RLConfig(**{**values, **overrides})


# ---------------------------------------------------------------- the pieces


def right_padded_mask(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()


def brute_force_gae(rewards, values, mask, gamma, lam):
    """Per timestep, straight from the definition: A_t = sum_l (gamma lam)^l delta_{t+l} over the real tokens."""
    advantages = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        n = int(mask[b].sum())
        v = [float(values[b, t]) for t in range(n)] + [0.0]  # V after the last token = 0
        deltas = [float(rewards[b, t]) + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            advantages[b, t] = sum((gamma * lam) ** l * deltas[t + l] for l in range(n - t))
    return advantages


@pytest.mark.parametrize("lengths,width", [([1], 1), ([5, 3, 1], 5), ([12, 7, 12, 2], 12), ([4, 6], 9)])
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (1.0, 0.0)])
def test_gae_matches_a_brute_force_reference_with_padding(lengths, width, gamma, lam):
    torch.manual_seed(len(lengths) * width)
    mask = right_padded_mask(lengths, width)
    rewards, values = torch.randn(len(lengths), width), torch.randn(len(lengths), width)
    rewards[mask == 0], values[mask == 0] = 7.0, -5.0  # padding holds garbage: it must not leak in
    advantages, returns = ppo.gae(rewards, values, mask, gamma, lam)
    expected = brute_force_gae(rewards, values, mask, gamma, lam)
    assert torch.allclose(advantages, expected, atol=1e-5)
    assert torch.allclose(returns, (expected + values) * mask, atol=1e-5)
    assert torch.all(advantages[mask == 0] == 0) and torch.all(returns[mask == 0] == 0)


def test_whitening_gives_mean_0_std_1_over_the_real_tokens_only():
    torch.manual_seed(0)
    mask = right_padded_mask([6, 2, 4], 6)
    x = 3.0 + 2.0 * torch.randn(3, 6)
    x[mask == 0] = 100.0
    white = ppo.whiten(x, mask)
    real = x[mask.bool()]
    assert torch.allclose(white[mask.bool()], (real - real.mean()) / real.std(), atol=1e-5)  # unbiased std
    assert torch.all(white[mask == 0] == 0)
    mean, var = ppo.masked_moments(x, mask)
    assert float(mean) == pytest.approx(float(real.mean())) and float(var) == pytest.approx(float(real.var()))


def test_clipped_surrogate_against_hand_computed_values():
    ratios = torch.tensor([[1.5, 0.5, 1.1, 0.5, 3.0]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])  # the last token is padding
    old = torch.zeros(1, 5)
    loss, clipfrac, approx_kl = ppo.policy_loss(ratios.log(), old, advantages, mask, cliprange=0.2)
    # per token max(-A r, -A clip(r, 0.8, 1.2)): -1.2 (clipped), -0.5, 1.1, 0.8 (clipped: the pessimistic bound)
    assert float(loss) == pytest.approx((-1.2 - 0.5 + 1.1 + 0.8) / 4)
    assert float(clipfrac) == pytest.approx(2 / 4)
    logs = [math.log(1.5), math.log(0.5), math.log(1.1), math.log(0.5)]
    assert float(approx_kl) == pytest.approx(0.5 * sum(v * v for v in logs) / 4)
    logprobs = ratios.log().requires_grad_()
    ppo.policy_loss(logprobs, old, advantages, mask, 0.2)[0].backward()
    # the clip switches off the gradient of tokens 1 and 4; token 2: -A r / 4 -> -r/4; token 3: r/4
    assert torch.allclose(logprobs.grad, torch.tensor([[0.0, -0.5 / 4, 1.1 / 4, 0.0, 0.0]]), atol=1e-6)


def test_clipped_value_loss_against_hand_computed_values():
    old = torch.tensor([[0.0, 0.0, 1.0, 9.0]])
    new = torch.tensor([[0.5, 0.1, 0.5, 0.0]])
    returns = torch.tensor([[1.0, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, clipfrac = ppo.value_loss(new, old, returns, mask, cliprange_value=0.2)
    # clipped predictions 0.2, 0.1, 0.8: max((v-R)^2, (v_clip-R)^2) = max(.25,.64), max(1.21,1.21), max(.25,.64)
    assert float(loss) == pytest.approx(0.5 * (0.64 + 1.21 + 0.64) / 3)
    assert float(clipfrac) == pytest.approx(2 / 3)
    assert ppo.explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert ppo.explained_variance(torch.zeros(1, 4) + returns[mask.bool()].mean(), returns, mask) == \
        pytest.approx(0.0, abs=1e-6)


def test_adaptive_kl_controller_raises_beta_above_target_and_lowers_it_below():
    control = ppo.KLController(0.1, target=6.0, horizon=100)
    control.update(kl=12.0, n=10)  # error +1, clipped to +0.2: beta * (1 + 0.2 * 10 / 100)
    assert control.value == pytest.approx(0.1 * 1.02)
    control = ppo.KLController(0.1, target=6.0, horizon=100)
    control.update(kl=3.0, n=10)  # error -0.5, clipped to -0.2
    assert control.value == pytest.approx(0.1 * 0.98)
    control = ppo.KLController(0.1, target=6.0, horizon=100)
    control.update(kl=6.6, n=10)  # error +0.1 (inside the clip)
    assert control.value == pytest.approx(0.1 * 1.01)
    fixed = ppo.KLController(0.1, target=None)
    fixed.update(kl=50.0, n=10)
    assert fixed.value == 0.1


def test_token_rewards_put_the_score_on_the_last_real_token():
    mask = right_padded_mask([3, 1], 3)
    logprobs = torch.tensor([[-1.0, -2.0, -1.0], [-0.5, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-1.0, 0.0, 0.0]])
    rewards, kl = ppo.token_rewards(torch.tensor([2.0, -1.0]), logprobs, ref, mask, beta=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0, 0.0], [0.5, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.1, 2.0], [-0.05 - 1.0, 0.0, 0.0]]))


def test_module_docstring_checklist_points_at_its_markers():
    source = Path(ppo.__file__).read_text().splitlines()
    items = re.findall(r"\[(\d+)\][^\[]*?line (\d+)", ppo.__doc__, flags=re.S)
    assert [int(n) for n, _ in items] == list(range(1, 15)), "every checklist item needs a line reference"
    for number, line in items:
        assert f"# [{number}]" in source[int(line) - 1], f"item [{number}]: line {line} is {source[int(line) - 1]!r}"
    assert len(source) <= 500


def test_value_model_source_follows_the_reward_models_tokenizer(tiny_rm):
    from workbench.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer("tiny-random-llama")
    same = ppo.value_model_source(tiny_ppo(tiny_rm), tokenizer)  # a Llama RM on the policy's own tokenizer
    assert same["init"] == "reward-model"
    bert = ppo.value_model_source(tiny_ppo(resolve_model("minilm-l6").path), tokenizer)
    assert bert["init"] == "policy-copy" and "tokenizer" in bert["why"]  # BERT's vocabulary is not the policy's
    assert ppo.value_model_source(tiny_ppo(tiny_rm, value_init="policy"), tokenizer)["init"] == "policy-head"


def test_rollout_logprobs_are_exactly_the_sampled_tokens_at_the_sampling_temperature(tiny_rm, tmp_path):
    from workbench.generation import completion_logprobs, generate, with_system_prompt

    trainer = build_trainer(tiny_ppo(tiny_rm, max_new_tokens=6, temperature=0.7), RunDir(tmp_path))
    prompts = ["Hi.", "Tell me a long story about a dog."] * 2
    sampling = trainer.sampling(0, len(prompts))
    completions = generate(trainer.model, trainer.tokenizer, prompts, sampling)
    for i, completion in enumerate(completions):  # ragged lengths: a prefix of a sample is a sample too
        completion.token_ids = completion.token_ids[: i + 1]
    batch = trainer.pack(prompts, completions, sampling)
    with torch.no_grad():
        logits, values = trainer.policy_and_value(batch["input_ids"], batch["attention_mask"], batch["position_ids"],
                                                  batch["response"].shape[1])
    ours = trainer.logprobs(logits, batch["response"])
    assert batch["mask"].sum(1).tolist() == [1, 2, 3, 4] and torch.all(values == 0)  # the value head starts at 0
    system = sampling.shaping.active_system_prompt  # answer shaping's, as generate() put it before each prompt
    assert system and sampling.top_p == 1.0 and sampling.top_k == 0
    reference = completion_logprobs(trainer.model, trainer.tokenizer, [with_system_prompt(p, system) for p in prompts],
                                    [c.token_ids for c in completions], temperature=0.7)
    for row, expected in enumerate(reference):
        assert ours[row, : len(expected)].tolist() == pytest.approx(expected, abs=1e-4)


# ---------------------------------------------------------------- whole runs


def test_value_model_learns_a_fixed_python_reward(tiny_rm, tmp_path):
    config = tiny_ppo(tiny_rm, steps=5, ppo_epochs=4, oracle=None)
    trainer = build_trainer(config, RunDir(tmp_path), prompts=CONTRAST, reward_fn=contrast_reward)
    backbone = trainer.policy_and_value.value_backbone
    rm_backbone = AutoModel.from_pretrained(str(tiny_rm), dtype=torch.float32).state_dict()
    assert all(torch.equal(v, rm_backbone[k]) for k, v in backbone.state_dict().items()), "not the RM's backbone"
    weights = lambda m: {k: v.clone() for k, v in m.state_dict().items()}  # noqa: E731
    policy, reference, value = weights(trainer.model), weights(trainer.ref_model), weights(backbone)
    trainer.train()
    rows = RunDir(tmp_path).read_metrics("rl")
    losses, explained = [r["ppo/value_loss"] for r in rows], [r["ppo/explained_variance"] for r in rows]
    assert explained[0] == pytest.approx(0.0, abs=1e-6)  # the value head starts at 0
    assert losses[-1] < 0.5 * losses[0], losses
    assert explained[-1] > 0.5, explained
    assert any(not torch.equal(v, policy[k]) for k, v in trainer.model.state_dict().items()), "the policy never moved"
    assert any(not torch.equal(v, value[k]) for k, v in backbone.state_dict().items()), "the value model never moved"
    assert all(torch.equal(v, reference[k]) for k, v in trainer.ref_model.state_dict().items()), "the reference moved"
    assert [r["ppo/optimizer_steps"] for r in rows] == [8, 16, 24, 32, 40]


def test_rm_scored_run_writes_the_run_files_and_never_moves_the_reward_model(tiny_rm, tmp_path):
    trainer = build_trainer(tiny_ppo(tiny_rm, steps=1, ppo_epochs=1), RunDir(tmp_path / "probe"))
    rm_before = {k: v.clone() for k, v in trainer.reward_model.state_dict().items()}
    trainer.train()
    assert all(torch.equal(v, rm_before[k]) for k, v in trainer.reward_model.state_dict().items()), "the RM moved"

    result = train_policy(tiny_ppo(tiny_rm, steps=3, save_steps=2, snapshot_steps=(1,), target_kl=0.01), tmp_path)
    assert result.global_step == 3
    manifest = json.loads((result.policy_dir / "workbench_policy.json").read_text())
    assert manifest["algo"] == "ppo" and manifest["steps"] == 3
    assert (result.policy_dir / "tokenizer.json").exists()
    config = json.loads((tmp_path / "rl" / "config.json").read_text())
    assert config["value_model"]["init"] == "reward-model" and config["ppo_epochs"] == 2
    rows = [r for r in RunDir(tmp_path).read_metrics("rl") if "ppo/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for name in ("policy_loss", "value_loss", "clipfrac", "approx_kl", "explained_variance", "kl_coef", "entropy",
                 "reward", "rewards/model/mean", "rewards/gold/mean", "kl", "step_time"):
        assert all(math.isfinite(r[f"ppo/{name}"]) for r in rows), name
    assert rows[1]["ppo/kl_coef"] != rows[0]["ppo/kl_coef"], "target_kl: the adaptive controller never moved beta"
    samples = [json.loads(line) for line in (tmp_path / "rl" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 8 and {s["step"] for s in samples} == {1, 2, 3}
    assert set(samples[0]) == {"step", "prompt", "completion", "gold", "finished"}
    checkpoints = tmp_path / "rl" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-3"]
    assert {"optimizer.pt", "scheduler.pt", "value.safetensors", "rng_state_0.pth", "model.safetensors",
            "trainer_state.json"} <= {p.name for p in (checkpoints / "checkpoint-2").iterdir()}
    assert (tmp_path / "rl" / "snapshots" / "step-1" / "model.safetensors").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        train_policy(tiny_ppo(tiny_rm, steps=3), tmp_path)


def test_lora_with_a_value_head_on_the_policy_saves_a_merged_plain_model(tiny_rm, tmp_path):
    from workbench.models import load_policy

    result = train_policy(tiny_ppo(tiny_rm, lora=True, lora_learning_rate=1e-2, value_init="policy", ppo_epochs=1,
                                   num_minibatches=1), tmp_path)
    assert not (result.policy_dir / "adapter_config.json").exists()
    tuned, base = load_policy(str(result.policy_dir))[0], load_policy("tiny-random-llama")[0]
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), base.state_dict().values()))
    assert json.loads((tmp_path / "rl" / "config.json").read_text())["value_model"]["init"] == "policy-head"


def _cli(out: Path, reward: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "workbench", "train-rl", "--algo", "ppo", "--policy", "tiny-random-llama",
            "--reward", str(reward), "--out", str(out), "--max-new-tokens", "8", "--oracle", "positive",
            "--learning-rate", "1e-3", "--ppo-epochs", "1", "--num-minibatches", "2", "--json", *extra]


def _ppo_rows(out: Path) -> list[dict]:
    return [r for r in RunDir(out).read_metrics("rl") if "ppo/loss" in r]


def test_resume_after_kill_minus_9_continues_the_run(tiny_rm, tmp_path):
    straight = tmp_path / "straight"
    train_policy(tiny_ppo(tiny_rm, steps=6, save_steps=3, ppo_epochs=1), straight)

    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    kill_after_checkpoint(_cli(killed, tiny_rm, "--steps", "6", "--save-steps", "3"), killed, 3, env, ROOT)

    resumed = train_policy(tiny_ppo(tiny_rm, steps=6, save_steps=3, ppo_epochs=1, resume=True), killed)
    assert resumed.global_step == 6 and resumed.resumed_from == 3
    rows, reference = _ppo_rows(killed), _ppo_rows(straight)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] == [r["step"] for r in reference]
    assert [r["ppo/optimizer_steps"] for r in rows] == [2 * s for s in range(1, 7)]  # continuous, not restarted
    for a, b in zip(rows, reference):  # the same samples and updates as the run that was never interrupted
        for key in ("ppo/reward", "ppo/value_loss", "ppo/policy_loss", "ppo/learning_rate"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-5), (a["step"], key)
    samples = [json.loads(line)["step"] for line in (killed / "rl" / "samples.jsonl").read_text().splitlines()]
    assert sorted(set(samples)) == [1, 2, 3, 4, 5, 6] and len(samples) == 6 * 8  # each step's samples once


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_take_the_optimiser_steps_of_one(tiny_rm, tmp_path):
    one = tmp_path / "one"
    train_policy(tiny_ppo(tiny_rm, ppo_epochs=1), one)
    two = tmp_path / "two"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / "cpu_multi.yaml"), "--num_processes", "2",
               "--main_process_port", str(_free_port()), "-m", "workbench", *_cli(two, tiny_rm, "--steps", "2")[3:]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert len([line for line in done.stdout.splitlines() if line.startswith("{")]) == 1  # the main process reports
    # a global batch of 8 completions: 4 per process in 2 minibatches of 2, DDP-averaged: 2 optimiser steps per step
    assert [r["ppo/optimizer_steps"] for r in _ppo_rows(two)] == [r["ppo/optimizer_steps"] for r in _ppo_rows(one)] \
        == [2, 4]
    assert (two / "rl" / "policy" / "workbench_policy.json").exists()
    assert len((two / "rl" / "samples.jsonl").read_text().splitlines()) == 2 * 4  # the main process's half


def test_cli_maps_the_ppo_flags_onto_the_config():
    from workbench.cli import _config, build_parser

    args = build_parser().parse_args(["train-rl", "--algo", "ppo", "--reward", "rm", "--out", "x", "--ppo-epochs", "3",
                                      "--num-minibatches", "2", "--cliprange", "0.1", "--cliprange-value", "0.3",
                                      "--gae-lambda", "0.9", "--target-kl", "4", "--kl-horizon", "500",
                                      "--value-init", "policy", "--vf-coef", "0.5"])
    config = _config(RLConfig, args, {"algo": "algo", "reward": "reward", "ppo_epochs": "ppo_epochs",
                                      "num_minibatches": "num_minibatches", "cliprange": "cliprange",
                                      "cliprange_value": "cliprange_value", "gae_lambda": "gae_lambda",
                                      "target_kl": "target_kl", "kl_horizon": "kl_horizon",
                                      "value_init": "value_init", "vf_coef": "vf_coef"})
    assert (config.ppo_epochs, config.num_minibatches, config.cliprange, config.cliprange_value, config.gae_lambda,
            config.target_kl, config.kl_horizon, config.value_init, config.vf_coef) == (3, 2, 0.1, 0.3, 0.9, 4.0,
                                                                                        500, "policy", 0.5)
    with pytest.raises(ValueError, match="value_init"):
        RLConfig(algo="ppo", reward="rm", value_init="bert")
    RLConfig(algo="ppo", reward="rm", num_generations=1)  # PPO needs no group of siblings


def test_ppo_panels_plot():
    from workbench.plots import PPO_PANELS, rl_comparison, rl_curves

    rows = [{"step": s, "ppo/value_loss": 1 / s, "ppo/explained_variance": 1 - 1 / s, "ppo/clipfrac": 0.1,
             "ppo/approx_kl": 0.01, "ppo/kl_coef": 0.05, "ppo/rewards/gold/mean": 0.1 * s} for s in (1, 2, 3)]
    assert len(rl_curves(rows, "ppo", panels=PPO_PANELS).data) == 5
    figure = rl_comparison({"ppo": rows, "rloo": [{"step": 1, "rloo/rewards/gold/mean": 0.0}]}, samples_per_step=8)
    assert [trace.name for trace in figure.data] == ["ppo", "rloo"] and list(figure.data[0].x) == [8, 16, 24]
