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
