"""Figure factories whose layout carries a promise: every table row visible, learning curves on log axes."""

from workbench import plots


def _row(text_length: int) -> dict:
    return {"prompt": "Give one tip.", "base": "b" * text_length, "tuned": "t" * text_length, "base_proxy": 0.1,
            "base_gold": 0.2, "tuned_proxy": 0.3, "tuned_gold": 0.4}


def test_the_before_after_table_grows_with_its_wrapped_text():
    short, long = plots.before_after_table([_row(20)] * 6), plots.before_after_table([_row(300)] * 6)
    assert long.layout.height > short.layout.height + 6 * 18 * 4  # ~6 more wrapped lines per row
    assert plots.before_after_table([_row(20)] * 3).layout.height < plots.before_after_table([_row(20)] * 6).layout.height
    assert len(long.data[0].cells.values[0]) == 6


def test_label_curve_figures_plot_every_size_against_chance():
    rows = [{"n_labels": n, "accuracy": a, "low": a - 0.1, "high": a + 0.1, "n_evaluated": 40, "log_loss": 0.7 - a / 10,
             "train_accuracy": 1.0, "gold_accuracy": a} for n, a in ((8, 0.55), (16, 0.6), (32, 0.7))]
    accuracy, loss = plots.label_curve_figures(rows)
    names = [trace.name for trace in accuracy.data]
    assert names == ["95% CI", "held-out accuracy vs labels", "training fit", "held-out agreement with gold"]
    assert accuracy.layout.xaxis.type == "log" and list(accuracy.data[1].x) == [8, 16, 32]
    assert list(loss.data[0].y) == [r["log_loss"] for r in rows]
    without_gold = plots.label_curve_figures([{k: v for k, v in r.items() if k != "gold_accuracy"} for r in rows])[0]
    assert len(without_gold.data) == 3
