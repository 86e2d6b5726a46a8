"""Plotly figure factories: data in, `go.Figure` out. Never calls .show(); notebooks and the app display."""

from __future__ import annotations

import plotly.graph_objects as go

TEMPLATE = "plotly_white"


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
