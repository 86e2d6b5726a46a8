"""Claim: the training stages scale out under `accelerate launch` with the same commands. Measures reward-model
training throughput (pairs/s) and the RLOO step time with 1 vs 2 CPU processes on the same global batch
(1 process x 2 threads vs 2 processes x 1 thread on this 2-core machine), in the same run.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(processes: int, threads: int, *args: str) -> dict:
    config = ROOT / "configs" / "accelerate" / ("cpu_multi.yaml" if processes > 1 else "cpu_single.yaml")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--num_processes", str(processes), "--main_process_port", str(_free_port()),
               "-m", "workbench", *args, "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"accelerate launch with {processes} process(es) failed")
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def metrics(out: Path, stage: str) -> list[dict]:
    from workbench.runs import RunDir

    return RunDir(out).read_metrics(stage)


def synthetic_preferences(n: int, path: Path) -> Path:
    """Pairs whose chosen side is the upbeat one: enough signal for a throughput measurement."""
    upbeat = ["What a lovely, sunny and cheerful day out with friends.", "Great food, kind staff, I loved it."]
    gloomy = ["A dull, grey and tiring afternoon that dragged on.", "Cold food, rude staff, never again."]
    rows = [{"prompt": f"Describe visit number {i}.", "chosen": f"{upbeat[i % 2]} Visit {i} was a joy.",
             "rejected": f"{gloomy[i % 2]} Visit {i} was a chore."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--rl-steps", type=int, default=4)
    parser.add_argument("--policy", default="smollm2-135m-instruct")
    parser.add_argument("--backbone", default="minilm-l6")
    args = parser.parse_args()
    cores = os.cpu_count() or 2
    work = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    data = synthetic_preferences(args.pairs, work / "prefs.jsonl")
    result: dict = {"benchmark": "scaling", "device": "cpu", "cores": cores,
                    "machine": platform.processor() or platform.machine(), "gpu": torch.cuda.is_available()}
    rm_rows = {}
    for processes in (1, 2):
        out = work / f"rm_{processes}"
        launch(processes, max(cores // processes, 1), "train-rm", "--dataset", str(data), "--backbone",
               args.backbone, "--epochs", "1", "--oracle", "positive", "--out", str(out))
        runtime = next(r["rm/train_runtime"] for r in metrics(out, "reward") if "rm/train_runtime" in r)
        n_train = json.loads((out / "reward" / "config.json").read_text())["n_train"]
        steps = max(r["step"] for r in metrics(out, "reward"))
        rm_rows[processes] = {"pairs_per_s": round(n_train / runtime, 2), "optimizer_steps": steps}
    result["reward_model"] = {"processes_1": rm_rows[1], "processes_2": rm_rows[2],
                              "speedup": round(rm_rows[2]["pairs_per_s"] / rm_rows[1]["pairs_per_s"], 3)}
    reward = str(work / "rm_1" / "reward" / "model")
    rl_rows = {}
    for processes in (1, 2):
        out = work / f"rl_{processes}"
        launch(processes, max(cores // processes, 1), "train-rl", "--policy", args.policy, "--reward", reward,
               "--steps", str(args.rl_steps), "--max-new-tokens", "24", "--save-steps", "1000", "--out", str(out))
        times = [r["rloo/step_time"] for r in metrics(out, "rl") if "rloo/step_time" in r]
        rl_rows[processes] = {"step_seconds_median": round(statistics.median(times[1:] or times), 2),
                              "optimizer_steps": len(times)}
    result["rl_rloo"] = {"processes_1": rl_rows[1], "processes_2": rl_rows[2],
                         "speedup": round(rl_rows[1]["step_seconds_median"] / rl_rows[2]["step_seconds_median"], 3),
                         "global_batch": "2 prompts x 4 completions x 24 tokens"}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
