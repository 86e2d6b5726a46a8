"""A person's journey through the app in Debian's Chromium (driven by Playwright), shared by the browser test and
the README screenshot script: `python -m tests.app.browser docs/screenshots [--model smollm2-135m-instruct]`.

Never `playwright install`: the browser is the system's /usr/bin/chromium (`apt-get install -y chromium`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
TABS = {"rank": "Rank", "reward": "Reward model", "rl": "RL fine-tuning", "compare": "Compare"}
TIMEOUT_MS = 120_000


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


def main(argv: list[str]) -> None:
    import argparse
    import tempfile

    from playwright.sync_api import sync_playwright

    from apps.context import AppContext
    from apps.workbench_app import build_demo, serve
    from tests.app.conftest import free_port

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--run", type=Path, help="run directory (default: a fresh temporary one)")
    args = parser.parse_args(argv)
    context = AppContext.open(args.run or Path(tempfile.mkdtemp()) / "run", args.model)
    demo = build_demo(context=context)
    port = free_port()
    serve(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            result = rank_and_visit_tabs(f"http://127.0.0.1:{port}/", args.out, playwright)
        print({k: str(v) for k, v in result["screenshots"].items()})
    finally:
        demo.close()
        context.close()


if __name__ == "__main__":
    main(sys.argv[1:])
