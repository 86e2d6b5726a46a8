"""Claim (issue 18, why its accuracy goals are out of reach here): between two shaped replies to one prompt, no
sentiment signal available offline orders the pair the way VADER (the `positive` gold, and the largest term of the
other golds) does, so a reward model built on them cannot reach the goals' 0.85 against VADER from 100 labels.

Each probe scores every reply of the held-out pairs that `benchmarks/reward_model.py` caches, and is read as a
model of VADER's order, with no labels at all:
  minilm-axis     cosine of the reply's MiniLM embedding with (cheerful anchors - gloomy anchors), the reward
                  backbone's own idea of tone
  textblob        TextBlob's polarity: a second standard sentiment lexicon (pattern's), only if textblob is
                  installed (`pip install textblob`; it is not a project dependency)
  smollm2-prompt  log P(" positive"/" happy"/" cheerful") - log P(" negative"/" sad"/" gloomy") of the policy after
                  'Text: "<reply>"\\nThe tone of this text is' (zero-shot)
Per probe: agreement with VADER's order on all pairs and on the clear ones (|VADER difference| >= 0.5), a tie on
either side counting 0.5 (so VADER itself scores below 1.0 where pairs tie at 0), and the correlation of the pair
differences. Baseline in the same run: VADER itself and the embedding head trained on 100 `positive` labels
(3 label seeds), the reward model these probes would feed. One JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from workbench.oracles import positive

CHEERFUL = ["This is wonderful, I love it!", "What a happy, cheerful, delightful day.",
            "Great news, this is fantastic and so much fun.", "I enjoyed every moment; it was lovely and amazing."]
GLOOMY = ["This is terrible, I hate it.", "What a sad, gloomy, miserable day.",
          "Awful news, this is boring and disappointing.", "I regretted every moment; it was dull and painful."]


def minilm_axis(texts: list[str]) -> torch.Tensor:
    from workbench.oracles import _embedder

    embed = lambda batch: torch.stack(_embedder().embed(batch))  # noqa: E731 - mean-pooled, L2-normalised
    axis = torch.nn.functional.normalize(embed(CHEERFUL).mean(0) - embed(GLOOMY).mean(0), dim=0)
    return embed(texts) @ axis


def textblob_polarity(texts: list[str]) -> torch.Tensor | None:
    try:
        from textblob import TextBlob
    except ImportError:
        return None
    return torch.tensor([TextBlob(t).sentiment.polarity for t in texts])


@torch.inference_mode()
def smollm2_prompt(texts: list[str], batch_size: int = 32) -> torch.Tensor:
    from workbench.models import load_policy

    model, tokenizer = load_policy("smollm2-135m-instruct")
    tokenizer.padding_side = "left"  # the next-token logits sit at the last position of every row
    first = lambda words: [tokenizer.encode(w)[0] for w in words]  # noqa: E731
    cheerful, gloomy = first([" positive", " happy", " cheerful"]), first([" negative", " sad", " gloomy"])
    scores = []
    for start in range(0, len(texts), batch_size):
        rows = [f'Text: "{t}"\nThe tone of this text is' for t in texts[start : start + batch_size]]
        batch = tokenizer(rows, return_tensors="pt", padding=True)
        logits = model(**batch).logits[:, -1].float().log_softmax(-1)
        scores.append(logits[:, cheerful].logsumexp(-1) - logits[:, gloomy].logsumexp(-1))
    return torch.cat(scores)


def head_on_positive_labels(train_pairs: list[dict], eval_pairs: list[dict], n: int = 100) -> dict:
    """The embedding head fitted on n `positive` labels (T = 0.1, seeds 0-2, mean): its gold accuracy is the
    agreement with VADER's order."""
    from workbench.reward.learning_curve import CurveConfig, learning_curves

    config = CurveConfig(labelers=("positive",), kinds=("embedding-head",), sizes=(n,), seeds=(0, 1, 2), active=False)
    rows = [r for r in learning_curves(train_pairs, eval_pairs, config) if r["kind"] == "embedding-head"]

    def mean(key: str) -> float | None:  # None where no held-out pair is clear
        values = [r[key] for r in rows if r[key] is not None]
        return round(sum(values) / len(values), 3) if values else None

    return {"order_agreement": mean("gold_accuracy"), "clear_order_agreement": mean("clear_gold_accuracy")}


def main() -> dict:
    from workbench.models import resolve_bf16
    from workbench.reward.learning_curve import CLEAR_MARGIN, clear_gold_agreement, gold_agreement

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="runs/bench_reward_model", help="reward_model.py's --out (pairs_*.json)")
    parser.add_argument("--eval-pairs", type=int, default=200, help="the first N cached held-out pairs, as reward_model.py")
    parser.add_argument("--train-pairs", type=int, default=800, help="the first N cached training pairs, as reward_model.py")
    parser.add_argument("--no-lm", action="store_true", help="skip the SmolLM2 probe (the slow one)")
    args = parser.parse_args()
    missing = [name for name in ("pairs_heldout.json", "pairs_train.json") if not (Path(args.pairs) / name).is_file()]
    if missing:
        parser.error(f"--pairs {args.pairs}: no {' or '.join(missing)}; run benchmarks/reward_model.py --out "
                     f"{args.pairs} first (it caches the pairs)")
    eval_pairs = json.loads((Path(args.pairs) / "pairs_heldout.json").read_text())["pairs"][: args.eval_pairs]
    train_pairs = json.loads((Path(args.pairs) / "pairs_train.json").read_text())["pairs"][: args.train_pairs]
    texts = [p["a"] for p in eval_pairs] + [p["b"] for p in eval_pairs]
    n = len(eval_pairs)
    vader = torch.tensor([positive("", t) for t in texts])
    probes = {"vader (reference)": lambda: vader, "minilm-axis": lambda: minilm_axis(texts),
              "textblob": lambda: textblob_polarity(texts),
              "embedding-head@100 positive labels": lambda: head_on_positive_labels(train_pairs, eval_pairs)}
    if not args.no_lm:
        probes["smollm2-prompt"] = lambda: smollm2_prompt(texts)
    results = {}
    for name, probe in probes.items():
        started = time.perf_counter()
        scores = probe()
        if scores is None:
            results[name] = "not installed (pip install textblob)"
            continue
        if isinstance(scores, dict):  # a trained model, already scored against VADER
            results[name] = {**scores, "seconds": round(time.perf_counter() - started, 1)}
            continue
        a, b = scores[:n].double(), scores[n:].double()
        diff, vader_diff = a - b, vader[:n].double() - vader[n:].double()
        clear = clear_gold_agreement(a, b, vader[:n], vader[n:])  # None where no pair is clear
        results[name] = {
            "order_agreement": round(gold_agreement(a, b, vader[:n], vader[n:]), 3),
            "clear_order_agreement": None if clear is None else round(clear, 3),
            "diff_correlation": round(float(torch.corrcoef(torch.stack([diff, vader_diff]))[0, 1]), 3),
            "seconds": round(time.perf_counter() - started, 1)}
    return {"benchmark": "sentiment_probes", "eval_pairs": n,
            "clear_pairs": int(((vader[:n] - vader[n:]).abs() >= CLEAR_MARGIN).sum()),
            "machine": f"{platform.machine()}, bf16 native: {resolve_bf16(None)}", "probes": results}


if __name__ == "__main__":
    print(json.dumps(main()))
