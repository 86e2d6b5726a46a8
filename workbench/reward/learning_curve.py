"""How many labels does the reward model need? Gold accuracy vs number of labels, per kind, labeler and seed.

`learning_curves` trains on the first n labels of a seed's random order (or, with active selection, grows the
labelled set from `active_start` random labels by the pairs the model is least sure about: uncertainty.py) and
scores one fixed set of held-out pairs against the labeler's GOLD reward (ties in gold or model count 0.5), on
all of them and on the clear ones (gold difference >= CLEAR_MARGIN: the pairs no careful person gets wrong).
Next to it, at the same label counts: the ceiling, a linear Bradley-Terry model on the gold's own raw features
(word count, VADER compound, the task term and its gate), i.e. what a reward model that saw exactly those could reach from the same labels.

Embedding-head kinds embed every text once and refit only the head per point (seconds); fine-tuned kinds train a
model per point through `train_reward_model`. `summarise_curves` averages the seeds (mean, t-interval).
`reward_learning_curve` is the single-kind version over a labelled set (one model per size, saved).
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from workbench.generation import prompt_text
from workbench.oracles import ON_TASK, gold_scores, positive, task_following
from workbench.reward.kinds import FINE_TUNED
from workbench.reward.pair_cache import label_pairs
from workbench.reward.score import RewardModel
from workbench.reward.train import RewardModelConfig, train_reward_model

CEILING = "gold-features"  # the linear-BT-on-gold-features reference, reported as a kind
CLEAR_MARGIN = 0.5  # gold units: 5 noise units at T = 0.1, where the annotator agrees with the gold 99 % of the time
HEAD_KINDS = ("embedding-head", "ensemble")


@dataclass
class CurveConfig:
    labelers: tuple[str, ...] = ("positive", "concise", "upbeat-concise", "helpful-upbeat-concise")  # oracles.ORACLES
    kinds: tuple[str, ...] = ("embedding-head", "ensemble", "minilm-l6")  # + CEILING is always added
    sizes: tuple[int, ...] = (25, 50, 100, 200, 400, 800)
    seeds: tuple[int, ...] = (0, 1, 2)  # label seeds: the annotator's draws and the random order of pairs
    temperature: float = 0.1  # the simulated annotator's noise (SimulatedLabeler)
    active: bool = True  # also active selection, for the embedding-head kinds (a refit per round is cheap)
    active_start: int = 25  # random labels before the first active round
    rm: RewardModelConfig = field(default_factory=lambda: RewardModelConfig(save_checkpoints=False, oracle=None,
                                                                            val_fraction=0.0))


def _agreement(scores_a, scores_b, gold_a, gold_b) -> torch.Tensor:
    agree = ((scores_a > scores_b) == (gold_a > gold_b)).double()
    agree[(scores_a == scores_b) | (gold_a == gold_b)] = 0.5
    return agree


def gold_agreement(scores_a: torch.Tensor, scores_b: torch.Tensor, gold_a: torch.Tensor, gold_b: torch.Tensor) -> float:
    """Share of pairs the model orders as the gold does; a tie on either side counts 0.5."""
    return float(_agreement(scores_a, scores_b, gold_a, gold_b).mean())


def clear_gold_agreement(scores_a: torch.Tensor, scores_b: torch.Tensor, gold_a: torch.Tensor, gold_b: torch.Tensor,
                         margin: float = CLEAR_MARGIN) -> float | None:
    """`gold_agreement` on the clear pairs only, those whose gold rewards differ by at least `margin` (None if none):
    the pairs a careful person would not get wrong, so a model's errors there are its own, not the close calls'."""
    clear = (gold_a - gold_b).abs() >= margin
    return float(_agreement(scores_a, scores_b, gold_a, gold_b)[clear].mean()) if bool(clear.any()) else None


def _accuracies(scores_a, scores_b, gold_a, gold_b) -> tuple[float, float | None]:
    return gold_agreement(scores_a, scores_b, gold_a, gold_b), clear_gold_agreement(scores_a, scores_b, gold_a, gold_b)


def gold_features(prompt, completion: str) -> list[float]:
    """The raw quantities the built-in golds are made of: word count, VADER compound sentiment, and the default
    gold's task term (relevance in [0, 1] and whether it passes the on-task gate)."""
    text = prompt_text(prompt)
    task = task_following(text, completion)
    return [float(len(completion.split())), positive(text, completion), task, float(task >= ON_TASK)]


