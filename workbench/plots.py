"""Plotly figure factories: data in, `go.Figure` out. Never calls .show(); notebooks and the app display.

`notebook_figures()` (a notebook's setup cell) makes every figure survive `jupyter nbconvert --to html`, offline.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
import plotly.io as pio
from plotly.io.base_renderers import MimetypeRenderer

TEMPLATE = "plotly_white"
NOTEBOOK_RENDERERS = "plotly_mimetype+workbench_html"  # JupyterLab draws the first, nbconvert keeps the second


class OfflineHtmlRenderer(MimetypeRenderer):
    """A figure as `text/html` drawn by the plotly.js that `notebook_figures` embeds once: no CDN, no MathJax.
    (plotly's own "notebook" renderer asks a CDN for MathJax in every figure; "notebook_connected" for plotly.js.)"""

    def to_mimebundle(self, fig_dict: dict) -> dict:
        html = pio.to_html(fig_dict, include_plotlyjs=False, include_mathjax=False, full_html=False,
                           default_width="100%", validate=False)
        return {"text/html": html}


def notebook_figures() -> None:
    """Call once, in a notebook's setup cell. From then on each figure carries plotly's JSON (JupyterLab and VS
    Code draw it) and an HTML fallback (what `nbconvert --to html` keeps); the fallback's plotly.js (about 5 MB) is
    displayed here, once, as this cell's output, so an exported page draws every figure without a network."""
    from IPython.display import HTML, display
    from plotly.offline import get_plotlyjs

    pio.renderers["workbench_html"] = OfflineHtmlRenderer()
    pio.renderers.default = NOTEBOOK_RENDERERS
    display(HTML(f'<script type="text/javascript">window.PlotlyConfig = {{MathJaxConfig: "local"}};</script>\n'
                 f'<script type="text/javascript">{get_plotlyjs()}</script>'))


def metric_curve(rows: list[dict], metrics: list[str], title: str = "", x: str = "step") -> go.Figure:
    """Lines of logged metrics (rows from RunDir.read_metrics) against the step."""
    figure = go.Figure()
    for metric in metrics:
        points = [(row[x], row[metric]) for row in rows if metric in row]
        if points:
            xs, ys = zip(*points)
            figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=metric))
    figure.update_layout(template=TEMPLATE, title=title, xaxis_title=x, yaxis_title=", ".join(metrics), height=360)
    return figure


def token_logprob_bars(tokens: list[str], logprobs: list[float], title: str = "") -> go.Figure:
    """One bar per token: how surprised the model was by it (log p; 0 = certain, very negative = surprising)."""
    labels = [f"{i}:{t!r}" for i, t in enumerate(tokens)]  # index keeps repeated tokens apart
    figure = go.Figure(go.Bar(x=labels, y=logprobs, marker_color=logprobs, marker_colorscale="RdYlGn",
                              hovertext=tokens, name="log p"))
    figure.update_layout(template=TEMPLATE, title=title, yaxis_title="log p(token | prefix)", height=380,
                         xaxis_tickangle=-60)
    return figure


def perplexity_bars(labels: list[str], perplexities: list[float], title: str = "Perplexity per text") -> go.Figure:
    figure = go.Figure(go.Bar(x=labels, y=perplexities, text=[f"{p:.1f}" for p in perplexities]))
    figure.update_layout(template=TEMPLATE, title=title, yaxis_title="perplexity (log scale)", yaxis_type="log",
                         height=360)
    return figure


def length_by_setting(settings: list[str], lengths: list[list[int]], title: str = "") -> go.Figure:
    """Box plot of completion lengths per sampling setting (e.g. temperature)."""
    figure = go.Figure([go.Box(y=values, name=name, boxpoints="all") for name, values in zip(settings, lengths)])
    figure.update_layout(template=TEMPLATE, title=title, yaxis_title="completion length (tokens)", height=360)
    return figure


def score_histograms(scores_chosen: list[float], scores_rejected: list[float], title: str = "") -> go.Figure:
    """Reward-model scores of chosen vs rejected completions: well separated = a confident, correct RM."""
    figure = go.Figure([go.Histogram(x=scores_chosen, name="chosen", opacity=0.6, nbinsx=30),
                        go.Histogram(x=scores_rejected, name="rejected", opacity=0.6, nbinsx=30)])
    figure.update_layout(template=TEMPLATE, title=title or "Reward scores: chosen vs rejected", barmode="overlay",
                         xaxis_title="reward model score", yaxis_title="completions", height=360)
    return figure


