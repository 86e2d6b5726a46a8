"""The Rank tab's "rank K" panel: its components and their wiring. Logic lives in `apps.rank_k` (pure functions);
`build_demo` places the panel next to the pair mode's and passes in the shared pieces (annotator, K, progress)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from apps import guidance, rank_k
from apps.context import AppContext
from apps.handlers import MAX_PROMPT_CHARS, check_choice
from workbench.preferences.rankings import DEFAULT_K, MAX_K, RankingStore


@dataclass
class RankKPanel:
    column: gr.Column
    view: gr.State
    outputs: list  # what `show` fills: view, prompt, K answers, K rows, K pick buttons, submit, all bad, order, note
    reveal: gr.Markdown
    parts: dict  # the buttons and text fields the events hang on


def build_panel(ctx: AppContext) -> RankKPanel:
    """The components, inside the caller's layout (hidden until the mode is "rank K")."""
    with gr.Column(visible=False) as column:
        view = gr.State(None)
        prompt = gr.Textbox(label="Prompt", interactive=False, lines=2, elem_id="rankk-prompt")
        answers, rows, picks = [], [], []
        for i in range(MAX_K):  # all slots exist; `show` hides those beyond the set's K
            with gr.Row(visible=i < DEFAULT_K, equal_height=True) as row:
                answers.append(gr.Textbox(label=str(i + 1), interactive=False, lines=3, scale=9,
                                          elem_id=f"rankk-answer-{i + 1}", elem_classes="completion"))
                picks.append(gr.Button(f"Pick {i + 1}", scale=1, min_width=90, interactive=False,
                                       elem_id=f"rankk-pick-{i + 1}"))
            rows.append(row)
        with gr.Row(elem_classes="vote-row"):
            order = gr.Textbox(label="Your ranking, best first (click Pick, or type)",
                               placeholder="e.g. 3 1 4 2 · ties: 3=1 4 2 · Enter submits",
                               max_length=rank_k.MAX_ORDER_CHARS, scale=3, elem_id="rankk-order")
            submit = gr.Button("Submit ranking", variant="primary", interactive=False, elem_id="rankk-submit")
            all_bad = gr.Button("All bad", interactive=False, elem_id="rankk-all-bad")
            clear = gr.Button("Clear", elem_id="rankk-clear")
            undo = gr.Button("Undo last ranking  [u]", variant="stop", elem_id="rankk-undo")
        note = gr.Markdown(elem_id="rankk-note")
        reveal = gr.Markdown(elem_id="rankk-reveal")
        with gr.Accordion("Rank K answers to your own prompt", open=False), gr.Row():
            typed = gr.Textbox(label="Prompt", max_length=MAX_PROMPT_CHARS, lines=2, scale=4, elem_id="rankk-typed")
            typed_go = gr.Button("New set for my prompt", scale=1, elem_id="rankk-typed-go")
    return RankKPanel(column, view, [view, prompt, *answers, *rows, *picks, submit, all_bad, order, note], reveal,
                      dict(picks=picks, order=order, submit=submit, all_bad=all_bad, clear=clear, undo=undo,
                           typed=typed, typed_go=typed_go))


def progress_text(ctx: AppContext, name: str) -> str:
    """The rank-K progress line, then the usable labels and what to do next (as the pair mode's line)."""
    counts, needed = guidance.label_counts(ctx), guidance.enough_labels(ctx)
    return (f"{rank_k.progress_markdown(rank_k.progress(ctx, name))}\n\n{guidance.labels_markdown(counts, needed)}"
            f"\n\n{guidance.rank_guidance(counts, needed, ctx.has_reward_model(), rank_k=True)}")


def show(shown: rank_k.ShownSet) -> tuple:
    """`RankKPanel.outputs` for a set; ranking is possible only once the set is complete and stored."""
    k, ready = len(shown.texts), shown.ranking_set is not None
    view = rank_k.RankKView.showing(shown.ranking_set) if ready else None
    labels, active = shown.answer_labels(), gr.update(interactive=ready)
    texts = [gr.update(value=shown.texts[i], label=labels[i]) if i < k else gr.update(value="") for i in range(MAX_K)]
    return (view, shown.prompt, *texts, *[gr.update(visible=i < k) for i in range(MAX_K)], *[active] * MAX_K, active,
            active, "", shown.note)


