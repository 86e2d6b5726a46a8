"""The tutorial notebooks' shared run directory: reuse what an earlier notebook left there, run only what is missing.

Notebooks 02 -> 03 -> 04 hand off through one run directory (`runs/tutorial`; `runs/tutorial_smoke` at smoke size),
never through notebook variables:

    prefs.sqlite                    02: pairs and simulated labels            ensure_labels
    reward/model, reward/eval.json  02: the reward model                      ensure_reward_model
    rl/policy                       03: the RLOO run                          ensure_rl
    rl/eval.json                    04: the evaluation                        ensure_evaluation

A stage counts as there when the file its trainer writes last exists (a crashed run leaves none). Each ensure_*
returns what it did; `handoff_line` says it in one line, e.g. "runs/tutorial: reused labels (404 by
sim:upbeat-concise:T=0.1), reward model (ensemble, validation accuracy 0.66); ran RL (rloo, 28 steps)". Re-running
notebook 02 starts the chain over.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workbench.runs import RunDir

PREFS = "prefs.sqlite"


@dataclass
class Stage:
    """One stage of the chain: `reused` what an earlier notebook left at `path`, or ran it into `path`."""

    name: str  # "labels", "reward model", "RL", "evaluation"
    reused: bool
    path: Path
    detail: str = ""  # a few words for people: counts, kind, steps

    def describe(self) -> str:
        return f"{self.name} ({self.detail})" if self.detail else self.name


@dataclass
class Labels(Stage):
    annotator: str = ""
    rows: list[dict] = field(default_factory=list)  # TRL preference rows {prompt, chosen, rejected, ...}


@dataclass
class RewardModelStage(Stage):
    summary: dict = field(default_factory=dict)  # reward/eval.json: accuracy, gold accuracy, kind, counts

    @property
    def model_dir(self) -> Path:
        return self.path

    @property
    def accuracy(self):
        """Validation accuracy as an Estimate (what `pipeline.reward_model_trust` reads)."""
        from workbench.evaluation.metrics import Estimate

        low, high = self.summary["accuracy_ci"]
        return Estimate(self.summary["accuracy"], low, high, self.summary.get("n_evaluated", self.summary["n_val"]))


@dataclass
class RLStage(Stage):
    config: dict = field(default_factory=dict)  # rl/config.json, as the run was trained

    @property
    def policy_dir(self) -> Path:
        return self.path


@dataclass
class Evaluation(Stage):
    report: dict = field(default_factory=dict)  # rl/eval.json


def handoff_line(run_dir: str | Path, *stages: Stage) -> str:
    """One line: which stages were reused from the run directory, which ran."""
    reused = ", ".join(s.describe() for s in stages if s.reused) or "nothing"
    ran = ", ".join(s.describe() for s in stages if not s.reused) or "nothing"
    return f"{run_dir}: reused {reused}; ran {ran}"


def ensure_labels(run_dir: str | Path, policy: str, n_pairs: int, labeler, pair_config,
                  show_progress: bool = True) -> Labels:
    """The simulated labeler's labels in <run_dir>/prefs.sqlite: reused when it has labelled any pairs there,
    else `n_pairs` new pairs sampled from `policy` and labelled. Rows hold only that labeler's labels."""
    from workbench.preferences import PreferenceStore, export_preferences
    from workbench.preferences.simulate import collect_simulated_preferences, simulated_annotator_name

    path, annotator = RunDir(run_dir).root / PREFS, simulated_annotator_name(labeler)
    reused = path.is_file()
    if reused:
        with PreferenceStore(path, read_only=True) as store:  # read-only: a reused store is left untouched
            reused = store.count_labels(annotator) > 0
    if not reused:
        from workbench.models import load_policy

        with PreferenceStore(path) as store:
            collect_simulated_preferences(store, load_policy(policy), n_pairs, labeler, pair_config,
                                          model_name=policy, show_progress=show_progress)
    with PreferenceStore(path, read_only=True) as store:
        rows = export_preferences(store, annotator=annotator)[0].to_list()
    return Labels("labels", reused, path, f"{len(rows)} by {annotator}", annotator, rows)


def ensure_reward_model(run_dir: str | Path, rows: list[dict], config) -> RewardModelStage:
    """<run_dir>/reward/model: reused when its eval.json (written last) exists, else trained on `rows`."""
    from workbench.reward import train_reward_model

    stage_dir = RunDir(run_dir).root / "reward"
    reused = (stage_dir / "eval.json").is_file()
    summary = json.loads((stage_dir / "eval.json").read_text()) if reused else \
        train_reward_model(rows, config, run_dir).summary()
    detail = f"{summary['kind']}, validation accuracy {summary['accuracy']:.2f}"
    return RewardModelStage("reward model", reused, stage_dir / "model", detail, summary)


def ensure_rl(run_dir: str | Path, config, preference_rows: list[dict]) -> RLStage:
    """<run_dir>/rl/policy: reused when its manifest (written last) exists, else trained with `config`."""
    from workbench.rl import train_policy
    from workbench.rl.train import POLICY_MANIFEST

    stage_dir = RunDir(run_dir).root / "rl"
    reused = (stage_dir / "policy" / POLICY_MANIFEST).is_file()
    if not reused:
        train_policy(config, run_dir, preference_rows=preference_rows)
    recorded = json.loads((stage_dir / "config.json").read_text())
    detail = f"{recorded['algo']}, {recorded['steps']} steps"
    return RLStage("RL", reused, stage_dir / "policy", detail, recorded)


def finished_evaluation(config) -> dict | None:
    """The report in <policy>/../eval.json if it evaluated this very config after the policy was written, else None."""
    from workbench.rl.train import POLICY_MANIFEST

    path = Path(config.policy).parent / "eval.json"
    if not path.is_file() or path.stat().st_mtime_ns <= (Path(config.policy) / POLICY_MANIFEST).stat().st_mtime_ns:
        return None  # none yet, or the policy was trained again since
    report = json.loads(path.read_text())
    return report if report.get("config") == json.loads(json.dumps(asdict(config))) else None


def ensure_evaluation(config, show_progress: bool = True) -> Evaluation:
    """<policy>/../eval.json: reused when it is `finished_evaluation`, else `evaluate_run` writes it."""
    from workbench.evaluation.report import evaluate_run

    path = Path(config.policy).parent / "eval.json"
    report = finished_evaluation(config)
    reused = report is not None
    if not reused:
        report = evaluate_run(config, path, show_progress=show_progress)
    report["path"] = str(path)
    return Evaluation("evaluation", reused, path, f"{config.n_prompts} held-out prompts", report)