def calibration_diagram(bins: list[dict], title: str = "") -> go.Figure:
    """Reliability diagram: predicted P(A > B) = sigmoid(r_A - r_B) against how often A really won."""
    figure = go.Figure([
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration", line={"dash": "dash", "color": "grey"}),
        go.Scatter(x=[b["mean_predicted"] for b in bins], y=[b["observed"] for b in bins], mode="lines+markers",
                   name="reward model", text=[f"n={b['n']}" for b in bins],
                   marker={"size": [6 + 2 * b["n"] ** 0.5 for b in bins]}),
    ])
    figure.update_layout(template=TEMPLATE, title=title or "Calibration", xaxis_title="predicted P(A preferred)",
                         yaxis_title="observed share of A preferred", xaxis_range=[0, 1], yaxis_range=[0, 1], height=380)
    return figure


def score_vs_length(lengths: list[int], scores: list[float], title: str = "") -> go.Figure:
    """Length-hacking check: a strong slope means the RM pays for length itself."""
    figure = go.Figure(go.Scatter(x=lengths, y=scores, mode="markers", marker={"opacity": 0.5}, name="completion"))
    figure.update_layout(template=TEMPLATE, title=title or "Score vs length", xaxis_title="length (words)",
                         yaxis_title="reward model score", height=360)
    return figure


def learning_curve(n_labels: list[int], accuracy: list[float], low: list[float], high: list[float],
                   title: str = "", name: str = "accuracy") -> go.Figure:
    """Held-out accuracy against the number of labels, log-scale x, with its confidence band."""
    figure = go.Figure([
        go.Scatter(x=n_labels + n_labels[::-1], y=high + low[::-1], fill="toself", line={"width": 0},
                   opacity=0.2, name="95% CI", hoverinfo="skip"),
        go.Scatter(x=n_labels, y=accuracy, mode="lines+markers", name=name),
    ])
    figure.update_layout(template=TEMPLATE, title=title or "Learning curve", xaxis_type="log",
                         xaxis_title="labelled pairs", yaxis_title="held-out accuracy", yaxis_range=[0.4, 1.0],
                         height=360)
    return figure


def label_curve_figures(rows: list[dict]) -> tuple[go.Figure, go.Figure]:
    """An embedding head's cross-validated learning curve on its own labels (rows from reward/label_curve.py):
    accuracy vs labels (against the labels with CI band, against gold, and the training fit), and held-out log-loss."""
    n = [row["n_labels"] for row in rows]
    accuracy = learning_curve(n, [r["accuracy"] for r in rows], [r["low"] for r in rows], [r["high"] for r in rows],
                              title="Reward model: learning curve on your labels (cross-validated)",
                              name="held-out accuracy vs labels")
    accuracy.add_trace(go.Scatter(x=n, y=[r["train_accuracy"] for r in rows], mode="lines", name="training fit",
                                  line={"dash": "dot"}))
    if rows and "gold_accuracy" in rows[0]:
        accuracy.add_trace(go.Scatter(x=n, y=[r["gold_accuracy"] for r in rows], mode="lines+markers",
                                      name="held-out agreement with gold"))
    accuracy.add_hline(y=0.5, line_dash="dash", line_color="grey", annotation_text="chance")
    accuracy.update_layout(xaxis_tickvals=n, xaxis_ticktext=[str(v) for v in n], yaxis_range=[0.3, 1.02])
    loss = go.Figure(go.Scatter(x=n, y=[r["log_loss"] for r in rows], mode="lines+markers", name="held-out loss"))
    loss.add_hline(y=0.6931, line_dash="dash", line_color="grey", annotation_text="chance (ln 2)")
    loss.update_layout(template=TEMPLATE, title="Reward model: held-out loss vs labels (lower is better)",
                       xaxis_type="log", xaxis_tickvals=n, xaxis_ticktext=[str(v) for v in n],
                       xaxis_title="labelled pairs", yaxis_title="Bradley-Terry loss", height=360)
    return accuracy, loss


