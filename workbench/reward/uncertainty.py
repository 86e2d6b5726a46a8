"""How sure is the reward model about a pair? P(A > B) with an uncertainty, and active selection of pairs.

  p      = sigmoid(r_A - r_B)                       the model's preference (the mean score for an ensemble)
  std    = ensemble / K heads: the standard deviation over members of sigmoid(r_A,k - r_B,k)
           single embedding head: the Laplace posterior r_A - r_B ~ N(mu, d^T H^-1 d) (embedding_head.py),
           carried to P exactly: the std of sigmoid(N(mu, var)) by Gauss-Hermite quadrature
           single fine-tuned model: 0 (no posterior)

Active selection (uncertainty sampling, Lewis & Gale 1994; for reward models e.g. Dwaracherla et al. 2024)
labels next the pairs with the largest std, and breaks ties (all zeros for a single fine-tuned model) by how close
p is to 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.generation import Prompt


@dataclass(frozen=True)
class PairPreference:
    p_a: float  # P(A > B)
    std: float  # uncertainty of P(A > B), see the module docstring
    source: str  # "ensemble", "laplace" or "none"


def pair_preferences(rm, prompts: list[Prompt], completions_a: list[str],
                     completions_b: list[str]) -> list[PairPreference]:
    """P(A > B) and its uncertainty for each pair, from a `RewardModel` of any kind."""
    from workbench.reward.embedding_head import EmbeddingHeadRewardModel

    from workbench.reward.embedding_head import text_features

    if isinstance(rm.model, EmbeddingHeadRewardModel):
        features = [text_features(rm.model, rm.tokenizer, prompts, side, rm.max_length).to(rm.model.feature_mean)
                    for side in (completions_a, completions_b)]
        p, std, source = head_preferences(rm.model, *features)
    else:
        a = torch.tensor(rm.member_scores(prompts, completions_a))  # (N, K)
        b = torch.tensor(rm.member_scores(prompts, completions_b))
        p = torch.sigmoid(a.mean(1) - b.mean(1))  # (N,)
        std, source = (torch.sigmoid(a - b).std(1, correction=0), "ensemble") if a.shape[1] > 1 else \
            (torch.zeros_like(p), "none")
    return [PairPreference(float(pi), float(si), source) for pi, si in zip(p, std)]


@torch.no_grad()
def head_preferences(head, features_a: torch.Tensor, features_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(p (N,), std (N,), source) for an embedding head from raw features (N, D) of the two sides."""
    from workbench.reward.embedding_head import pair_posterior

    a, b = head.head_scores(features_a), head.head_scores(features_b)  # (N, K)
    p = torch.sigmoid(a.mean(1) - b.mean(1))
    if head.n_heads > 1:
        return p, torch.sigmoid(a - b).std(1, correction=0), "ensemble"
    mean, variance = pair_posterior(head, features_a, features_b)
    return p, sigmoid_normal_std(mean, variance), "laplace"


def sigmoid_normal_std(mean: torch.Tensor, variance: torch.Tensor, n_points: int = 32) -> torch.Tensor:
    """Std of sigmoid(z) for z ~ N(mean, variance), elementwise (probabilists' Gauss-Hermite quadrature)."""
    import numpy as np

    nodes, weights = np.polynomial.hermite_e.hermegauss(n_points)
    nodes, weights = torch.tensor(nodes), torch.tensor(weights / weights.sum())
    values = torch.sigmoid(mean.double()[:, None] + variance.double().sqrt()[:, None] * nodes)  # (N, n_points)
    first, second = values @ weights, (values**2) @ weights
    return (second - first**2).clamp_min(0).sqrt().float()


def rank_by_uncertainty(preferences: list[PairPreference]) -> list[int]:
    """Indices from the least to the most certain pair: largest std first, then p closest to 0.5."""
    return sorted(range(len(preferences)), key=lambda i: (-preferences[i].std, abs(preferences[i].p_a - 0.5)))


def select_uncertain(rm, prompts: list[Prompt], completions_a: list[str], completions_b: list[str],
                     k: int) -> list[int]:
    """The indices of the k pairs the reward model is least sure about (see `rank_by_uncertainty`)."""
    return rank_by_uncertainty(pair_preferences(rm, prompts, completions_a, completions_b))[:k]
