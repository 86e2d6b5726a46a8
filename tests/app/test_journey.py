"""Issue 19, requirement 8: a scripted person closes the whole loop in a real browser (Debian's Chromium) at smoke
size, and every number a screen shows is the run directory's. Fails, never skips, when /usr/bin/chromium is missing.

The journey itself (what is clicked and typed, what is waited for) is `tests.app.browser.close_the_loop`, which the
screenshot command runs too; this file checks what it saw against the store, <run>/reward, <run>/rl and the blind
store.
"""

import json
import re
import time

from playwright.sync_api import sync_playwright

from tests.app.browser import LoopSize, close_the_loop, launch_browser
from tests.app.conftest import start_app, stop_app


def _estimate(text: str, after: str, screen: str) -> tuple[float, float, float, int]:
    """(value, low, high, n) of the first "0.67 (95% CI 0.00–1.00, n = 3 ..." after the regex `after` in a screen's
    text."""
    match = re.search(after + r"\s*([\d.]+) \(95% CI ([\d.]+)–([\d.]+), n = (\d+)", text)
    assert match, f"{screen} screen: no estimate after {after!r} in {text!r}"
    return float(match[1]), float(match[2]), float(match[3]), int(match[4])


def _rounded(value: float, low: float, high: float, n: int) -> tuple[float, float, float, int]:
    return round(value, 2), round(low, 2), round(high, 2), n


