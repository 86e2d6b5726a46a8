"""How far each simulated labeler agrees with the hand-judged agreement set (workbench/data/agreement_pairs.jsonl).

    agreement = (1 / N) * sum_pairs [ sign(r(x, preferred) - r(x, other)) = + ]     (an exact gold tie counts 0.5)

with a percentile bootstrap 95 % CI over pairs. The labeler is read at T = 0 (its gold reward), so the number says
how often its gold points the same way as the judgment, not how noisy its Bradley-Terry draws are. The set's rule
and its limits (one judge, who also wrote the labeler) are in docs/gold.md.
"""

from __future__ import annotations

import json
from collections import defaultdict
from importlib import resources
from pathlib import Path

from workbench.evaluation.metrics import bootstrap_ci, pairwise_outcomes
from workbench.oracles import ORACLES, gold_scores

AGREEMENT_FIELDS = ("id", "category", "contrast", "prompt", "a", "b", "preferred", "judge")


def agreement_pairs(path: str | Path | None = None) -> list[dict]:
    """The packaged hand-judged pairs (or a file of the same shape: one JSON object per line)."""
    source = Path(path) if path else Path(str(resources.files("workbench") / "data" / "agreement_pairs.jsonl"))
    rows = []
    for line_no, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [f for f in AGREEMENT_FIELDS if f not in row]
        if missing or row["preferred"] not in ("a", "b"):
            raise ValueError(f"{source}, line {line_no}: needs fields {list(AGREEMENT_FIELDS)} with preferred 'a' or "
                             f"'b'; missing {missing or 'none'}, preferred={row.get('preferred')!r}")
        rows.append(row)
    return rows


def labeler_agreement(oracles: list[str] | None = None, pairs: list[dict] | None = None, seed: int = 0) -> dict:
    """{oracle: {"agreement": Estimate dict, "by_contrast": {contrast: share}, "misses": [ids]}}."""
    pairs = pairs if pairs is not None else agreement_pairs()
    prompts = [p["prompt"] for p in pairs]
    preferred = [p[p["preferred"]] for p in pairs]
    other = [p["b" if p["preferred"] == "a" else "a"] for p in pairs]
    result = {}
    for name in oracles or list(ORACLES):
        scores = gold_scores(name, prompts + prompts, preferred + other)
        outcomes = pairwise_outcomes(scores[: len(pairs)], scores[len(pairs):])
        by_contrast: dict[str, list[float]] = defaultdict(list)
        for pair, outcome in zip(pairs, outcomes):
            by_contrast[pair["contrast"]].append(float(outcome))
        result[name] = {"agreement": bootstrap_ci(outcomes, seed=seed).to_dict(),
                        "by_contrast": {c: round(sum(v) / len(v), 3) for c, v in sorted(by_contrast.items())},
                        "misses": [pair["id"] for pair, outcome in zip(pairs, outcomes) if outcome < 1]}
    return result