def learning_curves(train_pairs: list[dict], eval_pairs: list[dict], config: CurveConfig,
                    out: str | Path | None = None, progress=None) -> list[dict]:
    """One row {labeler, kind, selection, seed, n_labels, gold_accuracy, train_seconds} per point. Pairs are
    {prompt, a, b} (pair_cache.cached_pairs); `out` holds fine-tuned models while they are scored (then deleted)."""
    sizes = sorted(s for s in config.sizes if s <= len(train_pairs))
    if not sizes:
        raise ValueError(f"No size in {config.sizes} fits the {len(train_pairs)} training pairs; generate more.")
    heads = _HeadFeatures(train_pairs, eval_pairs, config.rm) if set(config.kinds) & set(HEAD_KINDS) else None
    ceiling = _CeilingFeatures(train_pairs, eval_pairs)
    rows = []
    for labeler in config.labelers:
        prompts = [prompt_text(p["prompt"]) for p in eval_pairs]
        gold = torch.tensor(gold_scores(labeler, prompts * 2, [p["a"] for p in eval_pairs] + [p["b"] for p in eval_pairs]))
        gold_a, gold_b = gold[: len(eval_pairs)], gold[len(eval_pairs) :]
        n_clear = int(((gold_a - gold_b).abs() >= CLEAR_MARGIN).sum())  # the pairs clear_gold_accuracy is on
        for seed in config.seeds:
            labelled = label_pairs(train_pairs, labeler, config.temperature, seed)
            order = list(range(len(train_pairs)))
            random.Random(seed).shuffle(order)
            point = {"labeler": labeler, "seed": seed, "n_clear_pairs": n_clear}
            for kind in (*config.kinds, CEILING):
                selections = ("random", "active") if config.active and kind in HEAD_KINDS else ("random",)
                for selection in selections:
                    started = time.perf_counter()
                    if kind == CEILING:
                        results = ceiling.curve(labelled, order, sizes, gold_a, gold_b)
                    elif kind in HEAD_KINDS:
                        results = heads.curve(kind, labelled, order, sizes, gold_a, gold_b, selection == "active",
                                              config.active_start, seed)
                    else:
                        results = _fine_tuned_curve(kind, labelled, order, sizes, eval_pairs, gold_a, gold_b,
                                                    config.rm, seed, Path(out or "runs/learning_curves"))
                    for n_labels, (accuracy, clear), seconds in results:
                        rows.append({**point, "kind": kind, "selection": selection, "n_labels": n_labels,
                                     "gold_accuracy": round(accuracy, 4),
                                     "clear_gold_accuracy": None if clear is None else round(clear, 4),
                                     "train_seconds": round(seconds, 3)})
                    if progress:
                        progress(f"{labeler} seed {seed} {kind} {selection}: {time.perf_counter() - started:.1f} s")
    return rows


def _targets(rows: list[dict]) -> torch.Tensor:
    return torch.tensor([0.5 if r["choice"] == "tie" else 1.0 for r in rows])


def _oriented(labelled: list[dict], index: list[int], side_a: torch.Tensor, side_b: torch.Tensor):
    """(chosen features, rejected features, targets) of the labelled pairs `index` from per-pair side features."""
    chosen = torch.stack([side_b[i] if labelled[i]["choice"] == "B" else side_a[i] for i in index])
    rejected = torch.stack([side_a[i] if labelled[i]["choice"] == "B" else side_b[i] for i in index])
    return chosen, rejected, _targets([labelled[i] for i in index])


