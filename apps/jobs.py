"""Long jobs (reward-model and RL training) as `python -m workbench ...` subprocesses.

The app never trains in its own process: a job that crashes, or is stopped, leaves the UI serving. Each job's
stdout (the final `--json` line) and stderr (progress bars, logs) go to files under <run>/app/jobs/.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

STOP_GRACE_S = 10.0  # after SIGTERM, how long a job gets to exit before SIGKILL
TAIL_BYTES = 16_384


class JobError(RuntimeError):
    """A job request that cannot be honoured (already running, nothing to stop); the message is for people."""


@dataclass
class Job:
    name: str
    command: list[str]
    process: subprocess.Popen
    started_at: float
    stdout_path: Path
    stderr_path: Path
    stopped: bool = False
    finished_at: float | None = None


def python_command(*args: str) -> list[str]:
    """`python -m workbench ARGS` with the interpreter running the app (the project's venv)."""
    return [sys.executable, "-m", "workbench", *args]


# a tqdm bar: " 40%|####      | 2/5 [00:07<00:11,  3.51s/it]" -> done 2, total 5, elapsed 00:07
_TQDM = re.compile(r"(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)")
_NOISE = ("Warning", "warn(", "warnings.warn", "%|", "it/s", "s/it")  # log lines a person never needs to read


def step_progress(lines: list[str]) -> dict | None:
    """{"done", "total", "elapsed_s", "eta_s"} from the last progress bar among the lines (None when there is none).
    The ETA is the measured seconds per step so far times the steps left."""
    for line in reversed(lines):
        match = _TQDM.search(line)
        if match and int(match.group(2)) > 0:
            done, total = int(match.group(1)), int(match.group(2))
            elapsed = int(match.group(3) or 0) * 3600 + int(match.group(4)) * 60 + int(match.group(5))
            eta = elapsed / done * (total - done) if done else None
            return {"done": done, "total": total, "elapsed_s": elapsed, "eta_s": eta}
    return None


def error_line(lines: list[str]) -> str:
    """The line of a crashed job's stderr that says what went wrong: the last one that is no warning or bar."""
    meaningful = [line for line in lines if not any(noise in line for noise in _NOISE)]
    return (meaningful or lines or [""])[-1][-300:]


def read_tail(path: Path, n_bytes: int = TAIL_BYTES) -> str:
    """The end of a text file (empty when missing); progress bars' carriage returns become line breaks."""
    if not path.exists():
        return ""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(handle.tell() - n_bytes, 0))
        return handle.read().decode("utf-8", errors="replace").replace("\r", "\n")


class JobRunner:
    """At most one job per name (e.g. "reward", "rl"); status() never blocks on a running job."""

    def __init__(self, log_dir: str | Path):
        self.log_dir = Path(log_dir)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, name: str, command: list[str]) -> Job:
        with self._lock:
            job = self._jobs.get(name)
            if job is not None and job.process.poll() is None:
                raise JobError(f"A {name} job is already running (started {time.time() - job.started_at:.0f} s ago); "
                               "wait for it or stop it first.")
            self.log_dir.mkdir(parents=True, exist_ok=True)
            stdout_path, stderr_path = self.log_dir / f"{name}.out", self.log_dir / f"{name}.err"
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
            with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
                # own process group: stop() ends the job and any workers it spawned, and only those
                process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                           start_new_session=True)
            job = Job(name, command, process, time.time(), stdout_path, stderr_path)
            self._jobs[name] = job
            return job

    def stop(self, name: str) -> bool:
        """SIGTERM the job's process group, SIGKILL after a grace period. False when nothing was running."""
        with self._lock:
            job = self._jobs.get(name)
        if job is None or job.process.poll() is not None:
            return False
        job.stopped = True
        _signal_group(job.process, signal.SIGTERM)
        try:
            job.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(job.process, signal.SIGKILL)
            job.process.wait()
        return True

    def stop_all(self) -> None:
        for name in list(self._jobs):
            self.stop(name)

    def status(self, name: str) -> dict:
        """{"state": idle|running|finished|failed|stopped, "seconds", "returncode", "progress", "result", "error",
        "steps" (step_progress), "error_line", "log" (the stderr file), "command" (the job's argument list)}"""
        with self._lock:
            job = self._jobs.get(name)
        if job is None:
            return {"state": "idle", "seconds": 0.0, "returncode": None, "progress": "", "result": None, "error": "",
                    "steps": None, "error_line": "", "log": "", "command": []}
        returncode = job.process.poll()
        if returncode is not None and job.finished_at is None:
            job.finished_at = time.time()
        stderr = read_tail(job.stderr_path)
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        progress = next((line for line in reversed(lines) if "%|" in line or "it/s" in line or "s/it" in line), "")
        result = None
        if returncode == 0:
            out_lines = read_tail(job.stdout_path).strip().splitlines()
            try:
                result = json.loads(out_lines[-1]) if out_lines else None
            except json.JSONDecodeError:
                result = None
        state = ("running" if returncode is None else "stopped" if job.stopped else
                 "finished" if returncode == 0 else "failed")
        error = "\n".join(lines[-12:]) if state == "failed" else ""
        return {"state": state, "seconds": (job.finished_at or time.time()) - job.started_at, "returncode": returncode,
                "progress": progress[-160:], "result": result, "error": error, "steps": step_progress(lines),
                "error_line": error_line(lines) if state == "failed" else "", "log": str(job.stderr_path),
                "command": list(job.command)}


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the group id is the job's pid (start_new_session=True)
    except ProcessLookupError:
        pass
