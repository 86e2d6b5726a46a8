"""A person's journeys through the app in Debian's Chromium (driven by Playwright), shared by the browser tests and
the screenshot command. Regenerate docs/screenshots/*.png (one per tab, after the whole loop has run) with:

    OMP_NUM_THREADS=1 python -m tests.app.browser docs/screenshots --policy smollm2-135m-instruct \
        --persona-pairs 60 --rl-steps 4 --eval-prompts 16

(default policy: tiny-random-llama, a smoke run in a few minutes; `--help` lists the sizes of the run.)
Never `playwright install`: the browser is the system's /usr/bin/chromium (`apt-get install -y chromium`).
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
TABS = {"rank": "Rank", "reward": "Reward model", "rl": "RL fine-tuning", "compare": "Compare"}
TIMEOUT_MS = 120_000
JOB_TIMEOUT_MS = 600_000  # a background job (reward model, RL, evaluation) on a busy 2-core machine


def launch_browser(playwright):
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: install it with `apt-get update && apt-get install -y "
                                "chromium` (the browser tests never download a browser).")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])


def labels_shown(page) -> int:
    text = page.locator("#progress").inner_text()
    match = re.search(r"Your labels: (\d+)", text)
    return int(match.group(1)) if match else -1


def wait_for_pair(page, previous_a: str | None = None) -> str:
    """Wait until a complete pair is shown (a different one than `previous_a`) and return side A.

    Sides stream in token by token with the vote buttons disabled; they are enabled once the pair is stored."""
    page.wait_for_function(
        "(previous) => { const t = document.querySelector('#side-a textarea');"
        " const b = document.querySelector('#vote-A');"
        " return t && t.value.length > 0 && t.value !== previous && b && !b.disabled; }",
        arg=previous_a or "", timeout=TIMEOUT_MS)
    return page.locator("#side-a textarea").input_value()


def rank_and_visit_tabs(url: str, out_dir: Path, playwright) -> dict:
    """Rank three pairs with the mouse and one with the keyboard, then open each tab and save a screenshot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    browser = launch_browser(playwright)
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(url)
    shown = wait_for_pair(page)
    page.wait_for_function("() => /Your labels: \\d+/.test(document.querySelector('#progress')?.innerText || '')",
                           timeout=TIMEOUT_MS)
    counts = [labels_shown(page)]
    for button in ("#vote-A", "#vote-B", "#vote-tie", None):
        if button:
            page.locator(button).click()
        else:
            page.locator("body").click(position={"x": 5, "y": 5})  # focus outside any text field
            page.keyboard.press("2")  # shortcut for "B is better"
        page.wait_for_function(f"() => /Your labels: {counts[-1] + 1}\\b/.test("
                               "document.querySelector('#progress').innerText)", timeout=TIMEOUT_MS)
        counts.append(labels_shown(page))
        shown = wait_for_pair(page, shown)
    screenshots = {}
    for key, name in TABS.items():
        page.get_by_role("tab", name=name).click()
        page.wait_for_timeout(1500)  # plots render
        screenshots[key] = out_dir / f"{key}.png"
        page.screenshot(path=str(screenshots[key]), full_page=True)
    browser.close()
    return {"counts": counts, "screenshots": screenshots}


