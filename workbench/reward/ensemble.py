"""`ensemble` of fine-tuned reward models: K sequence classifiers (K seeds on bootstrap resamples of the pairs)
behind one module whose reward is their mean score (Lakshminarayanan et al. 2017, deep ensembles).

An ensemble of embedding heads is not built here: its members share one frozen encoder, so it is one
`EmbeddingHeadRewardModel` with K heads (embedding_head.py). Both expose `member_scores` (B, K); the spread of
P(A > B) over members is the uncertainty (uncertainty.py).

Saved as <model_dir>/members/m<k>/reward/model (each a complete reward model, written by `train_reward_model`),
the shared tokenizer in <model_dir>, and the manifest listing the member folders.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

MEMBERS_DIR = "members"


class EnsembleRewardModel(nn.Module):
    """K classifiers reading the same tokens; `score` is a (K -> 1) mean, which fold_normalisation can rescale."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.config = members[0].config  # TRL names the reward function after config._name_or_path
        self.score = nn.Linear(len(members), 1)
        with torch.no_grad():
            self.score.weight.fill_(1.0 / len(members)), self.score.bias.zero_()

    @property
    def n_heads(self) -> int:
        return len(self.members)

    def member_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) -> each member's reward (B, K)."""
        return torch.cat([m(input_ids=input_ids, attention_mask=attention_mask).logits[:, :1] for m in self.members], 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        return SequenceClassifierOutput(logits=self.score(self.member_scores(input_ids, attention_mask)))  # (B, 1)

    @classmethod
    def load(cls, model_dir: str | Path, manifest: dict):
        from workbench.models import load_reward_backbone

        loaded = [load_reward_backbone(str(Path(model_dir) / member)) for member in manifest["members"]]
        return cls([model for model, _ in loaded]).eval(), loaded[0][1]


def bootstrap(rows: list[dict], seed: int) -> list[dict]:
    """A resample of the rows with replacement (same size): what makes fine-tuned members disagree where the
    labels do not pin the reward down, beyond their different seeds."""
    generator = torch.Generator().manual_seed(seed)
    return [rows[i] for i in torch.randint(len(rows), (len(rows),), generator=generator).tolist()]


def member_dir(k: int) -> str:
    return f"{MEMBERS_DIR}/m{k}"
