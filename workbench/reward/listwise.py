"""Reward models from rankings: a ranking's C(K, 2) pairs weighted once (InstructGPT), or its Plackett-Luce likelihood.

Rows are preference pairs {prompt, chosen, rejected, choice}; those exported from a ranking
(`preferences.ranking_io.export_ranking_pairs`) carry its `ranking_id`, plain pairs none.

Pairwise, as InstructGPT (Ouyang et al. 2022, eq. 1): loss = -1 / C(K, 2) * sum over the ranking's pairs of
log sigmoid(r(x, y_w) - r(x, y_l)), all pairs of one prompt in one batch element, so each ranking counts once
("if we simply shuffle the comparisons into one dataset, a single pass causes the reward model to overfit"):

    weight_i = 1 / n_r   for each of the n_r exported pairs of ranking r   (ranking_weight="per-ranking", default)
    weight_i = 1         for a plain pair, and for every pair with ranking_weight="per-pair"
    embedding head:  loss(w) = -sum_i weight_i [t_i log s(w . d_i) + (1 - t_i) log s(-w . d_i)] + l2 / 2 |w|^2

n_r is C(K, 2) when ties are kept; with ties dropped the remaining pairs of the ranking share its weight of 1.
Both sides of every pair of one ranking are in one split (`train.is_validation` hashes the ranking, not the pair).

Listwise, Plackett-Luce (Plackett 1975; for K-wise comparisons Zhu, Jordan & Jiao 2023 show the K-wise MLE is
more efficient than splitting into pairs), ranking_loss="plackett-luce", embedding-head kind:

    log P(ranking) = sum over rank levels l [ sum_{i in level l} r_i - m_l * log sum_{j ranked l or worse} exp(r_j) ]

m_l = the number of answers tied at level l (Breslow's approximation for ties); K = 2 is Bradley-Terry. A plain
pair is a ranking of 2. Each ranking is one likelihood term, so it counts once without any weight. Convex in the
head's w; solved by Newton's method, whose final Hessian is the Laplace posterior precision, as for the BT head.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from workbench.generation import completion_text

RANKING_WEIGHTS = ("per-ranking", "per-pair")
RANKING_LOSSES = ("pairs", "plackett-luce")


def ranking_weights(rows: list[dict], mode: str = "per-ranking") -> torch.Tensor:
    """Per-row weights (N,): 1 / (rows of its ranking) for ranking rows under "per-ranking", else 1."""
    if mode not in RANKING_WEIGHTS:
        raise ValueError(f"ranking_weight={mode!r}; choose one of {', '.join(RANKING_WEIGHTS)}.")
    sizes = defaultdict(int)
    for row in rows:
        if row.get("ranking_id") is not None:
            sizes[row["ranking_id"]] += 1
    return torch.tensor([1.0 / sizes[row["ranking_id"]] if mode == "per-ranking" and row.get("ranking_id")
                         is not None else 1.0 for row in rows], dtype=torch.float64)


def ranking_groups(rows: list[dict]) -> list[tuple[list[int], list[int]]]:
    """Rows -> rankings [(text indices, ranks)], indices into the (2N,) stack [chosen sides; rejected sides].
    A ranking's ranks are rebuilt from its pairs: 1 + the number of its texts that beat the text (ties, kept or
    dropped, beat nobody). A plain pair is a ranking of 2 (a tie: both rank 1)."""
    n, members = len(rows), defaultdict(list)
    for index, row in enumerate(rows):
        members[("ranking", row["ranking_id"]) if row.get("ranking_id") is not None else ("pair", index)].append(index)
    groups = []
    for indices in members.values():
        where, beaten_by = {}, defaultdict(set)
        for index in indices:
            chosen, rejected = completion_text(rows[index]["chosen"]), completion_text(rows[index]["rejected"])
            where.setdefault(chosen, index)
            where.setdefault(rejected, n + index)
            if rows[index].get("choice") != "tie":
                beaten_by[rejected].add(chosen)
        texts = list(where)
        groups.append(([where[t] for t in texts], [1 + len(beaten_by[t]) for t in texts]))
    return groups


def fit_plackett_luce(features: torch.Tensor, groups: list[tuple[list[int], list[int]]], l2: float,
                      max_steps: int = 50, tolerance: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton's method for the L2-regularised Plackett-Luce loss above: standardised features (M, D) and rankings
    [(indices, ranks)] -> (w (D,), H^-1 (D, D)), float64."""
    x = features.double()
    dim = x.shape[1]
    stages = []  # (candidate indices, summed features of the level, level size m)
    for indices, ranks in groups:
        for level in sorted(set(ranks)):
            candidates = [i for i, r in zip(indices, ranks) if r >= level]
            placed = [i for i, r in zip(indices, ranks) if r == level]
            if len(candidates) > 1:
                stages.append((candidates, x[placed].sum(0), len(placed)))
    if not stages:
        raise ValueError("Plackett-Luce: no ranking orders two different answers; label some first.")
    width = max(len(c) for c, _, _ in stages)
    items = torch.tensor([c + [c[0]] * (width - len(c)) for c, _, _ in stages])  # (S, Kmax), padded
    mask = torch.tensor([[True] * len(c) + [False] * (width - len(c)) for c, _, _ in stages])  # (S, Kmax)
    level_sum = torch.stack([s for _, s, _ in stages])  # (S, D)
    m = torch.tensor([float(k) for _, _, k in stages], dtype=torch.float64)  # (S,)
    xs = x[items]  # (S, Kmax, D)

    def curvature(p: torch.Tensor) -> torch.Tensor:  # sum_s m_s Cov_{p_s}(x) + l2 I
        mean = torch.einsum("sk,skd->sd", p, xs)
        hessian = torch.einsum("sk,skd,ske->de", m[:, None] * p, xs, xs) - torch.einsum("s,sd,se->de", m, mean, mean)
        return hessian + l2 * torch.eye(dim, dtype=torch.float64)

    def probabilities(w: torch.Tensor) -> torch.Tensor:  # (S, Kmax) softmax over each stage's candidates
        return torch.softmax((xs @ w).masked_fill(~mask, -torch.inf), dim=1)

    w = torch.zeros(dim, dtype=torch.float64)
    for _ in range(max_steps):
        p = probabilities(w)
        gradient = -(level_sum - m[:, None] * torch.einsum("sk,skd->sd", p, xs)).sum(0) + l2 * w
        step = torch.linalg.solve(curvature(p), gradient)
        w = w - step
        if float(step.abs().max()) < tolerance:
            break
    return w, torch.linalg.inv(curvature(probabilities(w)))