def reward_learning_curves(summary: list[dict], title: str = "") -> go.Figure:
    """Gold accuracy vs labels, one panel per labeler, one line per (kind, selection) with 95% CI error bars
    (rows from `workbench.reward.learning_curve.summarise_curves`); log x with the measured counts as ticks."""
    from plotly.subplots import make_subplots

    labelers = list(dict.fromkeys(row["labeler"] for row in summary))
    lines = list(dict.fromkeys((row["kind"], row["selection"]) for row in summary))
    figure = make_subplots(rows=1, cols=max(len(labelers), 1), subplot_titles=labelers, shared_yaxes=True)
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#7f7f7f"]
    ticks = sorted({row["n_labels"] for row in summary})
    for column, labeler in enumerate(labelers, start=1):
        for index, (kind, selection) in enumerate(lines):
            points = sorted((r for r in summary if r["labeler"] == labeler and (r["kind"], r["selection"]) == (kind, selection)),
                            key=lambda r: r["n_labels"])
            if not points:
                continue
            y = [p["gold_accuracy"] for p in points]
            figure.add_trace(go.Scatter(
                x=[p["n_labels"] for p in points], y=y, mode="lines+markers", name=f"{kind} ({selection})",
                legendgroup=f"{kind}/{selection}", showlegend=column == 1,
                line={"color": colours[index % len(colours)], "dash": "dot" if selection == "active" else
                      ("dash" if kind == "gold-features" else "solid")},
                error_y={"type": "data", "symmetric": False, "array": [p["high"] - v for p, v in zip(points, y)],
                         "arrayminus": [v - p["low"] for p, v in zip(points, y)], "thickness": 1}), row=1, col=column)
        figure.update_xaxes(type="log", tickvals=ticks, ticktext=[str(t) for t in ticks], title_text="labels",
                            row=1, col=column)
    figure.update_yaxes(title_text="gold accuracy (held-out pairs)", range=[0.4, 1.0], row=1, col=1)
    figure.update_layout(template=TEMPLATE, title=title or "Reward model: gold accuracy vs number of labels",
                         height=420, width=max(420 * len(labelers), 600))
    return figure


# ---------------------------------------------------------------- stage 3: RL and evaluation

RL_PANELS = (("reward", "proxy reward (RM, normalised) incl. EOS penalty"), ("rewards/gold/mean", "gold reward"),
             ("kl", "KL(pi || pi_ref) per token"), ("entropy", "entropy per token"),
             ("completions/mean_length", "completion length (tokens)"))
# PPO's own health: is the value model learning, and how far does each update move the policy?
PPO_PANELS = (("value_loss", "value loss"), ("explained_variance", "explained variance of the returns"),
              ("clipfrac", "share of tokens clipped"), ("approx_kl", "approx. KL(old || new) per update"),
              ("kl_coef", "KL coefficient beta"))


RL_PANEL_COLUMNS = 3


def rl_curves(rows: list[dict], algo: str = "rloo", title: str = "", panels=RL_PANELS) -> go.Figure:
    """The live RL dashboard: one panel per metric against the optimiser step (rows from RunDir.read_metrics);
    `panels=PPO_PANELS` for PPO's value-model and update curves."""
    from plotly.subplots import make_subplots

    panels = [(key, label) for key, label in panels if any(f"{algo}/{key}" in r for r in rows)]
    cols = min(max(len(panels), 1), RL_PANEL_COLUMNS)  # a grid, so five panels fit a laptop screen or a notebook
    n_rows = max(math.ceil(len(panels) / cols), 1)
    figure = make_subplots(rows=n_rows, cols=cols, subplot_titles=[label for _, label in panels],
                           vertical_spacing=0.5 / n_rows if n_rows > 1 else 0.3)
    for index, (key, label) in enumerate(panels):
        row, col = index // cols + 1, index % cols + 1
        points = [(r["step"], r[f"{algo}/{key}"]) for r in rows if r.get(f"{algo}/{key}") is not None]
        xs, ys = zip(*points) if points else ((), ())
        figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=label, showlegend=False), row=row, col=col)
        figure.update_xaxes(title_text="step", row=row, col=col)
    figure.update_layout(template=TEMPLATE, title=title or f"{algo.upper()} training", height=60 + 270 * n_rows,
                         margin={"l": 50, "r": 20, "t": 80, "b": 40})
    return figure


def rl_comparison(runs: dict[str, list[dict]], key: str = "rewards/gold/mean", samples_per_step: int = 1,
                  title: str = "") -> go.Figure:
    """One line per algorithm ({algo: its rows from RunDir.read_metrics}) of `<algo>/<key>` against the number of
    completions sampled so far: the fair x axis when the algorithms' steps cost different numbers of updates."""
    figure = go.Figure()
    for algo, rows in runs.items():
        points = [(r["step"] * samples_per_step, r[f"{algo}/{key}"]) for r in rows if f"{algo}/{key}" in r]
        if points:
            xs, ys = zip(*points)
            figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=algo))
    figure.update_layout(template=TEMPLATE, title=title or f"{key} by sampled completions", height=360,
                         xaxis_title="completions sampled", yaxis_title=key)
    return figure


