"""The app's explicit state: one `AppContext` per app, created by `build_demo` and passed to every handler.

It holds what is shared by all sessions: the run directory, its preference store, the loaded policy, caches of
other models (reloaded when their files change) and the background jobs. Per-session state lives in `gr.State`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from apps.jobs import JobRunner
from workbench.preferences import PreferenceStore
from workbench.reward.score import MANIFEST as REWARD_MANIFEST
from workbench.runs import RunDir

DEFAULT_POLICY = "smollm2-135m-instruct"
DEFAULT_REWARD_BACKBONE = "minilm-l6"
LABEL_TARGET = 200  # labels the progress line counts towards (a reward model learns something from ~200 pairs)


def prepare_for_decoding(model, rows: int, tuned: bool = False):
    """The app's models decode in bf16 where bf16 math is native, else in fp32 with MKL-prepacked weights.

    Measured on 2 AVX512-BF16 cores, one thread, a pair of 2 x 48 tokens of the default policy: 2.7 s in bf16 vs
    3.8 s prepacked fp32 (4.9 s plain fp32); bf16 vs fp32 next-token distributions on fp32 samples: KL 0.0012
    nats/token (p99 0.005), so the pairs are still samples of the policy.

    `tuned=True` (RL policies, checkpoints, snapshots) always stays fp32: most of RL's weight updates are smaller than
    bf16's resolution, so rounding erases them (measured in `workbench.generation.sampling_precision`)."""
    import torch

    from workbench.generation import prepack_for_decoding
    from workbench.models import cpu_has_native_bf16

    if not tuned and model.device.type == "cpu" and cpu_has_native_bf16():
        return model.to(torch.bfloat16)
    prepack_for_decoding(model, rows=rows)  # fp32 only
    return model


@dataclass
class LoadedPolicy:
    """A policy loaded once, shared read-only by every request."""

    name: str
    model: object
    tokenizer: object


@dataclass
class AppContext:
    run: RunDir
    store: PreferenceStore
    policy: LoadedPolicy
    reward_backbone: str = DEFAULT_REWARD_BACKBONE
    label_target: int = LABEL_TARGET
    jobs: JobRunner = None  # created in open(); logs under <run>/app/jobs
    # one generation at a time: decoding saturates the cores, and torch's RNG seed is process-wide
    model_lock: threading.Lock = field(default_factory=threading.Lock)
    _cache_lock: threading.Lock = field(default_factory=threading.Lock)
    prompts: list = field(default_factory=list)  # the built-in training prompts, the source of new pairs
    margins: dict = field(default_factory=dict)  # (reward version, pair_id) -> |r_A - r_B|, for active selection
    _reward: tuple[int, object] | None = None  # (manifest mtime_ns, RewardModel)
    _policies: dict[str, tuple[int, object]] = field(default_factory=dict)  # path -> (mtime_ns, model)

    @classmethod
    def open(cls, run_dir: str | Path, policy_name: str = DEFAULT_POLICY,
             reward_backbone: str = DEFAULT_REWARD_BACKBONE, policy: LoadedPolicy | None = None,
             label_target: int = LABEL_TARGET) -> AppContext:
        from workbench.data import builtin_prompts
        from workbench.models import load_policy

        run = RunDir(Path(run_dir).expanduser().resolve())
        if policy is None:
            model, tokenizer = load_policy(policy_name)
            prepare_for_decoding(model, rows=2)  # the two sides of a pair decode together
            policy = LoadedPolicy(policy_name, model, tokenizer)
        return cls(run=run, store=PreferenceStore(run.root / "prefs.sqlite"), policy=policy,
                   reward_backbone=reward_backbone, label_target=label_target, prompts=builtin_prompts("train"),
                   jobs=JobRunner(run.root / "app" / "jobs"))

    def close(self) -> None:
        self.jobs.stop_all()
        self.store.close()

    # -- paths ------------------------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.run.root

    @property
    def reward_dir(self) -> Path:
        return self.root / "reward" / "model"

    @property
    def tuned_dir(self) -> Path:
        return self.root / "rl" / "policy"

    def has_reward_model(self) -> bool:
        return (self.reward_dir / REWARD_MANIFEST).exists()

    def has_tuned_policy(self) -> bool:
        return (self.tuned_dir / "config.json").exists()

    # -- cached models, reloaded when a training job rewrites them ----------------------------------------------

    def reward_model(self):
        """The run's reward model, or None before one is trained."""
        from workbench.reward.score import RewardModel

        manifest = self.reward_dir / REWARD_MANIFEST
        if not manifest.exists():
            return None
        stamp = manifest.stat().st_mtime_ns
        with self._cache_lock:
            if self._reward is None or self._reward[0] != stamp:
                self._reward = (stamp, RewardModel.load(self.reward_dir))
            return self._reward[1]

    def reward_version(self) -> int | None:
        manifest = self.reward_dir / REWARD_MANIFEST
        return manifest.stat().st_mtime_ns if manifest.exists() else None

    def model_for(self, choice: str):
        """(model, tokenizer) for a model choice from `model_choices()`: the policy, or a checkpoint of this run."""
        if choice == self.policy.name:
            return self.policy.model, self.policy.tokenizer
        path = self.root / choice
        stamp_file = next((path / n for n in ("config.json", "adapter_config.json") if (path / n).exists()), None)
        if stamp_file is None:
            raise FileNotFoundError(f"{choice}: no model there any more; pick another.")
        stamp = stamp_file.stat().st_mtime_ns
        with self._cache_lock:
            cached = self._policies.get(choice)
            if cached is None or cached[0] != stamp:
                from workbench.evaluation.report import load_checkpoint_policy

                if len(self._policies) >= 2:  # keep memory bounded: at most two extra models
                    self._policies.pop(next(iter(self._policies)))
                model = load_checkpoint_policy(path, self.policy.name)  # fp32: a LoRA merge is exact there
                model = prepare_for_decoding(model, rows=1, tuned=True)  # a second model writes its side alone
                self._policies[choice] = (stamp, model)
            return self._policies[choice][1], self.policy.tokenizer

    def model_choices(self) -> list[str]:
        """The policy's name, then the run's tuned policy, RL checkpoints and snapshots (paths relative to the run)."""
        choices = [self.policy.name]
        if self.has_tuned_policy():
            choices.append("rl/policy")
        from workbench.rl.train import complete_checkpoints, snapshot_dirs

        choices += [f"rl/checkpoints/{path.name}" for path in complete_checkpoints(self.root / "rl" / "checkpoints")]
        choices += [f"rl/snapshots/{path.name}" for path in snapshot_dirs(self.root / "rl")]
        return choices