def test_a_person_closes_the_loop_in_the_page(tmp_path, tiny_policy):
    from apps.compare import BlindVoteStore
    from workbench.preferences import export_preferences
    from workbench.reward.train import RewardModelConfig, is_tie, is_validation

    size = LoopSize(votes=("#vote-A", "2", "#vote-tie"))  # a click, the "B is better" key, a click
    app = start_app(tmp_path / "run", tiny_policy, reward_backbone="tiny-random-llama")  # the smoke preset's RM
    started = time.perf_counter()
    try:
        with sync_playwright() as playwright:
            browser = launch_browser(playwright)
            page = browser.new_page(viewport={"width": 1366, "height": 900}, accept_downloads=True)
            shown = close_the_loop(page, app.url, size, screenshots=tmp_path / "screenshots")
            browser.close()
        print(f"journey: {time.perf_counter() - started:.0f} s {shown['seconds']}, "
              f"{sum(d['identical'] for d in shown['blind_draws'])} identical blind pairs")  # shown with -s
        ctx, root = app.ctx, app.ctx.root

        # Rank: every vote counted at once, the labels as clicked and pressed, the counts the store's
        assert shown["rank_counts"] == [0, 1, 2, 3], f"Rank screen: label counts after each vote {shown['rank_counts']}"
        person = [label.choice for label in ctx.store.current_labels("annotator")]
        assert person == ["A", "B", "tie"], f"the store holds the person's labels {person}"
        labels = ctx.store.current_labels()
        same = {p.pair_id for p in ctx.store.pairs() if p.completion_a == p.completion_b}
        usable = [label for label in labels if label.choice in ("A", "B", "tie") and label.pair_id not in same]
        simulated = [label for label in labels if label.annotator.startswith("sim:")]
        assert len(simulated) == size.persona_pairs + len(person)  # the persona also labelled the person's pairs
        assert f"labelled {size.persona_pairs} new pairs and {len(person)} pairs people had labelled" \
            in shown["persona_status"], f"Rank screen (persona): {shown['persona_status']!r}"
        progress = shown["progress"]
        match = re.search(r"(\d+) usable for the reward model \((\d+) A/B \+ (\d+) ties.*? of (\d+) labels", progress)
        assert match, f"Rank screen: no usable-label count in {progress!r}"
        ties = sum(label.choice == "tie" for label in usable)
        assert tuple(map(int, match.groups())) == (len(usable), len(usable) - ties, ties, len(labels)), \
            f"Rank screen shows {match[0]!r}; the store has {len(usable)} usable ({ties} ties) of {len(labels)}"
        people = f"{len(labels) - len(simulated)} by people, {len(simulated)} simulated"
        assert people in progress, f"Rank screen: {people!r} not in {progress!r}"
        assert f"{len(labels) - len(simulated)} by people" in shown["persona_stats"]
        assert f"{len(simulated)} simulated" in shown["persona_stats"]

        # Reward model: the accuracy shown is <run>/reward/eval.json's, over the pairs it was measured on
        report = json.loads((root / "reward" / "eval.json").read_text())
        expected = _rounded(report["accuracy"], *report["accuracy_ci"], report["n_evaluated"])
        assert _estimate(shown["rm_summary"], "accuracy vs labels:", "Reward model") == expected, \
            f"Reward model screen: {shown['rm_summary']!r} vs reward/eval.json {report}"
        assert _estimate(shown["rm_status"], r"accuracy on \d+ [^:]*labels:", "Reward model") == expected, \
            f"Reward model screen: {shown['rm_status']!r} vs reward/eval.json {report}"
        assert f"{report['n_train']} training pairs" in shown["rm_status"]
        rows = export_preferences(ctx.store, keep=("A", "B", "tie"))[0].to_list()  # what `train-rm` trained on
        held_out = [r for r in rows if is_validation(r, RewardModelConfig.val_fraction)]
        evaluated = [r for r in held_out if not is_tie(r)] if held_out else [r for r in rows if not is_tie(r)]
        assert report["n_evaluated"] == len(evaluated), \
            f"reward/eval.json: n_evaluated {report['n_evaluated']}, but {len(evaluated)} pairs were evaluated"
        head_curve = root / "reward" / "label_curve.json"  # head kinds: held-out loss vs labels, not vs steps
        losses = ([r["log_loss"] for r in json.loads(head_curve.read_text())] if head_curve.exists() else
                  [r["rm/loss"] for r in ctx.run.read_metrics("reward") if "rm/loss" in r])
        curve = [y for trace in shown["rm_loss"] for y in trace["y"]]
        assert losses and curve == losses, f"Reward model screen: loss curve {curve} vs reward metrics {losses}"

        # RL: the steps the page says are the steps the run logged, and the curves end there
        steps = sorted({r["step"] for r in ctx.run.read_metrics("rl")})
        assert steps and steps[-1] == size.rl_steps, f"rl metrics logged steps {steps}"
        assert f"took {size.rl_steps} steps" in shown["rl_status"], f"RL screen: {shown['rl_status']!r}"
        assert max(x for trace in shown["rl_curves"] for x in trace["x"]) == size.rl_steps, shown["rl_curves"]

        # Compare: the win rates and the before/after table are the evaluation report's
        evaluation = json.loads((root / "rl" / "eval.json").read_text())
        gold = evaluation["win_rate_gold"]
        assert evaluation["n_prompts"] == size.eval_prompts
        assert _estimate(shown["report_note"], "by the gold labeler", "Compare") == \
            _rounded(gold["value"], gold["low"], gold["high"], gold["n"]), \
            f"Compare screen: {shown['report_note']!r} vs rl/eval.json win_rate_gold {gold}"
        assert _estimate(shown["eval_status"], "by the gold labeler", "Compare") == \
            _rounded(gold["value"], gold["low"], gold["high"], gold["n"]), shown["eval_status"]
        bars = next(trace for trace in shown["win_rates"] if trace["type"] == "bar")
        expected_bars = [evaluation["win_rate_proxy"]["value"], gold["value"]]
        assert [round(y, 6) for y in bars["y"]] == [round(y, 6) for y in expected_bars], \
            f"Compare screen: win-rate bars {bars['y']} vs rl/eval.json {expected_bars}"
        (table,) = [trace["cells"] for trace in shown["table"] if trace["cells"]]
        report_rows = evaluation["table"][:len(table[0])]
        assert len(table[0]) == min(len(evaluation["table"]), 12) and table[0] == [r["prompt"] for r in report_rows]
        assert table[2] == [f"{r['base_proxy']:.2f}" for r in report_rows], "Compare screen: base RM column"
        assert table[6] == [f"{r['tuned_gold']:.2f}" for r in report_rows], "Compare screen: tuned gold column"

        # Blind test: every vote the page counted is in the blind store, every identical pair drawn is counted apart
        # there and its vote was refused (at smoke size most pairs are identical: the tuned tiny policy barely moved)
        votes = BlindVoteStore(root / "blind_votes.sqlite")
        outcomes, draws = votes.outcomes(), shown["blind_draws"]
        voted = [draw for draw in draws if not draw["identical"]]
        assert len(draws) == len(size.blind_votes) and len(outcomes) == len(voted), \
            f"blind store holds {len(outcomes)} votes; the page counted {len(voted)} of {len(draws)} pairs drawn"
        assert votes.count_identical() == len(draws) - len(voted), "identical blind pairs: page vs blind store"
        verdicts = {1.0: "you preferred the tuned policy", 0.0: "you preferred the base policy", 0.5: "a tie"}
        for outcome, draw in zip(outcomes, voted):
            assert verdicts[outcome] in draw["result"], f"Compare screen (blind): {draw} for stored outcome {outcome}"
        for n, draw in enumerate(draws, start=1):
            n_votes, n_identical = sum(not d["identical"] for d in draws[:n]), sum(d["identical"] for d in draws[:n])
            if n_votes:
                value, _, _, shown_n = _estimate(draw["rate"], "blind win rate:", "Compare (blind)")
                stored = outcomes[:n_votes]
                assert (value, shown_n) == (round(sum(stored) / n_votes, 2), n_votes), draw["rate"]
            else:
                assert "No blind votes yet." in draw["rate"], draw["rate"]
            if n_identical:
                assert f"{n_identical} drawn pair" in draw["rate"], draw["rate"]
            if draw["identical"]:
                assert "Identical replies: not votable" in draw["result"], draw["result"]

        # Download: every current label, as stored
        downloaded = shown["downloaded_labels"]
        assert len(downloaded) == ctx.store.count_labels() == len(labels)
        assert sorted(r["choice"] for r in downloaded) == sorted(label.choice for label in labels)
        for path in shown["screenshots"].values():
            assert path.stat().st_size > 10_000
    finally:
        stop_app(app)
