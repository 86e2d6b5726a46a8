"""The learning curve of an embedding-head reward model on the labels it was trained on: would more labels help?

Cross-validated, because a person's first few dozen labels leave too few for a separate validation split: the
training pairs are cut into `folds` folds; at each size n, a head is fitted on n pairs drawn from the other folds
and predicts every pair of the held-out fold. Pooled over folds, each pair is predicted once per size, so every
point is measured on all labelled pairs. Cheap: the features are embedded once, each fit is a small Newton solve.
"""

from __future__ import annotations

import math
import random

import torch

from workbench.reward.embedding_head import block_scale, fit_bradley_terry, platt_scale

CURVE_FILE = "label_curve.json"  # in <run>/reward/, next to eval.json


def size_ladder(n_max: int, smallest: int = 8) -> list[int]:
    """Doubling sizes from `smallest` up to n_max, n_max included."""
    sizes, n = [], smallest
    while n < n_max:
        sizes.append(n)
        n *= 2
    return sizes + [n_max] if n_max >= 2 else []


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max((centre - half) / (1 + z * z / n), 0.0), min((centre + half) / (1 + z * z / n), 1.0)


def label_curve(chosen: torch.Tensor, rejected: torch.Tensor, targets: torch.Tensor, l2: float, folds: int = 5,
                seed: int = 0, weights: torch.Tensor | None = None, gold_chosen: torch.Tensor | None = None,
                gold_rejected: torch.Tensor | None = None) -> list[dict]:
    """Raw head features (N, D) of both sides, targets (N,) (1 = chosen wins, 0.5 = tie) -> one row per size:
    {n_labels, accuracy, low, high, n_evaluated, log_loss, train_accuracy[, gold_accuracy, gold_low, gold_high]}.
    Accuracy counts non-tie pairs whose preferred side scores higher; log_loss is the held-out BT loss (ties too)."""
    n = len(targets)
    folds = min(folds, n)
    if folds < 2:
        return []
    order = list(range(n))
    random.Random(seed).shuffle(order)
    fold_of = torch.empty(n, dtype=torch.long)
    fold_of[order] = torch.arange(n) % folds
    hidden = (chosen.shape[1] - 2) // 2  # features: [e(reply), e(prompt) * e(reply), log(1+n), log(1+n)^2]
    weights = torch.ones(n) if weights is None else weights
    decided, t = targets != 0.5, targets.double()  # accuracy counts the non-tie pairs
    n_decided = int(decided.sum())
    gold_diff = None if gold_chosen is None or gold_rejected is None else gold_chosen - gold_rejected
    known = None if gold_diff is None else gold_diff != 0  # pairs the gold orders
    rows = []
    for size in size_ladder(n - math.ceil(n / folds)):
        margins, train_hits, train_counted = torch.zeros(n, dtype=torch.float64), 0.0, 0
        for fold in range(folds):
            held, pool = (fold_of == fold).nonzero().flatten(), (fold_of != fold).nonzero().flatten()
            train = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed + size))[:size]]
            scale = block_scale(torch.cat([chosen[train], rejected[train]]), hidden)
            diffs = (chosen - rejected) / scale
            w, _ = fit_bradley_terry(diffs[train], t[train], l2, weights=weights[train])
            margins[held] = diffs[held].double() @ w  # r(chosen) - r(rejected) up to the cancelled bias
            fitted = (diffs[train].double() @ w > 0).double()
            train_decided = decided[train]
            train_hits += float((fitted[train_decided] == t[train][train_decided]).sum())
            train_counted += int(train_decided.sum())
        hits = float((margins[decided] > 0).sum())
        p = torch.sigmoid(platt_scale(margins, targets, weights) * margins).clamp(1e-6, 1 - 1e-6)  # as fit_heads
        log_loss = float(-(t * p.log() + (1 - t) * (1 - p).log()).mean())
        low, high = wilson_interval(hits, n_decided)
        row = {"n_labels": size, "accuracy": round(hits / max(n_decided, 1), 4), "low": round(low, 4),
               "high": round(high, 4), "n_evaluated": n_decided, "log_loss": round(log_loss, 4),
               "train_accuracy": round(train_hits / max(train_counted, 1), 4)}
        if gold_diff is not None:  # agreement of the held-out margins with the gold labeler's order of the same two texts
            gold_hits = float(((margins[known] > 0) == (gold_diff[known] > 0)).sum())
            g_low, g_high = wilson_interval(gold_hits, int(known.sum()))
            row.update(gold_accuracy=round(gold_hits / max(int(known.sum()), 1), 4), gold_low=round(g_low, 4),
                       gold_high=round(g_high, 4))
        rows.append(row)
    return rows
