"""One journey in a real browser (Debian's Chromium). Fails, never skips, when /usr/bin/chromium is missing."""

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
