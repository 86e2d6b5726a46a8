"""Reward-model kinds, chosen in one place (`choose_kind`), and loading any of them back (`load_reward_module`).

  embedding-head  frozen MiniLM sentence embeddings + an L2-regularised Bradley-Terry head (embedding_head.py);
                  fitted exactly in seconds; posterior uncertainty (Laplace). For few labels.
  minilm-l6       MiniLM fine-tuned end to end as a sequence classifier through TRL's RewardTrainer.
  policy          the policy's own architecture (SmolLM2-135M) as a sequence classifier through RewardTrainer, as
                  InstructGPT initialises its RM from the policy (Ouyang et al. 2022).
  ensemble        K members of one kind (`ensemble_member`): the mean score is the reward, the members' spread
                  of P(A > B) the uncertainty (Lakshminarayanan et al. 2017). K embedding heads share one frozen
                  encoder (bagged heads); K fine-tuned members are K seeds on bootstrap resamples (ensemble.py).
  auto            (default) picks by the number of usable labels, see AUTO_THRESHOLDS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

KINDS = ("auto", "embedding-head", "minilm-l6", "policy", "ensemble")
FINE_TUNED = ("minilm-l6", "policy")  # trained through TRL's RewardTrainer
DEFAULT_BACKBONE = {"embedding-head": "minilm-l6", "minilm-l6": "minilm-l6", "policy": "smollm2-135m-instruct",
                    "ensemble": "minilm-l6"}
# auto: (kind, used below this many usable labels). Heads at every size: on shaped pairs a head matches a fine-tuned
# MiniLM up to 960 labels at ~1/20 of its cost; bagged heads from 200 add the uncertainty (docs/reward_models.md).
AUTO_THRESHOLDS: tuple[tuple[str, float], ...] = (("embedding-head", 200), ("ensemble", float("inf")))


@dataclass(frozen=True)
class KindChoice:
    kind: str  # never "auto"
    backbone: str  # the model it is built on
    reason: str  # one sentence for people (the app and the manifest show it)


def choose_kind(kind: str, backbone: str | None, n_labels: int) -> KindChoice:
    """Resolve `kind` (and its default backbone) for `n_labels` usable labels (preferences + ties)."""
    if kind not in KINDS:
        raise ValueError(f"Unknown reward-model kind {kind!r}; choose one of {', '.join(KINDS)}.")
    if kind != "auto":
        return KindChoice(kind, backbone or DEFAULT_BACKBONE[kind], f"kind {kind!r} was asked for")
    if backbone not in (None, "minilm-l6"):  # another architecture named explicitly: fine-tune it
        return KindChoice("policy", backbone, f"auto: backbone {backbone!r} is fine-tuned as a sequence classifier")
    low = 0
    for chosen, below in AUTO_THRESHOLDS:
        if n_labels < below:
            limits = f"{low} <= {n_labels} usable labels < {below:g}" if below != float("inf") else \
                f"{n_labels} usable labels >= {low}"
            return KindChoice(chosen, DEFAULT_BACKBONE[chosen], f"auto: {chosen} for {limits}")
        low = below
    raise AssertionError("AUTO_THRESHOLDS must end with an infinite bound")


def load_reward_module(path: str | Path):
    """(torch module with `.logits` (B, 1) from (input_ids, attention_mask), tokenizer, manifest) for any kind."""
    from workbench.models import load_reward_backbone
    from workbench.reward.score import read_manifest

    manifest = read_manifest(path)
    kind = manifest.get("kind", "minilm-l6")  # models trained before kinds existed were fine-tuned classifiers
    if kind == "embedding-head" or (kind == "ensemble" and manifest.get("ensemble_member") == "embedding-head"):
        from workbench.reward.embedding_head import EmbeddingHeadRewardModel

        model, tokenizer = EmbeddingHeadRewardModel.load(path)
    elif kind == "ensemble":
        from workbench.reward.ensemble import EnsembleRewardModel

        model, tokenizer = EnsembleRewardModel.load(path, manifest)
    else:
        model, tokenizer = load_reward_backbone(str(path))
    return model, tokenizer, manifest