def fit_heads_plackett_luce(model, chosen: torch.Tensor, rejected: torch.Tensor, rows: list[dict], l2: float,
                            seed: int = 0) -> None:
    """`embedding_head.fit_heads` with the Plackett-Luce loss: the same standardisation and centring; head 0 sees
    every ranking, heads 1.. bootstrap resamples of the rankings (bagging)."""
    from workbench.reward.embedding_head import block_scale, platt_scale

    texts = torch.cat([chosen, rejected])  # (2N, D): group indices point into this stack
    mean, scale = texts.mean(0), block_scale(texts, model.encoder.config.hidden_size)
    standardised = (texts - mean) / scale
    groups = ranking_groups(rows)
    generator = torch.Generator().manual_seed(seed)
    targets = torch.tensor([0.5 if row.get("choice") == "tie" else 1.0 for row in rows])
    s = None
    with torch.no_grad():
        model.feature_mean.copy_(mean), model.feature_scale.copy_(scale)
        for k in range(model.n_heads):
            picked = groups if k == 0 else [groups[int(i)] for i in torch.randint(len(groups), (len(groups),),
                                                                                 generator=generator)]
            w, cov = fit_plackett_luce(standardised, picked, l2)
            if s is None:  # scale from head 0's margins on the training pairs (in-sample: PL refits per fold cost more)
                s = platt_scale(((chosen - rejected) / scale).double() @ w, targets)
            w = s * w
            cov = s * s * cov
            model.heads.weight[k] = w.float()
            model.heads.bias[k] = -float((standardised.double() @ w).mean())  # centred on the training texts
            if k == 0:
                model.posterior_cov.copy_(cov.float())
