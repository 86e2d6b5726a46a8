"""Label pairs with a simulated labeler, the unattended stand-in for a person."""

from __future__ import annotations

import time
from dataclasses import replace

from workbench.data import PromptRecord, builtin_prompts
from workbench.oracles import SimulatedLabeler
from workbench.preferences.pairs import PairConfig, make_pairs
from workbench.preferences.schema import Pair
from workbench.preferences.store import PreferenceStore


def simulated_annotator_name(labeler: SimulatedLabeler) -> str:
    return f"sim:{labeler.oracle}:T={labeler.temperature}"


def label_with(store: PreferenceStore, pairs: list[Pair], labeler: SimulatedLabeler) -> int:
    """Label every pair once; submission ids derive from the pair, so a re-run adds nothing. Returns new labels."""
    annotator = simulated_annotator_name(labeler)
    added = 0
    for pair in pairs:
        submission_id = f"{annotator}:{pair.pair_id}"
        if store.has_submission(submission_id):
            continue
        store.add_label(pair.pair_id, labeler.choose(pair.prompt_text, pair.completion_a, pair.completion_b),
                        annotator, submission_id)
        added += 1
    return added


def prompts_for(n: int, split: str = "train") -> list[PromptRecord]:
    """n prompts from the built-in set, cycling through it when n is larger (later rounds get other seeds)."""
    records = builtin_prompts(split)
    return [records[i % len(records)] for i in range(n)]


def collect_simulated_preferences(store: PreferenceStore, policy, n_pairs: int, labeler: SimulatedLabeler,
                                  pair_config: PairConfig | None = None, model_name: str = "policy",
                                  show_progress: bool = False) -> dict:
    """Generate pairs from the built-in train prompts, store them, label them. Returns counts and seconds."""
    pair_config = pair_config or PairConfig()
    records = prompts_for(n_pairs)
    started = time.perf_counter()
    pairs: list[Pair] = []
    per_round = len(builtin_prompts("train"))
    for round_start in range(0, len(records), per_round):  # each pass over the prompts uses fresh seeds
        config = replace(pair_config, seed=pair_config.seed + 1000 * (round_start // per_round))
        pairs += make_pairs(records[round_start : round_start + per_round], policy, config,
                            model_names=(model_name, model_name), show_progress=show_progress)
    generation_seconds = time.perf_counter() - started
    store.add_pairs(pairs)
    started = time.perf_counter()
    added = label_with(store, pairs, labeler)
    return {"n_pairs": len(pairs), "n_new_labels": added, "generation_seconds": round(generation_seconds, 2),
            "labelling_seconds": round(time.perf_counter() - started, 2)}