def overoptimisation_plot(report: dict, metric: str = "gold", title: str = "") -> go.Figure:
    """Reward gain vs sqrt(KL) for best-of-n and the RL checkpoints, with fitted curves (Gao et al. 2022).

    `report` is the dict written by `workbench evaluate` (eval.json)."""
    import numpy as np

    from workbench.evaluation.bestofn import overoptimisation_curve

    figure = go.Figure()
    bon = report.get("best_of_n", [])
    if bon:
        start = bon[0][metric]
        figure.add_trace(go.Scatter(x=[r["sqrt_kl"] for r in bon], y=[r[metric] - start for r in bon],
                                    mode="markers", name=f"best-of-n (n = {', '.join(str(r['n']) for r in bon)})",
                                    text=[f"n={r['n']}" for r in bon]))
    points = report.get("rl_points", [])
    if points:
        start = points[0][metric]
        figure.add_trace(go.Scatter(x=[p["sqrt_kl"] for p in points], y=[p[metric] - start for p in points],
                                    mode="markers", marker_symbol="diamond", marker_size=10, name="RL checkpoints",
                                    text=[p["name"] for p in points]))
    for key, label, measured in ((f"bon_{metric}", "best-of-n fit d(a - b d)", bon),
                                 (f"rl_{metric}", "RL fit d(a - b ln d)", points)):
        fit = report.get("fits", {}).get(key)
        if not fit or not measured:
            continue
        if fit["beta"] < 0:  # a curve bending upwards is no over-optimisation law: name it, draw nothing
            figure.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line={"dash": "dot"},
                                        name=f"{label}: not drawn (b = {fit['beta']:.2f} < 0 bends upwards)"))
            continue
        grid = np.linspace(1e-3, max(r["sqrt_kl"] for r in measured), 100)  # never beyond the points it fits
        figure.add_trace(go.Scatter(x=grid, y=overoptimisation_curve(fit, grid), mode="lines", name=label,
                                    line={"dash": "dot"}))
    figure.update_layout(template=TEMPLATE, height=400, xaxis_title="sqrt(KL) from the base policy (nats^0.5)",
                         yaxis_title=f"{metric} reward gain over the base",
                         title=title or f"{metric.capitalize()} reward vs KL: best-of-n and RL")
    return figure


def token_logratio_text(tokens: list[dict], title: str = "") -> go.Figure:
    """A completion with each token coloured by log(pi/pi_ref): red = the tuned policy likes it more."""
    values = [t["logratio"] for t in tokens]
    labels = [f"{i}:{t['token']!r}" for i, t in enumerate(tokens)]
    bound = max([abs(v) for v in values] + [1e-6])
    figure = go.Figure(go.Bar(x=labels, y=values, marker_color=values, marker_colorscale="RdBu_r",
                              marker_cmin=-bound, marker_cmax=bound, hovertext=[t["token"] for t in tokens]))
    figure.update_layout(template=TEMPLATE, title=title or "Per-token log(pi / pi_ref) of a tuned sample",
                         yaxis_title="log pi - log pi_ref", height=360, xaxis_tickangle=-60)
    return figure


def before_after_table(rows: list[dict], limit: int = 12) -> go.Figure:
    """Sample completions of the base and tuned policy for the same prompts, with proxy (RM) and gold scores."""
    rows = rows[:limit]
    header = ["prompt", "base", "RM", "gold", "tuned", "RM", "gold"]
    columns = [[r["prompt"] for r in rows], [r["base"] for r in rows], [f"{r['base_proxy']:.2f}" for r in rows],
               [f"{r['base_gold']:.2f}" for r in rows], [r["tuned"] for r in rows],
               [f"{r['tuned_proxy']:.2f}" for r in rows], [f"{r['tuned_gold']:.2f}" for r in rows]]
    widths = [3, 5, 1, 1, 5, 1, 1]
    figure = go.Figure(go.Table(columnwidth=widths, header={"values": header, "align": "left"},
                                cells={"values": columns, "align": "left", "height": 22}))
    # plotly grows each row to its wrapped text but not the figure: size it for a ~1,000-px wide table (a 5/17
    # column holds ~45 characters a line at the default font) so no row hides behind the table's own scrollbar
    lines = [max(math.ceil(len(str(column[i])) / (9 * width)) for column, width in zip(columns, widths))
             for i in range(len(rows))]
    figure.update_layout(template=TEMPLATE, height=140 + sum(18 * n + 8 for n in lines), title="Before / after RL",
                         margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return figure


def win_rate_bars(summary: dict) -> go.Figure:
    """Win rate of tuned over base by the proxy and by gold, with 95% bootstrap intervals; 0.5 = no change."""
    names, estimates = ["by reward model", "by gold"], [summary["win_rate_proxy"], summary["win_rate_gold"]]
    figure = go.Figure(go.Bar(x=names, y=[e["value"] for e in estimates],
                              error_y={"type": "data", "symmetric": False,
                                       "array": [e["high"] - e["value"] for e in estimates],
                                       "arrayminus": [e["value"] - e["low"] for e in estimates]}))
    figure.add_hline(y=0.5, line_dash="dash", line_color="grey")
    figure.update_layout(template=TEMPLATE, title="Win rate of the tuned policy over the base (ties 0.5)",
                         yaxis_range=[0, 1], yaxis_title="win rate", height=360)
    return figure
