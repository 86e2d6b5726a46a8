"""One journey in a real browser (Debian's Chromium). Fails, never skips, when /usr/bin/chromium is missing."""

from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.app.browser import rank_and_visit_tabs
from tests.app.conftest import start_app, stop_app


def test_rank_with_mouse_and_keyboard_then_visit_every_tab(tmp_path, tiny_policy):
    app = start_app(tmp_path / "run", tiny_policy)
    try:
        with sync_playwright() as playwright:
            result = rank_and_visit_tabs(app.url, tmp_path / "screenshots", playwright)
        assert result["counts"] == [0, 1, 2, 3, 4]  # three clicks and one key press, each shown at once
        assert app.ctx.store.count_labels() == 4
        assert [label.choice for label in app.ctx.store.current_labels()] == ["A", "B", "tie", "B"]
        for path in result["screenshots"].values():
            assert path.stat().st_size > 10_000
    finally:
        stop_app(app)


def test_a_person_tops_up_with_a_persona_relabels_and_downloads_labels_in_the_page(tmp_path, tiny_policy):
    """Issue 19 at smoke size: vote by click and key, a persona top-up, the history and a relabel, the labels
    download; every number the page shows is the store's."""
    import json
    import re

    from apps import guidance
    from tests.app.browser import TIMEOUT_MS, launch_browser, wait_for_pair

    app = start_app(tmp_path / "run", tiny_policy)
    try:
        with sync_playwright() as playwright:
            browser = launch_browser(playwright)
            page = browser.new_page(viewport={"width": 1366, "height": 768}, accept_downloads=True)
            page.goto(app.url)
            shown = wait_for_pair(page)
            page.locator("#vote-A").click()
            shown = wait_for_pair(page, shown)
            page.locator("body").click(position={"x": 5, "y": 5})
            page.keyboard.press("3")  # tie
            page.wait_for_function("() => /Your labels: 2\\b/.test(document.querySelector('#progress').innerText)",
                                   timeout=TIMEOUT_MS)
            assert "Last pair" in page.locator("#reveal").inner_text()
            page.get_by_role("button", name="Top up with a simulated persona").click()
            page.locator("#persona-n input").fill("3")
            page.locator("#persona-go").click()
            page.wait_for_function("() => /labelled 3 new pairs/.test(document.querySelector('#persona-status')"
                                   "?.innerText || '')", timeout=TIMEOUT_MS)
            stats = page.locator("#persona-stats").inner_text()
            counts = guidance.label_counts(app.ctx)
            assert (counts.human, counts.simulated) == (2, 5)  # the persona also labelled the person's 2 pairs
            assert "2 by people" in stats and "5 simulated" in stats and "kappa" in stats
            progress = page.locator("#progress").inner_text()
            assert re.search(rf"{counts.usable} usable", progress) and f"of {counts.total} labels" in progress
            page.get_by_role("button", name="Your labels: history, edit, download").click()
            page.locator("#history-go").click()
            first = next(l for l in app.ctx.store.current_labels("annotator") if l.choice == "tie")  # -> "A"
            page.wait_for_function("(id) => document.body.innerText.includes(id)", arg=first.pair_id,
                                   timeout=TIMEOUT_MS)
            page.locator("#edit-pair input, #edit-pair textarea").first.fill(first.pair_id)
            page.locator("#edit-go").click()
            page.wait_for_function("() => document.body.innerText.includes('(revision 2)')", timeout=TIMEOUT_MS)
            page.locator("#labels-download").click()
            link = page.locator("#labels-file a").first
            link.wait_for(timeout=TIMEOUT_MS)
            with page.expect_download() as download:
                link.click()
            rows = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
            assert len(rows) == app.ctx.store.count_labels() == 7
            browser.close()
        assert [label.revision for label in app.ctx.store.history(first.pair_id) if label.annotator == "annotator"] \
            == [1, 2]
    finally:
        stop_app(app)


def test_rank_k_mode_ranks_by_click_and_key_refuses_a_bad_ranking_and_undoes(tmp_path, tiny_policy):
    """Issue 21: switch to rank K, rank 4 stacked answers by clicks and keys, a repeated number is refused with
    nothing written, u withdraws the ranking, and the pair mode still votes afterwards."""
    from tests.app.browser import TIMEOUT_MS, launch_browser, wait_for_pair
    from workbench.preferences.rankings import RankingStore

    rankable = "() => { const b = document.querySelector('#rankk-submit'); return b && !b.disabled; }"
    shown = "(n) => new RegExp(`Your rankings: ${n}\\\\b`).test(document.querySelector('#progress').innerText)"
    app = start_app(tmp_path / "run", tiny_policy)
    rankings = RankingStore(app.ctx.store)
    try:
        with sync_playwright() as playwright:
            browser = launch_browser(playwright)
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.goto(app.url)
            wait_for_pair(page)
            page.get_by_label("rank K").check()
            page.wait_for_function(rankable, timeout=TIMEOUT_MS)
            assert [page.locator(f"#rankk-answer-{n}").is_visible() for n in (1, 4, 5)] == [True, True, False]
            assert not page.locator("#vote-A").is_visible()
            order = page.locator("#rankk-order textarea, #rankk-order input").first
            page.locator("#rankk-pick-3").click()
            page.wait_for_function("(el) => el.value === '3'", arg=order.element_handle(), timeout=TIMEOUT_MS)
            page.locator("body").click(position={"x": 5, "y": 5})
            for key, so_far in (("1", "3 1"), ("4", "3 1 4"), ("2", "3 1 4 2")):
                page.keyboard.press(key)  # shortcut: pick answer `key` next
                page.wait_for_function("([el, v]) => el.value === v", arg=[order.element_handle(), so_far],
                                       timeout=TIMEOUT_MS)
            page.locator("#rankk-submit").click()
            page.wait_for_function(shown, arg=1, timeout=TIMEOUT_MS)
            assert [r.ranks for r in rankings.current()] == [(2, 4, 1, 3)]
            assert "Last set" in page.locator("#rankk-reveal").inner_text()
            page.wait_for_function(rankable, timeout=TIMEOUT_MS)
            order.fill("3 1 1 2")
            order.press("Enter")
            page.get_by_text("answer 1 appears twice").first.wait_for(timeout=TIMEOUT_MS)
            assert app.ctx.store.connection().execute("SELECT COUNT(*) FROM rankings").fetchone()[0] == 1
            page.locator("body").click(position={"x": 5, "y": 5})
            page.keyboard.press("u")
            page.wait_for_function(shown, arg=0, timeout=TIMEOUT_MS)
            assert [r.choice for r in rankings.history(rankings.sets()[0].set_id)] == ["rank", "undo"]
            page.get_by_label("pairs").check()
            page.wait_for_function("() => { const b = document.querySelector('#vote-A');"
                                   " return b && b.offsetParent !== null && !b.disabled; }", timeout=TIMEOUT_MS)
            page.locator("#vote-A").click()
            page.wait_for_function("() => /Your labels: 1\\b/.test(document.querySelector('#progress').innerText)",
                                   timeout=TIMEOUT_MS)
            browser.close()
    finally:
        stop_app(app)
