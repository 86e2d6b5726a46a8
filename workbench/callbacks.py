"""Trainer callbacks shared by every training stage."""

from __future__ import annotations

from transformers import TrainerCallback

from workbench.runs import RunDir


class RunMetricsCallback(TrainerCallback):
    """Writes every metric the Trainer logs to the run's metrics.jsonl, namespaced as `<namespace>/<name>`.

    Only the main process writes, so multi-process runs never interleave lines.
    """

    def __init__(self, run: RunDir, stage: str, namespace: str):
        self.run, self.stage, self.namespace = run, stage, namespace

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        numeric = {f"{self.namespace}/{k}": float(v) for k, v in logs.items() if isinstance(v, (int, float))}
        if numeric:
            self.run.log_metrics(self.stage, state.global_step, numeric)