def wait_until(page, predicate: str, arg, screen: str, expected: str, timeout_ms: int = TIMEOUT_MS,
               shown: str | None = None):
    """Wait for the JS `predicate(arg)`; on a timeout fail saying which screen did not show what (and, when `shown`
    is a CSS selector, what that element showed instead)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        return page.wait_for_function(predicate, arg=arg, timeout=timeout_ms).json_value()
    except PlaywrightTimeout:
        text = page.evaluate("(s) => s && document.querySelector(s) ? document.querySelector(s).innerText : null",
                             shown) if shown else None
        raise AssertionError(f"{screen} screen: {expected} did not show within {timeout_ms // 1000} s"
                             + (f"; {shown} shows {text!r}" if shown else "")) from None


def wait_for_text(page, selector: str, pattern: str, screen: str, timeout_ms: int = TIMEOUT_MS) -> str:
    """The text of the first element matching `selector` whose visible text matches the regex `pattern`."""
    return wait_until(page, "([selector, pattern]) => [...document.querySelectorAll(selector)]"
                            ".map((el) => el.innerText).find((text) => new RegExp(pattern).test(text)) || false",
                      [selector, pattern], screen, f"{selector} with /{pattern}/", timeout_ms, shown=selector)


def wait_for_job(page, selector: str, what: str, screen: str) -> str:
    """A background job's status line once it is done; fails at once, with the page's sentence, unless it finished."""
    text = wait_for_text(page, selector, f"{what}: (finished|failed|stopped)", screen, JOB_TIMEOUT_MS)
    if f"{what}: finished" not in text:
        raise AssertionError(f"{screen} screen: the {what} job did not finish: {text!r}")
    return text


# The traces a visible plot (found by its label) draws, read back from plotly's graph div.
_PLOT_JS = """([label, minPoints]) => {
  const name = [...document.querySelectorAll('[data-testid="block-label"], [data-testid="block-info"]')]
    .find((el) => el.innerText.trim() === label && el.offsetParent !== null);
  const plot = name && name.closest('.block') && name.closest('.block').querySelector('.js-plotly-plot');
  if (!plot || !plot.data) return false;
  const traces = plot.data.map((t) => ({type: t.type || 'scatter', x: Array.from(t.x || []), y: Array.from(t.y || []),
                                        cells: t.cells ? t.cells.values.map((c) => Array.from(c)) : null}));
  const points = (t) => Math.max(t.x.length, t.y.length, t.cells ? t.cells[0].length : 0);
  const drawn = traces.some((t) => points(t) >= minPoints);
  return drawn ? traces : false;
}"""


def plot_traces(page, label: str, screen: str, min_points: int = 1, timeout_ms: int = TIMEOUT_MS) -> list[dict]:
    """[{type, x, y, cells}] of the plot labelled `label` once one of its traces has `min_points` points (x or y values,
    or table rows)."""
    return wait_until(page, _PLOT_JS, [label, min_points], screen, f"the {label!r} plot with {min_points}+ points",
                      timeout_ms)


def _press(page, action: str) -> None:
    """Click a button ("#id") or press a key with the focus outside any text field."""
    if action.startswith("#"):
        page.locator(action).click()
    else:
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press(action)


@dataclass
class LoopSize:
    """How much of each stage the journey runs: smoke size (tiny models: a few minutes on 2 busy cores)."""

    votes: tuple[str, ...] = ("#vote-A", "2", "#vote-tie")  # Rank: clicks ("#id") and shortcut keys, in order
    persona_pairs: int = 8  # new pairs the simulated persona labels (it also labels the person's)
    rl_steps: int = 2  # rloo optimiser steps
    eval_prompts: int = 2  # held-out prompts of the evaluation job (the app's minimum)
    # one blind pair drawn per vote; at smoke size the tuned tiny policy mostly writes what the base writes, and a
    # vote on such a pair must be refused
    blind_votes: tuple[str, ...] = ("left", "right", "tie")


def close_the_loop(page, url: str, size: LoopSize | None = None, screenshots: Path | None = None) -> dict:
    """The whole loop in the page, as a person does it: rank pairs with clicks and keys, top up with a simulated
    persona, train the reward model, run RL (rloo), evaluate from the Compare tab, blind-vote, download the labels.
    Returns what each screen showed, and "seconds" per step; with `screenshots`, saves one per tab there after the
    loop ({tab: path})."""
    size = size or LoopSize()
    shown: dict = {"seconds": {}}
    started = time.perf_counter()

    def done(step: str) -> None:
        nonlocal started
        shown["seconds"][step], started = round(time.perf_counter() - started, 1), time.perf_counter()

    page.goto(url)
    pair = wait_for_pair(page)
    counts = [int(re.search(r"Your labels: (\d+)", wait_for_text(page, "#progress", r"Your labels: \d+", "Rank"))[1])]
    for action in size.votes:
        _press(page, action)
        wait_for_text(page, "#progress", rf"Your labels: {counts[-1] + 1}\b", f"Rank (after {action})")
        counts.append(labels_shown(page))
        pair = wait_for_pair(page, pair)
    shown["rank_counts"] = counts
    done("rank")

    page.get_by_role("button", name="Top up with a simulated persona").click()
    page.locator("#persona-n input").fill(str(size.persona_pairs))
    page.locator("#persona-go").click()
    shown["persona_status"] = wait_for_text(page, "#persona-status", rf"labelled {size.persona_pairs} new pairs",
                                            "Rank (persona top-up)", JOB_TIMEOUT_MS)
    shown["persona_stats"] = wait_for_text(page, "#persona-stats", "simulated", "Rank (persona top-up)")
    shown["progress"] = wait_for_text(page, "#progress", "simulated", "Rank (after the top-up)")
    done("persona")

    page.get_by_role("tab", name=TABS["reward"]).click()
    page.locator("#rm-train").click()
    shown["rm_status"] = wait_for_job(page, "#rm-status", "Reward-model training", "Reward model")
    shown["rm_summary"] = wait_for_text(page, '[data-testid="markdown"]', "accuracy vs labels", "Reward model")
    shown["rm_loss"] = plot_traces(page, "Loss", "Reward model")  # a head kind: its held-out loss vs labels
    page.locator("#rm-diagnose").click()
    shown["rm_diagnosis"] = wait_for_text(page, '[data-testid="markdown"]', r"^On \d+ .*pairs: accuracy",
                                          "Reward model (diagnose)")
    plot_traces(page, "Score histograms", "Reward model (diagnose)")
    done("reward model")

    page.get_by_role("tab", name=TABS["rl"]).click()
    page.locator("#rl-steps input").fill(str(size.rl_steps))
    page.locator("#rl-start").click()
    wait_for_text(page, '[data-testid="markdown"]', rf"Started rloo for {size.rl_steps} steps", "RL fine-tuning")
    shown["rl_status"] = wait_for_job(page, "#rl-status", "RL run", "RL fine-tuning")
    shown["rl_curves"] = plot_traces(page, "Training curves", "RL fine-tuning", min_points=size.rl_steps)
    done("rl")

    page.get_by_role("tab", name=TABS["compare"]).click()
    page.get_by_label("Held-out prompts").fill(str(size.eval_prompts))
    page.locator("#eval-go").click()
    wait_for_text(page, '[data-testid="markdown"]', rf"Evaluation started on {size.eval_prompts} held-out prompts",
                  "Compare")
    # while the evaluation job runs: blind votes, then one prompt side by side
    shown["blind_draws"] = blind_votes(page, size.blind_votes)
    page.locator("#compare-go").click()
    plot_traces(page, "Per-token log(π/π_ref) of the tuned sample", "Compare (one prompt)")
    shown["eval_status"] = wait_for_job(page, "#eval-status", "Evaluation", "Compare")
    shown["report_note"] = wait_for_text(page, "#report-note", "tuned beats base by", "Compare")
    shown["win_rates"] = plot_traces(page, "Win rates", "Compare")
    shown["table"] = plot_traces(page, "Before / after", "Compare")
    done("compare")

    page.get_by_role("tab", name=TABS["rank"]).click()
    page.get_by_role("button", name="Your labels: history, edit, download").click()
    page.locator("#labels-download").click()
    link = page.locator("#labels-file a").first
    link.wait_for(timeout=TIMEOUT_MS)
    with page.expect_download(timeout=TIMEOUT_MS) as download:
        link.click()
    shown["downloaded_labels"] = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    done("download")
    if screenshots is not None:
        shown["screenshots"] = screenshot_tabs(page, screenshots)
        done("screenshots")
    return shown


def draw_blind_pair(page, identical_so_far: int, timeout_ms: int = TIMEOUT_MS) -> str:
    """Press "New blind pair" and wait for a votable pair ("votable") or one more identical pair counted under the
    win rate ("identical"); the shown prompt alone can repeat, so it is no signal."""
    page.locator("#blind-go").click()
    return wait_until(
        page, "(n) => { const result = document.querySelector('#blind-result').innerText;"
              " const rate = document.querySelector('#blind-rate').innerText;"
              " if (/Which reply is better/.test(result)) return 'votable';"
              " const same = rate.match(/(\\d+) drawn pairs? had identical replies/);"
              " return same && Number(same[1]) === n ? 'identical' : false; }",
        identical_so_far + 1, "Compare (blind test)", "a new blind pair", timeout_ms, shown="#blind-result")


def blind_votes(page, choices: tuple[str, ...]) -> list[dict]:
    """Draw a blind pair per choice and vote it. A pair with identical replies must be refused (a toast; nothing is
    counted). Returns per draw {"choice", "identical", "result" (the line under the pair), "rate" (the win rate)}."""
    draws: list[dict] = []
    for choice in choices:
        identical = sum(draw["identical"] for draw in draws)
        votes = len(draws) - identical
        drawn = draw_blind_pair(page, identical)
        page.locator(f"#blind-vote-{choice}").click()
        if drawn == "votable":
            result = wait_for_text(page, "#blind-result", "The tuned policy was on the", "Compare (blind vote)")
            rate = wait_for_text(page, "#blind-rate", rf"n = {votes + 1} votes", "Compare (blind vote)")
        else:
            toast = page.locator('[data-testid="toast-body"]', has_text="nothing to vote on")
            wait_for_text(page, '[data-testid="toast-body"]', "identical: there is nothing to vote on",
                          "Compare (blind vote on identical replies)")
            toast.locator('[data-testid="toast-close"]').first.click()
            toast.first.wait_for(state="detached", timeout=TIMEOUT_MS)
            result, rate = page.locator("#blind-result").inner_text(), page.locator("#blind-rate").inner_text()
        draws.append({"choice": choice, "identical": drawn == "identical", "result": result, "rate": rate})
    return draws


def screenshot_tabs(page, out_dir: Path) -> dict[str, Path]:
    """One full-page screenshot per tab, each once its plots are drawn (and, on Rank, a complete pair)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {"rank": [], "reward": ["Score histograms"], "rl": ["Training curves"],
             "compare": ["Before / after", "Win rates"]}
    paths = {}
    for key, name in TABS.items():
        page.get_by_role("tab", name=name).click()
        if key == "rank":
            wait_for_pair(page)
        for label in plots[key]:
            plot_traces(page, label, name)
        page.wait_for_timeout(500)  # plotly lays a plot out again when its tab becomes visible
        for close in page.locator('[data-testid="toast-close"]').all():  # toasts of earlier steps cover the page
            if close.is_visible():
                close.click(timeout=2000)
        page.locator('[data-testid="toast-body"]').first.wait_for(state="detached", timeout=TIMEOUT_MS)
        paths[key] = out_dir / f"{key}.png"
        page.screenshot(path=str(paths[key]), full_page=True)
    return paths


