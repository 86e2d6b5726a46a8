"""Kill -9 a training run once it has written a checkpoint: the harness of the resume tests (RLOO, PPO)."""

import signal
import subprocess
import time
from pathlib import Path


def kill_after_checkpoint(command: list[str], run_dir: Path, step: int, env: dict, cwd: Path,
                          timeout: float = 300) -> None:
    """Start `command`, SIGKILL it as soon as rl/checkpoints/checkpoint-<step> is complete, and check it was killed
    mid-run: the checkpoint exists and the final policy does not."""
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run_dir / "rl" / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json"
    deadline = time.time() + timeout
    while not state.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state.exists(), f"the run never reached its step-{step} checkpoint"
    assert not (run_dir / "rl" / "policy").exists(), "the run finished before it could be killed"
