"""`embedding-head` reward model: frozen sentence embeddings into a small L2-regularised Bradley-Terry head.

Features of a (prompt x, reply y), with e(.) MiniLM's mean-pooled, L2-normalised sentence embedding (what
all-MiniLM-L6-v2 was trained to produce) and n = the reply's token count:

    phi(x, y) = [ e(y),  e(x) * e(y),  log(1 + n),  log(1 + n)^2 ]          # (D,) = (2 * 384 + 2,)
    r(x, y)   = w . (phi - mu) / s + b                                      # mu, s: feature mean/std on training texts

The product term lets the reply's meaning count differently per prompt; the two length terms let a linear head
express "neither too short nor too long" (the embeddings themselves carry little length). Their value on real
pairs is to be measured (docs/reward_models.md). Fit (Bradley & Terry 1952; Ouyang et al. 2022 eq. 1, plus a
Gaussian prior on w):

    loss(w) = -sum_i [ t_i log sigmoid(w . d_i) + (1 - t_i) log sigmoid(-w . d_i) ] + l2 / 2 * |w|^2
    d_i = phi(chosen_i) - phi(rejected_i),  t_i = 1 for a preference and 0.5 for a tie (half a win each side)

The default prior is strong (l2 = 1e4: on real shaped pairs a weak one overfits and loses accuracy as labels grow),
which shrinks every margin toward 0; the head is then rescaled, w <- s w, with s fitted on out-of-fold margins
(`platt_scale`), so P(A > B) = sigmoid(r_A - r_B) is calibrated on pairs the head did not see.

Why not TRL's RewardTrainer here: with a frozen encoder this is a tiny convex problem. The Trainer would re-run
the encoder on every pair every epoch; we embed each text once and solve the head exactly with Newton's method
(~10 steps), whose final Hessian H = sum_i p_i (1 - p_i) d_i d_i^T + l2 I is also the Laplace posterior
precision of w (MacKay 1992): Var[r_A - r_B] = d^T H^-1 d is the head's uncertainty for a pair.

As a module it reads the same input as every reward model here, `[CLS] reply [SEP] prompt [SEP]`
(`reward_text`, completion first), splits it at the first [SEP] and embeds the two parts apart, so TRL can call it
like a sequence classifier: `model(input_ids, attention_mask).logits` of shape (B, 1). With K > 1 heads (the
`ensemble` kind over one frozen encoder: the members differ only in their heads), `score` averages them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HEAD_FILE = "head.safetensors"
ENCODER_DIR = "encoder"
N_LENGTH_FEATURES = 2


class EmbeddingHeadRewardModel(nn.Module):
    """Frozen encoder + K linear Bradley-Terry heads + `score`, a (K -> 1) mean that also holds any normalisation."""

    def __init__(self, encoder, tokenizer, n_heads: int = 1):
        super().__init__()
        if tokenizer.sep_token_id is None or tokenizer.cls_token_id is None:
            raise ValueError("kind 'embedding-head' needs a BERT-style encoder with [CLS]/[SEP] tokens (e.g. "
                             f"minilm-l6); {type(tokenizer).__name__} has none. Fix: use backbone='minilm-l6' or "
                             "kind='policy' for a decoder.")
        self.encoder = encoder.eval().requires_grad_(False)
        self.config = encoder.config  # TRL names the reward function after config._name_or_path
        self.sep_id, self.cls_id, self.pad_id = tokenizer.sep_token_id, tokenizer.cls_token_id, tokenizer.pad_token_id
        dim = 2 * encoder.config.hidden_size + N_LENGTH_FEATURES
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_scale", torch.ones(dim))
        self.register_buffer("posterior_cov", torch.zeros(dim, dim))  # Laplace covariance of heads[0]; K = 1 only
        self.heads = nn.Linear(dim, n_heads)  # (D -> K)
        self.score = nn.Linear(n_heads, 1)  # (K -> 1): the mean of the heads; fold_normalisation rescales it
        with torch.no_grad():
            self.heads.weight.zero_(), self.heads.bias.zero_()
            self.score.weight.fill_(1.0 / n_heads), self.score.bias.zero_()

    @property
    def n_heads(self) -> int:
        return self.heads.out_features

    def _embed(self, segments: list[list[int]]) -> torch.Tensor:
        """Mean-pooled, L2-normalised embeddings of `[CLS] segment [SEP]`, as sentence-transformers computes them."""
        rows = [[self.cls_id, *segment, self.sep_id] for segment in segments]
        width = max(len(r) for r in rows)
        device = self.feature_mean.device
        ids = torch.tensor([r + [self.pad_id] * (width - len(r)) for r in rows], device=device)  # (N, T)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)  # (N, T)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()  # (N, T, H)
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (N, H)
        return nn.functional.normalize(pooled, dim=-1)

    def raw_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """phi for a batch of `[CLS] reply [SEP] prompt [SEP]` rows (right or left padded): (B, T) -> (B, D)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        replies, prompts = [], []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            ids = [i for i, m in zip(ids, mask) if m]
            ids = ids[1:] if ids and ids[0] == self.cls_id else ids
            cut = ids.index(self.sep_id) if self.sep_id in ids else len(ids)
            rest = ids[cut + 1 :]
            replies.append(ids[:cut])
            prompts.append(rest[:-1] if rest and rest[-1] == self.sep_id else rest)
        embedded = self._embed(replies + prompts)
        e_reply, e_prompt = embedded[: len(replies)], embedded[len(replies) :]
        n = torch.log1p(torch.tensor([float(len(r)) for r in replies], device=e_reply.device))[:, None]  # (B, 1)
        return torch.cat([e_reply, e_prompt * e_reply, n, n * n], dim=1)

    def to_inference_dtype(self, dtype: torch.dtype) -> "EmbeddingHeadRewardModel":
        """Cast the frozen encoder only: its embeddings are read back in fp32 (`_embed`), the head stays fp32."""
        self.encoder.to(dtype)
        return self

    def head_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Raw features (B, D) -> each head's reward (B, K)."""
        return self.heads((features - self.feature_mean) / self.feature_scale)

    def member_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) -> each head's reward (B, K)."""
        with torch.no_grad():  # the encoder is frozen; only the heads were fitted
            return self.head_scores(self.raw_features(input_ids, attention_mask))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        return SequenceClassifierOutput(logits=self.score(self.member_scores(input_ids, attention_mask)))  # (B, 1)

    # ------------------------------------------------------------------ save / load

    def save(self, model_dir: str | Path, tokenizer) -> None:
        from safetensors.torch import save_file

        model_dir = Path(model_dir)
        self.encoder.save_pretrained(model_dir / ENCODER_DIR)
        tokenizer.save_pretrained(model_dir)
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("encoder.")}
        save_file(tensors, str(model_dir / HEAD_FILE), metadata={"n_heads": str(self.n_heads)})

    @classmethod
    def load(cls, model_dir: str | Path):
        """(module, tokenizer) from a folder written by `save`."""
        from safetensors import safe_open
        from transformers import AutoModel, AutoTokenizer

        from workbench.models import no_library_bars

        model_dir = Path(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        with no_library_bars():
            encoder = AutoModel.from_pretrained(model_dir / ENCODER_DIR, trust_remote_code=False)
        with safe_open(str(model_dir / HEAD_FILE), "pt") as handle:
            n_heads = int(handle.metadata()["n_heads"])
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        encoder.config._name_or_path = str(model_dir)  # TRL names the reward after its last part ("model")
        model = cls(encoder, tokenizer, n_heads)
        model.load_state_dict(tensors, strict=False)  # the encoder's weights came from its own folder
        return model.eval(), tokenizer


@torch.inference_mode()
def text_features(model: EmbeddingHeadRewardModel, tokenizer, prompts: list, completions: list[str],
                  max_length: int = 256, batch_size: int = 64) -> torch.Tensor:
    """Raw features (N, D) of (prompt, completion) pairs through the same `reward_text` input the module reads,
    in batches of similar length; each distinct text is embedded once."""
    from workbench.reward.score import COMPLETION_FIRST, reward_text

    texts = [reward_text(tokenizer, p, c, COMPLETION_FIRST) for p, c in zip(prompts, completions)]
    unique = sorted(set(texts), key=len)
    rows = {}
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        batch = tokenizer(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        for text, row in zip(chunk, model.raw_features(batch["input_ids"], batch["attention_mask"])):
            rows[text] = row
    return torch.stack([rows[t] for t in texts]) if texts else torch.zeros(0, model.heads.in_features)


def fit_bradley_terry(diffs: torch.Tensor, targets: torch.Tensor, l2: float, max_steps: int = 50,
                      tolerance: float = 1e-6, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton's method for the L2-regularised BT loss above: d (N, D), t (N,) -> (w (D,), H^-1 (D, D)), float64.
    `weights` (N,) scale each pair's term (a ranking's pairs weigh 1/C(K, 2) each: reward/listwise.py).
    With fewer pairs than features each step solves an (N, N) system instead (push-through identity:
    (l2 I + D^T S D)^-1 = (I - D^T (l2 I + S D D^T)^-1 S D) / l2, S = diag p (1 - p))."""
    diffs, targets = diffs.double(), targets.double()
    weights = torch.ones(len(targets), dtype=torch.float64) if weights is None else weights.double()
    n, dim = diffs.shape
    gram = diffs @ diffs.T if n < dim else None  # (N, N)

    def solve(curvature: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:  # H^-1 rhs, rhs (D,) or (D, M)
        if gram is None:
            hessian = diffs.T @ (diffs * curvature[:, None]) + l2 * torch.eye(dim, dtype=torch.float64)
            return torch.linalg.solve(hessian, rhs)
        inner = l2 * torch.eye(n, dtype=torch.float64) + curvature[:, None] * gram  # l2 I + S D D^T
        return (rhs - diffs.T @ torch.linalg.solve(inner, curvature.reshape(-1, *[1] * (rhs.dim() - 1)) * (diffs @ rhs))) / l2

    w = torch.zeros(dim, dtype=torch.float64)
    for _ in range(max_steps):
        p = torch.sigmoid(diffs @ w)  # (N,)
        step = solve(weights * p * (1 - p), diffs.T @ (weights * (p - targets)) + l2 * w)  # H^-1 gradient
        w = w - step
        if float(step.abs().max()) < tolerance:
            break
    p = torch.sigmoid(diffs @ w)
    return w, solve(weights * p * (1 - p), torch.eye(dim, dtype=torch.float64))


def block_scale(texts: torch.Tensor, hidden: int) -> torch.Tensor:
    """One scale per feature block (reply embedding, product, each length term): the block's RMS std over the
    training texts. Per-block, not per-feature: the prior then stays isotropic inside the embedding, favouring
    its high-variance directions, where the meaning varies (synthetic check in docs/reward_models.md)."""
    std = texts.std(0) if len(texts) > 1 else torch.ones(texts.shape[1])
    blocks = [slice(0, hidden), slice(hidden, 2 * hidden)] + [slice(2 * hidden + i, 2 * hidden + i + 1)
                                                            for i in range(texts.shape[1] - 2 * hidden)]
    scale = torch.ones(texts.shape[1])
    for block in blocks:
        scale[block] = std[block].pow(2).mean().sqrt().clamp_min(1e-6)
    return scale


def platt_scale(margins: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                steps: int = 30) -> float:
    """s maximising the BT likelihood of s * margins (Platt 1999, one parameter, no bias: r_A - r_B has no side).
    Newton on a 1-D concave problem; s >= 0 (a head whose margins anti-predict held-out labels gets s = 0+)."""
    m, t = margins.double(), targets.double()
    w = torch.ones_like(m) if weights is None else weights.double()
    s = 1.0
    for _ in range(steps):
        p = torch.sigmoid(s * m)
        gradient, curvature = float((w * (t - p) * m).sum()), float((w * p * (1 - p) * m * m).sum())
        if curvature <= 1e-12:
            break
        s = max(s + gradient / curvature, 1e-6)
    return s


def cross_validated_margins(diffs: torch.Tensor, targets: torch.Tensor, l2: float, weights: torch.Tensor | None = None,
                            folds: int = 5, seed: int = 0) -> torch.Tensor:
    """Out-of-fold margins (N,) of the BT head: each pair scored by a head fitted on the other folds."""
    n = len(targets)
    fold_of = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) % folds
    margins = torch.zeros(n, dtype=torch.float64)
    for fold in range(folds):
        held, train = fold_of == fold, fold_of != fold
        w, _ = fit_bradley_terry(diffs[train], targets[train], l2, weights=None if weights is None else weights[train])
        margins[held] = diffs[held].double() @ w
    return margins


MIN_PAIRS_TO_CALIBRATE = 10  # below this, out-of-fold margins are too few to fit a scale: s = 1


def fit_heads(model: EmbeddingHeadRewardModel, chosen: torch.Tensor, rejected: torch.Tensor, targets: torch.Tensor,
              l2: float, seed: int = 0, weights: torch.Tensor | None = None) -> None:
    """Fit the model's standardisation and heads on raw features (N, D) of the two sides. Head 0 sees every pair;
    with K > 1 heads, heads 1.. see bootstrap resamples of the pairs (bagging: their spread is the uncertainty).
    A strong prior (large l2) picks the direction; `platt_scale` on 5-fold out-of-fold margins then sets the
    heads' scale, so P(A > B) is calibrated on pairs the head did not see (docs/reward_models.md)."""
    texts = torch.cat([chosen, rejected])
    mean, scale = texts.mean(0), block_scale(texts, model.encoder.config.hidden_size)
    diffs = (chosen - rejected) / scale  # the mean cancels in a difference
    s = 1.0
    if len(diffs) >= MIN_PAIRS_TO_CALIBRATE:
        s = platt_scale(cross_validated_margins(diffs, targets, l2, weights, seed=seed), targets, weights)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.feature_mean.copy_(mean), model.feature_scale.copy_(scale)
        for k in range(model.n_heads):
            index = torch.arange(len(diffs)) if k == 0 else torch.randint(len(diffs), (len(diffs),), generator=generator)
            w, cov = fit_bradley_terry(diffs[index], targets[index], l2,
                                       weights=None if weights is None else weights[index])
            w = s * w  # r = s * w . phi: the calibrated head
            model.heads.weight[k] = w.float()
            model.heads.bias[k] = -float((((texts - mean) / scale).double() @ w).mean())  # centred on training texts
            if k == 0:
                model.posterior_cov.copy_((s * s * cov).float())  # Var[s w . d] = s^2 d^T H^-1 d


def pair_posterior(model: EmbeddingHeadRewardModel, features_a: torch.Tensor,
                   features_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Head 0's Laplace posterior of r_A - r_B for raw features (N, D): (mean (N,), variance (N,))."""
    d = (features_a - features_b) / model.feature_scale
    mean = d @ model.heads.weight[0]  # w . d: the mean and the bias cancel in a difference
    variance = torch.einsum("nd,de,ne->n", d, model.posterior_cov, d)
    return mean, variance.clamp_min(0)


def head_manifest(model: EmbeddingHeadRewardModel, l2: float) -> dict:
    """What the manifest records about the head (the files are fixed: HEAD_FILE, ENCODER_DIR)."""
    return {"n_heads": model.n_heads, "n_features": model.heads.in_features, "l2": l2,
            "features": "[e(reply), e(prompt) * e(reply), log(1+n), log(1+n)^2]"}