def main(argv: list[str]) -> None:
    import argparse
    import tempfile

    import torch
    from playwright.sync_api import sync_playwright

    from apps.context import DEFAULT_REWARD_BACKBONE, AppContext
    from apps.workbench_app import APP_TORCH_THREADS, build_demo, serve
    from tests.app.conftest import free_port

    parser = argparse.ArgumentParser(description="Run the whole loop in the app (Chromium) and save one screenshot "
                                                 "per tab: rank.png, reward.png, rl.png, compare.png.")
    parser.add_argument("out", type=Path, help="folder for the screenshots, e.g. docs/screenshots")
    parser.add_argument("--policy", default="tiny-random-llama",
                        help="policy the app loads (default tiny-random-llama; docs use smollm2-135m-instruct)")
    parser.add_argument("--reward-backbone", default=DEFAULT_REWARD_BACKBONE,
                        help=f"reward model backbone (default {DEFAULT_REWARD_BACKBONE}, the app's: an embedding head "
                             "and its learning curve on the labels; the policy's name fine-tunes it instead)")
    parser.add_argument("--run", type=Path, help="a new run directory to keep (default: a fresh temporary one)")
    parser.add_argument("--persona-pairs", type=int, default=LoopSize.persona_pairs)
    parser.add_argument("--rl-steps", type=int, default=LoopSize.rl_steps)
    parser.add_argument("--eval-prompts", type=int, default=LoopSize.eval_prompts)
    args = parser.parse_args(argv)
    size = LoopSize(persona_pairs=args.persona_pairs, rl_steps=args.rl_steps, eval_prompts=args.eval_prompts)
    torch.set_num_threads(APP_TORCH_THREADS)
    context = AppContext.open(args.run or Path(tempfile.mkdtemp()) / "run", args.policy, args.reward_backbone)
    demo = build_demo(context=context)
    port = free_port()
    serve(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = launch_browser(playwright)
            page = browser.new_page(viewport={"width": 1366, "height": 900}, accept_downloads=True)
            shown = close_the_loop(page, f"http://127.0.0.1:{port}/", size, screenshots=args.out)
            browser.close()
        print(json.dumps({**{key: str(path) for key, path in shown["screenshots"].items()},
                          "seconds": shown["seconds"], "blind_draws": len(shown["blind_draws"]),
                          "identical_blind_pairs": sum(draw["identical"] for draw in shown["blind_draws"])}))
    finally:
        demo.close()
        context.close()


if __name__ == "__main__":
    main(sys.argv[1:])
