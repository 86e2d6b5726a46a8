"""The whole loop through the page, on the real default models, driven in Chromium by a simulated person.

The person is a persona that reads the page and clicks (never the API): it reads the prompt and both replies from
the Rank tab, prefers the side its gold labeler scores higher, and presses the button. Steps: 60 labels by "hand",
a persona top-up to the app's label target (the count below which the reward model is near chance), RM training,
RL with the quick preset's step count, evaluation from the Compare tab, and 20 blind votes decided by the gold.

    python benchmarks/app_journey.py [--run runs/journey] [--hand 60] [--blind 20]

Prints one JSON line: wall seconds of each step and in total, the gold win rate of tuned vs base with its CI
(goal >= 0.75 with the lower bound > 0.5), the persona's blind-vote win rate, pair latency p50/p95 (goal: a
complete pair <= 2 s p50 on a quiet 2-core bf16 machine), and the person-time (goal: first label to blind result
<= 20 minutes on 2 cores). Heavy (tens of minutes on 2 CPU cores): not run by the tests.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

JOB_TIMEOUT_MS = 3_600_000


def _text(page, selector: str) -> str:
    element = page.locator(selector)
    return element.input_value() if selector.endswith("textarea") else element.inner_text()


def rank_by_hand(page, gold, n: int) -> list[float]:
    """n labels by clicks; returns each pair's latency (vote click to the next complete pair)."""
    from tests.app.browser import wait_for_pair

    latencies, shown = [], wait_for_pair(page)
    for _ in range(n):
        prompt = _text(page, "#rank-prompt textarea")
        a, b = _text(page, "#side-a textarea"), _text(page, "#side-b textarea")
        page.locator("#vote-A" if gold(prompt, a) >= gold(prompt, b) else "#vote-B").click()
        started = time.perf_counter()
        shown = wait_for_pair(page, shown)
        latencies.append(time.perf_counter() - started)
    return latencies


def wait_for_text(page, selector: str, pattern: str, timeout_ms: int = JOB_TIMEOUT_MS) -> str:
    page.wait_for_function("([sel, pat]) => new RegExp(pat).test(document.querySelector(sel)?.innerText || '')",
                           arg=[selector, pattern], timeout=timeout_ms)
    return page.locator(selector).inner_text()


def journey(url: str, ctx, args, playwright) -> dict:
    from apps import guidance
    from tests.app.browser import draw_blind_pair, launch_browser
    from workbench.oracles import get_oracle
    from workbench.evaluation.metrics import bootstrap_ci

    gold = get_oracle(args.oracle)
    browser = launch_browser(playwright)
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    page.goto(url)

    mark = time.perf_counter()
    latencies = rank_by_hand(page, gold, args.hand)
    seconds["rank_by_hand"] = time.perf_counter() - mark

    mark = time.perf_counter()
    missing = max(guidance.enough_labels(ctx) - guidance.label_counts(ctx).usable, 0)
    if missing:
        page.get_by_role("button", name="Top up with a simulated persona").click()
        page.locator("#persona-n input").fill(str(missing))
        page.locator("#persona-go").click()
        wait_for_text(page, "#persona-status", r"labelled \d+ new pairs")
    seconds["persona_top_up"] = time.perf_counter() - mark

    mark = time.perf_counter()
    page.get_by_role("tab", name="Reward model").click()
    page.locator("#rm-train").click()
    wait_for_text(page, "#rm-status", "finished|failed")
    seconds["reward_model"] = time.perf_counter() - mark

    mark = time.perf_counter()
    page.get_by_role("tab", name="RL fine-tuning").click()
    page.locator("#rl-start").click()
    wait_for_text(page, "#rl-status", "RL run: (finished|failed)")
    seconds["rl"] = time.perf_counter() - mark

    mark = time.perf_counter()
    page.get_by_role("tab", name="Compare").click()
    page.get_by_label("Held-out prompts").fill(str(args.eval_prompts))
    page.locator("#eval-go").click()
    wait_for_text(page, "#eval-status", "Evaluation: (finished|failed)")
    seconds["evaluate"] = time.perf_counter() - mark

    mark = time.perf_counter()
    outcomes, identical = [], 0
    while len(outcomes) < args.blind and identical < 3 * args.blind:  # a policy that never moved draws only identical pairs
        drawn = draw_blind_pair(page, identical, JOB_TIMEOUT_MS)
        if drawn == "identical":
            identical += 1
            continue
        shown_prompt = _text(page, "#blind-shown-prompt")
        prompt = re.sub(r"^Prompt:\s*", "", shown_prompt.splitlines()[0]).strip()
        left, right = _text(page, "#blind-left textarea"), _text(page, "#blind-right textarea")
        choice = "left" if gold(prompt, left) > gold(prompt, right) else "right" if gold(prompt, right) > gold(
            prompt, left) else "tie"
        page.locator(f"#blind-vote-{choice}").click()
        result = wait_for_text(page, "#blind-result", "tuned policy was on the")
        tuned = "left" if "on the **left**" in result or "on the left" in result else "right"
        outcomes.append(0.5 if choice == "tie" else float(choice == tuned))
    seconds["blind"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started
    browser.close()

    report = json.loads((ctx.root / "rl" / "eval.json").read_text())
    blind = bootstrap_ci(outcomes)
    ordered = sorted(latencies)
    return {"benchmark": "app_journey", "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "gold_win_rate": report["win_rate_gold"], "goal_gold_win_rate": ">= 0.75, lower bound > 0.5",
            "persona_blind_win_rate": blind.to_dict(), "blind_identical_pairs": identical,
            "pair_latency_s": {"p50": round(statistics.median(ordered), 2),
                               "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 2)},
            "goal_pair_p50_s": 2.0, "person_minutes": round(seconds["total"] / 60, 1), "goal_person_minutes": 20,
            "labels": {"usable": guidance.label_counts(ctx).usable, "total": guidance.label_counts(ctx).total}}


def main(argv: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    from apps.context import DEFAULT_POLICY, DEFAULT_REWARD_BACKBONE, AppContext
    from apps.workbench_app import build_demo, serve
    from tests.app.conftest import free_port
    from workbench.models import cpu_has_native_bf16

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="run directory (default: a fresh temporary one)")
    parser.add_argument("--hand", type=int, default=60, help="labels clicked by the persona in the Rank tab")
    parser.add_argument("--blind", type=int, default=20, help="blind votes")
    parser.add_argument("--eval-prompts", type=int, default=85, help="held-out prompts of the evaluation (all 85: "
                                                                     "the win rate's CI is about +-0.1)")
    parser.add_argument("--oracle", default="helpful-upbeat-concise", help="the persona's gold labeler")
    parser.add_argument("--policy", default=DEFAULT_POLICY, help="a check of the script itself: tiny-random-llama")
    parser.add_argument("--reward-backbone", default=DEFAULT_REWARD_BACKBONE)
    args = parser.parse_args(argv)
    context = AppContext.open(args.run or Path(tempfile.mkdtemp()) / "run", args.policy, args.reward_backbone)
    demo = build_demo(context=context)
    port = free_port()
    serve(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            result = journey(f"http://127.0.0.1:{port}/", context, args, playwright)
        result["machine"] = {"native_bf16": cpu_has_native_bf16()}
        print(json.dumps(result))
    finally:
        demo.close()
        context.close()


if __name__ == "__main__":
    main(sys.argv[1:])