class _HeadFeatures:
    """Raw embedding-head features of every train and eval side, computed once; heads refitted per point."""

    def __init__(self, train_pairs: list[dict], eval_pairs: list[dict], rm: RewardModelConfig):
        from workbench.reward.embedding_head import EmbeddingHeadRewardModel, text_features
        from workbench.reward.train import load_reward_encoder

        self.encoder, self.tokenizer = load_reward_encoder(rm.backbone or "minilm-l6")
        self.rm = rm
        probe = EmbeddingHeadRewardModel(self.encoder, self.tokenizer)

        def sides(pairs: list[dict], side: str) -> torch.Tensor:
            return text_features(probe, self.tokenizer, [p["prompt"] for p in pairs], [p[side] for p in pairs],
                                 rm.max_length)

        self.train_a, self.train_b = sides(train_pairs, "a"), sides(train_pairs, "b")
        self.eval_a, self.eval_b = sides(eval_pairs, "a"), sides(eval_pairs, "b")
        self.models = {"embedding-head": EmbeddingHeadRewardModel(self.encoder, self.tokenizer, 1),
                       "ensemble": EmbeddingHeadRewardModel(self.encoder, self.tokenizer, rm.ensemble_size)}

    def curve(self, kind, labelled, order, sizes, gold_a, gold_b, active: bool, active_start: int, seed: int):
        from workbench.reward.embedding_head import fit_heads
        from workbench.reward.uncertainty import head_preferences

        model = self.models[kind]
        chosen_index = order[: min(active_start, sizes[0])] if active else []
        results = []
        for size in sizes:
            started = time.perf_counter()
            if not active:
                chosen_index = order[:size]
            else:
                while len(chosen_index) < size:  # one round: label the pairs the current fit is least sure about
                    fit_heads(model, *_oriented(labelled, chosen_index, self.train_a, self.train_b), self.rm.head_l2, seed)
                    taken = set(chosen_index)
                    pool = [i for i in order if i not in taken]
                    p, std, _ = head_preferences(model, self.train_a[pool], self.train_b[pool])
                    ranked = sorted(range(len(pool)), key=lambda j: (-float(std[j]), abs(float(p[j]) - 0.5)))
                    batch = min(size - len(chosen_index), max(25, len(chosen_index) // 2))  # rounds grow by <= 50 %
                    chosen_index += [pool[j] for j in ranked[:batch]]
            fit_heads(model, *_oriented(labelled, chosen_index, self.train_a, self.train_b), self.rm.head_l2, seed)
            with torch.no_grad():
                scores_a = model.head_scores(self.eval_a).mean(1)
                scores_b = model.head_scores(self.eval_b).mean(1)
            results.append((size, _accuracies(scores_a, scores_b, gold_a, gold_b), time.perf_counter() - started))
        return results


class _CeilingFeatures:
    """Linear Bradley-Terry on the gold's raw features (standardised), fitted by the same Newton solver."""

    def __init__(self, train_pairs: list[dict], eval_pairs: list[dict]):
        def sides(pairs, side):
            gold_scores("task", [prompt_text(p["prompt"]) for p in pairs], [p[side] for p in pairs])  # batched embeds
            return torch.tensor([gold_features(p["prompt"], p[side]) for p in pairs], dtype=torch.float64)

        self.train_a, self.train_b = sides(train_pairs, "a"), sides(train_pairs, "b")
        self.eval_a, self.eval_b = sides(eval_pairs, "a"), sides(eval_pairs, "b")
        self.scale = torch.cat([self.train_a, self.train_b]).std(0).clamp_min(1e-9)

    def curve(self, labelled, order, sizes, gold_a, gold_b, l2: float = 1e-2):
        from workbench.reward.embedding_head import fit_bradley_terry

        results = []
        for size in sizes:
            started = time.perf_counter()
            chosen, rejected, targets = _oriented(labelled, order[:size], self.train_a, self.train_b)
            w, _ = fit_bradley_terry((chosen - rejected) / self.scale, targets, l2)
            accuracies = _accuracies(self.eval_a / self.scale @ w, self.eval_b / self.scale @ w, gold_a, gold_b)
            results.append((size, accuracies, time.perf_counter() - started))
        return results


def _fine_tuned_curve(kind, labelled, order, sizes, eval_pairs, gold_a, gold_b, rm: RewardModelConfig, seed: int,
                      out: Path):
    if kind not in FINE_TUNED:
        raise ValueError(f"learning_curves: unknown kind {kind!r}; choose from {HEAD_KINDS + FINE_TUNED}.")
    prompts = [p["prompt"] for p in eval_pairs]
    results = []
    for size in sizes:
        folder = out / f"{kind}-seed{seed}-n{size}"
        result = train_reward_model([labelled[i] for i in order[:size]],
                                    replace(rm, kind=kind, seed=seed, val_fraction=0.0, save_checkpoints=False), folder)
        scorer = RewardModel.load(result.model_dir, bf16=False)
        scores_a = torch.tensor(scorer.score(prompts, [p["a"] for p in eval_pairs]))
        scores_b = torch.tensor(scorer.score(prompts, [p["b"] for p in eval_pairs]))
        results.append((size, _accuracies(scores_a, scores_b, gold_a, gold_b), result.seconds))
        shutil.rmtree(folder, ignore_errors=True)  # a model per point would fill the disk
    return results


def summarise_curves(rows: list[dict]) -> list[dict]:
    """Mean gold accuracy over seeds per (labeler, kind, selection, n_labels), with a 95 % t-interval, and the mean
    accuracy on clear pairs (`clear_gold_agreement`) where the rows have it."""
    from scipy import stats

    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["labeler"], row["kind"], row["selection"], row["n_labels"]), []).append(row)
    summary = []
    for (labeler, kind, selection, n_labels), members in groups.items():
        values = [r["gold_accuracy"] for r in members]
        values_t = torch.tensor(values, dtype=torch.float64)
        mean = float(values_t.mean())
        half = float(stats.t.ppf(0.975, len(values) - 1) * values_t.std() / len(values) ** 0.5) if len(values) > 1 else 0.0
        clear = [r["clear_gold_accuracy"] for r in members if r.get("clear_gold_accuracy") is not None]
        summary.append({"labeler": labeler, "kind": kind, "selection": selection, "n_labels": n_labels,
                        "gold_accuracy": round(mean, 4), "low": round(max(mean - half, 0.0), 4),
                        "high": round(min(mean + half, 1.0), 4), "n_seeds": len(values),
                        "clear_gold_accuracy": round(sum(clear) / len(clear), 4) if clear else None})
    return summary


def reward_learning_curve(train_rows: list[dict], eval_rows: list[dict], sizes: list[int],
                          config: RewardModelConfig, out: str | Path) -> list[dict]:
    """One reward model per size (the first n training rows), each in <out>/n<size>/; returns one row per size
    with accuracy against the labels and, when config.oracle is set, against gold, both with 95% CIs."""
    from workbench.evaluation.reward_diagnostics import diagnose_reward_model

    curve = []
    for size in sorted(sizes):
        if size > len(train_rows):
            raise ValueError(f"size {size} is larger than the {len(train_rows)} training rows available")
        result = train_reward_model(train_rows[:size], replace(config, val_fraction=0.0, save_checkpoints=False), Path(out) / f"n{size}")
        diagnostics = diagnose_reward_model(RewardModel.load(result.model_dir), eval_rows, config.oracle, config.seed)
        row = {"n_labels": size, "kind": result.kind, "train_seconds": round(result.seconds, 2),
               "accuracy": diagnostics["accuracy"]}
        if config.oracle:
            row["gold_accuracy"] = diagnostics["gold_accuracy"]
        curve.append(row)
    return curve
