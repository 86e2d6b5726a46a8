"""Scale-out: the shipped accelerate configs parse, and training stages run under a real two-process launch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.distributed import per_process
from workbench.runs import RunDir

sys.path.insert(0, str(Path(__file__).parent))
from test_reward import sentiment_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_accelerate_configs_parse(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes >= 1 and config.compute_environment.value == "LOCAL_MACHINE"
    # cpu_multi uses the torchrun launcher (MULTI_GPU); on a machine without GPUs the trainers pick CPU + gloo
    expected = {"cpu_single": "NO", "cpu_multi": "MULTI_GPU", "gpu_single": "NO", "gpu_ddp": "MULTI_GPU",
                "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED", "fsdp": "FSDP"}
    assert config.distributed_type.value == expected[path.stem]


def test_configs_cover_every_documented_setup():
    assert {p.stem for p in CONFIGS} == {"cpu_single", "cpu_multi", "gpu_single", "gpu_ddp", "deepspeed_zero2",
                                        "deepspeed_zero3", "fsdp"}


def test_global_batch_must_split_evenly():
    assert per_process(16, 2, "batch_size") == 8
    with pytest.raises(ValueError, match="batch_size=15 does not split evenly over 2 processes"):
        per_process(15, 2, "batch_size")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(processes: int, *args: str) -> dict:
    """`accelerate launch --config_file configs/accelerate/cpu_multi.yaml --num_processes N -m workbench ...`;
    returns the main process's JSON line."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / ("cpu_multi.yaml" if processes > 1 else "cpu_single.yaml")),
               "--num_processes", str(processes), "--main_process_port", str(_free_port()),
               "-m", "workbench", *args, "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # 2 processes x 1 thread on 2 cores
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, f"expected one JSON line (main process only), got {len(lines)}"
    return json.loads(lines[0])


def _steps(out: Path, stage: str, key: str) -> list[int]:
    return [row["step"] for row in RunDir(out).read_metrics(stage) if key in row]


@pytest.fixture(scope="module")
def preference_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in sentiment_rows(32)))
    return path


def test_train_rm_two_processes_matches_one_process(preference_file, tmp_path):
    args = ("train-rm", "--dataset", str(preference_file), "--backbone", "tiny-random-llama", "--epochs", "1",
            "--oracle", "positive")
    one = _launch(1, *args, "--out", str(tmp_path / "one"))
    two = _launch(2, *args, "--out", str(tmp_path / "two"))
    assert one["n_train"] == two["n_train"]
    # the same global batch (16 pairs = 2 x 8) gives the same optimiser steps, logged once each
    steps_one, steps_two = _steps(tmp_path / "one", "reward", "rm/loss"), _steps(tmp_path / "two", "reward", "rm/loss")
    assert steps_one == steps_two and len(set(steps_two)) == len(steps_two)
    model_dir = tmp_path / "two" / "reward" / "model"
    assert (model_dir / "workbench_reward.json").exists() and (model_dir / "model.safetensors").exists()
    assert len(list((tmp_path / "two").rglob("eval.json"))) == 1


def test_train_rl_rloo_two_processes(preference_file, tmp_path):
    _launch(1, "train-rm", "--dataset", str(preference_file), "--backbone", "tiny-random-llama", "--epochs", "1",
            "--oracle", "positive", "--out", str(tmp_path / "rm"))
    reward = str(tmp_path / "rm" / "reward" / "model")
    args = ("train-rl", "--policy", "tiny-random-llama", "--reward", reward, "--steps", "2", "--max-new-tokens", "6",
            "--oracle", "positive")
    one = _launch(1, *args, "--out", str(tmp_path / "one"))
    two = _launch(2, *args, "--out", str(tmp_path / "two"))
    assert one["global_step"] == two["global_step"] == 2
    assert _steps(tmp_path / "one", "rl", "rloo/loss") == _steps(tmp_path / "two", "rl", "rloo/loss") == [1, 2]
    assert (tmp_path / "two" / "rl" / "policy" / "workbench_policy.json").exists()
    samples = (tmp_path / "two" / "rl" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 2 * 4  # the main process's half of 8 completions per step, written once