def wire_panel(panel: RankKPanel, ctx: AppContext, *, mode, k_choice, annotator, model, progress, pair_only: list,
               pair_progress: Callable, guarded: Callable, who: Callable, light: dict, decode: dict) -> None:
    """Events of the panel and of the mode and K choices. `pair_only`: components shown in pair mode only;
    `pair_progress(name)`: the pair mode's progress text; `guarded` turns client errors into gr.Error; `who`
    resolves the annotator's name; `light`/`decode`: queue settings of label writes and of model work."""
    parts, private = panel.parts, {"api_visibility": "private"}
    next_inputs = [panel.view, annotator, k_choice, model, mode]
    n_outputs, inactive = len(panel.outputs), gr.update(interactive=False)

    def on_mode(mode_now, typed_name, request: gr.Request):
        name, ranking_k = who(request, typed_name), check_choice("Mode", mode_now, rank_k.MODES) == "rank K"
        return (*[gr.update(visible=not ranking_k)] * len(pair_only), gr.update(visible=ranking_k),
                gr.update(visible=ranking_k), progress_text(ctx, name) if ranking_k else pair_progress(name))

    def on_next(view, typed_name, k, model_name, mode_now, request: gr.Request):
        on_screen = view is not None and view.set_id is not None and view.k == k
        if mode_now != "rank K" or on_screen:  # pair mode, or a set of this K waits to be ranked
            yield (gr.skip(),) * n_outputs
            return
        for index, shown in enumerate(rank_k.stream_next_set(ctx, who(request, typed_name), k, model_name)):
            outputs = show(shown)
            # the ranking field is cleared once: Gradio re-sends a stream's last outputs when it ends, which would
            # wipe what a person typed in between
            yield (*outputs[:-2], gr.skip(), outputs[-1]) if index else outputs

    def submit_handler(all_bad: bool):
        def on_submit(view, text, typed_name, request: gr.Request):
            name = who(request, typed_name)
            if view is None or view.set_id is None:
                gr.Warning("The next set of answers is still loading.")
                return (gr.skip(),) * len(after_vote)
            _ranking, reveal = rank_k.submit_ranking(ctx, view.set_id, text, name,
                                                     view.submission_id("all_bad" if all_bad else "rank"),
                                                     all_bad=all_bad, reveal=True)
            shown_set = RankingStore(ctx.store).get_set(view.set_id)  # the reveal stays next to what it describes
            return (rank_k.RankKView(None, view.k, view.token), "",
                    rank_k.reveal_markdown(reveal, ctx.has_reward_model(), shown_set), progress_text(ctx, name),
                    *[inactive] * (MAX_K + 2))
        return on_submit

    def on_pick(number):
        def pick(view, text):
            if view is None or view.set_id is None:
                gr.Warning("The next set of answers is still loading.")
                return gr.skip()
            return rank_k.add_pick(text, number, view.k)
        return pick

    def on_undo(view, typed_name, request: gr.Request):
        name = who(request, typed_name)
        token = view.token if view is not None and view.token else uuid.uuid4().hex  # never shared across sessions
        ranking = rank_k.undo_last_ranking(ctx, name, f"{token}:undo")
        if ranking is None:
            return (gr.skip(),) * n_outputs + ("Nothing to undo.", progress_text(ctx, name))
        shown = rank_k.ShownSet.stored(RankingStore(ctx.store).get_set(ranking.set_id),
                                       "undone: rank this set again")
        return (*show(shown), "Your last ranking was withdrawn.", progress_text(ctx, name))

    def on_typed(text, k, model_name):
        for shown in rank_k.stream_set_for_prompt(ctx, text, k, model_name):
            yield show(shown)

    mode.change(guarded(on_mode), [mode, annotator], [*pair_only, panel.column, k_choice, progress], **private,
                **light).then(guarded(on_next), next_inputs, panel.outputs, **private, **decode)
    k_choice.change(guarded(on_next), next_inputs, panel.outputs, **private, **decode)
    after_vote = [panel.view, parts["order"], panel.reveal, progress, *parts["picks"], parts["submit"],
                  parts["all_bad"]]
    vote_inputs = [panel.view, parts["order"], annotator]
    for trigger, all_bad in ((parts["submit"].click, False), (parts["order"].submit, False),
                             (parts["all_bad"].click, True)):
        trigger(guarded(submit_handler(all_bad)), vote_inputs, after_vote, **private, **light) \
            .success(guarded(on_next), next_inputs, panel.outputs, **private, **decode)
    for number, button in enumerate(parts["picks"], start=1):
        button.click(guarded(on_pick(number)), [panel.view, parts["order"]], [parts["order"]], **private, **light)
    parts["clear"].click(lambda: "", None, [parts["order"]], **private, **light)
    parts["undo"].click(guarded(on_undo), [panel.view, annotator], [*panel.outputs, panel.reveal, progress],
                        **private, **light)
    for trigger in (parts["typed_go"].click, parts["typed"].submit):
        trigger(guarded(on_typed), [parts["typed"], k_choice, model], panel.outputs, **private, **decode)
