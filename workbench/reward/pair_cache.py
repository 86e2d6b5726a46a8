"""Unlabelled pairs for learning curves, generated once and cached on disk (generation is the expensive part).

Labels are drawn later and cheaply, per labeler and seed, from the same pairs (`label_pairs`). The pairs come from
`make_pairs` with `PairConfig`'s defaults (only seed and batch size set), so they follow the project's sampling
defaults, answer shaping included; a cache made under other defaults is regenerated (its settings are stored).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from workbench.data import builtin_prompts
from workbench.generation import SamplingConfig, prompt_text
from workbench.oracles import SimulatedLabeler, gold_scores
from workbench.preferences.pairs import PairConfig, make_pairs
from workbench.preferences.simulate import prompts_for
from workbench.runs import write_json_atomic


def _settings(config: PairConfig) -> dict:
    return {"pair_config": asdict(config), "sampling_defaults": repr(SamplingConfig())}


def cached_pairs(path: str | Path, policy, n: int, split: str = "train", config: PairConfig | None = None,
                 show_progress: bool = False) -> list[dict]:
    """n pairs {prompt, a, b} from the built-in `split` prompts (cycled, fresh seeds each pass); reads `path` when
    it holds at least n pairs made with the same settings, else generates and writes them. `policy` is a
    (model, tokenizer) or a zero-argument callable returning one (loaded only when generation is needed)."""
    config = config or PairConfig(batch_size=32)
    path = Path(path)
    if path.exists():
        cached = json.loads(path.read_text())
        if cached["settings"] == json.loads(json.dumps(_settings(config))) and len(cached["pairs"]) >= n:
            return cached["pairs"][:n]
    policy = policy() if callable(policy) else policy
    records = prompts_for(int(n * 1.05) + 1, split)  # a few extra: pairs with identical sides are dropped
    per_round = len(builtin_prompts(split))
    pairs = []
    for start in range(0, len(records), per_round):  # each pass over the prompts uses fresh seeds
        round_config = replace(config, seed=config.seed + 1000 * (start // per_round))
        pairs += [{"prompt": p.prompt, "a": p.completion_a, "b": p.completion_b}
                  for p in make_pairs(records[start : start + per_round], policy, round_config,
                                      show_progress=show_progress)]
    if len(pairs) < n:
        raise RuntimeError(f"Only {len(pairs)} distinct pairs from {len(records)} prompts, {n} asked; raise n a bit.")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"settings": _settings(config), "pairs": pairs})
    return pairs[:n]


def label_pairs(pairs: list[dict], oracle: str, temperature: float, seed: int) -> list[dict]:
    """Rows {prompt, chosen, rejected, choice}, one per pair in the same order, labelled by a simulated annotator
    drawing with `seed`. Exact gold ties at T = 0 become `choice="tie"`."""
    labeler = SimulatedLabeler(oracle, temperature=temperature, seed=seed)
    prompts = [prompt_text(p["prompt"]) for p in pairs]
    gold_scores(oracle, prompts * 2, [p["a"] for p in pairs] + [p["b"] for p in pairs])  # batched embedding, cached
    rows = []
    for pair in pairs:
        choice = labeler.choose(prompt_text(pair["prompt"]), pair["a"], pair["b"])
        chosen, rejected = (pair["b"], pair["a"]) if choice == "B" else (pair["a"], pair["b"])
        rows.append({"prompt": pair["prompt"], "chosen": chosen, "rejected": rejected, "choice": choice})
    return rows
