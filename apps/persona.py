"""Top up the labels with a simulated persona (a gold labeler plus Bradley-Terry noise), from the Rank tab.

A persona's labels are stored under its own annotator name, `sim:<oracle>:T=<noise>`
(`workbench.preferences.simulate.simulated_annotator_name`), so they always stay separable from a person's. Before
new pairs, the persona also labels the pairs people have labelled: that gives the agreement (Cohen's kappa) a person
reads to see whether the persona shares their taste, and counts as a second opinion on those pairs in training.
"""

from __future__ import annotations

from collections.abc import Iterator

from apps import ranking
from apps.context import AppContext
from apps.guidance import is_simulated
from apps.handlers import check_choice, check_number
from workbench.oracles import ORACLES, SimulatedLabeler
from workbench.preferences.simulate import label_with, simulated_annotator_name
from workbench.preferences.store import cohens_kappa

PERSONAS = tuple(ORACLES)  # every built-in gold labeler can be a persona
NOISE = {"careful (T = 0.1)": 0.1, "casual (T = 0.3)": 0.3, "sloppy (T = 1.0)": 1.0}  # Bradley-Terry temperature
MAX_TOP_UP = 500
BATCH = 8  # pairs generated per step: the policy writes them in one batch


def persona_labeler(oracle, noise) -> SimulatedLabeler:
    """The checked persona: one of PERSONAS with a noise from NOISE (names or their temperatures)."""
    oracle = check_choice("Persona", oracle, PERSONAS)
    temperature = NOISE.get(noise, noise)
    temperature = check_number("Noise", temperature, 0.0, 5.0)
    return SimulatedLabeler(oracle, float(temperature), seed=0)


def top_up(ctx: AppContext, oracle, n, noise="careful (T = 0.1)") -> Iterator[str]:
    """Label `n` more pairs with the persona (new pairs are generated as needed), after labelling the pairs people
    labelled. Yields a progress line per step; the last one says what was added."""
    labeler = persona_labeler(oracle, noise)
    n = check_number("Pairs to label", n, 1, MAX_TOP_UP, integer=True)
    name = simulated_annotator_name(labeler)
    labels = ctx.store.current_labels()
    human_pairs = sorted({label.pair_id for label in labels if not is_simulated(label.annotator)})
    shared = label_with(ctx.store, [ctx.store.get_pair(pair_id) for pair_id in human_pairs], labeler)
    added = 0
    pending = ctx.store.next_unlabelled(name, limit=n)  # stored pairs nobody gave this persona yet
    while added < n:
        if not pending:
            yield f"{name}: writing pairs… {added} of {n} labelled"
            pending = ranking.generate_pairs(ctx, ranking.next_prompts(ctx, min(BATCH, n - added)))
        batch, pending = pending[: n - added], pending[n - added:]
        added += label_with(ctx.store, batch, labeler)
        yield f"{name}: {added} of {n} labelled"
    yield (f"**{name}** labelled {added} new pairs" + (f" and {shared} pairs people had labelled (for the agreement "
                                                        "below)" if shared else "") + ".")


def persona_stats(ctx: AppContext) -> dict:
    """Human vs simulated label counts, and per (person, persona) their agreement on the pairs both labelled."""
    labels = ctx.store.current_labels()
    votes: dict[str, dict[str, str]] = {}  # annotator -> pair_id -> choice
    for label in labels:
        votes.setdefault(label.annotator, {})[label.pair_id] = label.choice
    people = sorted(a for a in votes if not is_simulated(a))
    personas = sorted(a for a in votes if is_simulated(a))
    rows = []
    for person in people:
        for persona in personas:
            shared = sorted(set(votes[person]) & set(votes[persona]))
            if shared:
                first, second = [votes[person][p] for p in shared], [votes[persona][p] for p in shared]
                rows.append({"person": person, "persona": persona, "n": len(shared),
                             "raw": sum(a == b for a, b in zip(first, second)) / len(shared),
                             "kappa": cohens_kappa(first, second)})
    return {"human": sum(len(votes[a]) for a in people), "simulated": sum(len(votes[a]) for a in personas),
            "per_persona": {a: len(votes[a]) for a in personas}, "agreement": rows}


def persona_markdown(stats: dict) -> str:
    from apps.guidance import TOO_FEW_N

    if not stats["simulated"]:
        return f"Labels: {stats['human']} by people, none simulated."
    lines = [f"Labels: **{stats['human']} by people**, **{stats['simulated']} simulated** ("
             + ", ".join(f"{a}: {n}" for a, n in stats["per_persona"].items()) + ")."]
    for row in stats["agreement"]:
        few = "; too few shared pairs to tell" if row["n"] < TOO_FEW_N else ""
        lines.append(f"- {row['person']} vs {row['persona']}: agree on {row['raw']:.0%} of {row['n']} shared pairs, "
                     f"Cohen's kappa {row['kappa']:.2f} (1 = same taste, 0 = chance){few}")
    return "\n".join(lines)
