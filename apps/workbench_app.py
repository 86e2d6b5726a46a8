"""The workbench app: four tabs over one run directory. This file only wires components; logic lives in
`apps.ranking`, `apps.training` and `apps.compare` (pure functions over `workbench`), shared state in `AppContext`.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import gradio as gr

from apps import compare, exports, guidance, persona, rank_k, rank_k_panel, ranking, training
from apps.security import GuardConfig, RequestGuard, allowed_hosts
from apps.context import DEFAULT_POLICY, DEFAULT_REWARD_BACKBONE, AppContext
from apps.handlers import MAX_PROMPT_CHARS, InputError, check_annotator
from workbench.preferences.store import StoreError
from workbench.data import builtin_prompts

THEME = gr.themes.Soft(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])  # no web fonts
CSS = """
.completion textarea { font-size: 1.02rem; line-height: 1.5; }
#rank-prompt textarea { font-weight: 600; }
.vote-row button { min-width: 8rem; }
/* tables wrap their text and keep every column on a 1366-px screen */
.wrap-table table { table-layout: fixed; width: 100%; }
.wrap-table th, .wrap-table td { white-space: normal !important; overflow-wrap: anywhere; word-break: normal; }
"""
LABEL_WRITERS = 8  # label events run in parallel (SQLite serialises the writes); model events run one at a time
# Intra-op threads of the app process. Decoding a pair is memory-bound, and the app shares the cores with the
# training jobs it starts: measured on 2 cores next to a training process, one decoding step of the default policy
# took ~0.15 s with 1 thread and ~3.7 s with 2 (OpenMP workers wait on each other whenever one is descheduled).
APP_TORCH_THREADS = 1
# After every event Gradio's queue summarises its recorded events in a pandas DataFrame (for the monitoring page,
# which is off here): by default over up to 10,000 events, every event, so each label paid for the ones before it
# (profiled: ~7% of the server's CPU after ~1,000 labels, growing). Keep 100 and summarise every 1,000 events:
# 8 label clients on a busy 2-core machine went from p50/p95 187/271 ms to 128/201 ms.
GRADIO_QUEUE_ANALYTICS = {"GRADIO_ANALYTICS_MAX_EVENTS": "100", "GRADIO_ANALYTICS_CACHE_FREQUENCY": "1000"}
JOB_POLL_S = 2.0
# Keyboard shortcuts of the Rank tab: pairs 1/a, 2/b, 3/t, 4/x, 5/s; rank K 1-9 = pick that answer; u = undo.
# Each key names buttons in order; the first one visible on the page is clicked. Ignored while typing in a field.
SHORTCUTS = {"1": ["vote-A", "rankk-pick-1"], "a": ["vote-A"], "2": ["vote-B", "rankk-pick-2"], "b": ["vote-B"],
             "3": ["vote-tie", "rankk-pick-3"], "t": ["vote-tie"], "4": ["vote-both_bad", "rankk-pick-4"],
             "x": ["vote-both_bad"], "5": ["vote-skip", "rankk-pick-5"], "s": ["vote-skip"],
             **{str(n): [f"rankk-pick-{n}"] for n in range(6, 10)}, "u": ["undo-last", "rankk-undo"]}
SHORTCUTS_JS = """
() => {{
  if (window.__workbenchKeys) return;
  window.__workbenchKeys = true;
  const keys = {};
  document.addEventListener("keydown", (event) => {{
    const target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    if (target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) return;
    const button = (keys[event.key.toLowerCase()] || []).map((id) => document.getElementById(id))
      .find((b) => b && b.offsetParent !== null);
    if (button && !button.disabled) {{ event.preventDefault(); button.click(); }}
  }});
}}
""".format(str(SHORTCUTS).replace("'", '"'))


def _guarded(fn):
    """Client errors become a gr.Error (shown to the person); nothing has been written when one is raised.
    Generator handlers (streamed outputs) stay generators, so Gradio streams what they yield."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except (InputError, StoreError) as error:
                raise gr.Error(str(error)) from None
        return stream

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (InputError, StoreError) as error:  # StoreError: e.g. "labels cannot be saved: ..." (nothing saved)
            raise gr.Error(str(error)) from None
    return wrapper


def _annotator(request: gr.Request | None, typed) -> str:
    """The login name when auth is on (a client cannot claim another), otherwise the typed name."""
    username = getattr(request, "username", None)
    return check_annotator(username if username else typed)


def build_demo(run_dir: str | Path = "runs/demo", policy_name: str = DEFAULT_POLICY,
               reward_backbone: str = DEFAULT_REWARD_BACKBONE, context: AppContext | None = None,
               show_paths: bool = False) -> gr.Blocks:
    """show_paths: the page names the run directory's absolute path (default: only its name)."""
    ctx = context or AppContext.open(run_dir, policy_name, reward_backbone)
    votes = compare.BlindVoteStore(ctx.root / "blind_votes.sqlite")
    heldout = [r.text for r in builtin_prompts("heldout")[:8]]

    # -- Rank -------------------------------------------------------------------------------------------------
    n_pair_outputs = 5 + len(ranking.CHOICE_NAMES)  # view, prompt, A, B, note, one vote button per choice

    def show(shown: ranking.Shown):
        """The Rank tab's pair outputs; the vote buttons are enabled only once the pair is complete and stored."""
        view = ranking.RankView.showing(shown.pair, shown.note) if shown.pair is not None else None
        voting = gr.update(interactive=shown.pair is not None)
        label_a, label_b = shown.side_labels()
        return (view, shown.prompt, gr.update(value=shown.text_a, label=label_a),
                gr.update(value=shown.text_b, label=label_b), shown.note, *[voting] * len(ranking.CHOICE_NAMES))

    def rank_progress(name: str) -> str:
        """The progress line, then the usable labels (guidance) and what to do next."""
        counts, needed = guidance.label_counts(ctx), guidance.enough_labels(ctx)
        return (f"{ranking.progress_markdown(ranking.progress(ctx, name))}\n\n"
                f"{guidance.labels_markdown(counts, needed)}\n\n"
                f"{guidance.rank_guidance(counts, needed, ctx.has_reward_model())}")

    def on_load(typed_name, request: gr.Request):
        name = _annotator(request, typed_name or "annotator")
        choices = ctx.model_choices()
        return (gr.update(value=name, interactive=not getattr(request, "username", None)),
                rank_progress(name),
                gr.update(choices=choices, value=ctx.policy.name), gr.update(choices=choices, value=ctx.policy.name))

    def on_rank_tab(typed_name, mode_now, pair_reveal, set_reveal, request: gr.Request):
        """Back on the Rank tab (e.g. after training the RM): progress, guidance and reveals say what is true now."""
        name, has_rm = _annotator(request, typed_name), ctx.has_reward_model()
        line = rank_k_panel.progress_text(ctx, name) if mode_now == rank_k.MODES[1] else rank_progress(name)
        return line, ranking.refresh_reveal(pair_reveal, has_rm), ranking.refresh_reveal(set_reveal, has_rm)

    def on_next(view, typed_name, active, model_a, model_b, request: gr.Request):
        if view is not None and view.pair_id is not None:  # a pair is on screen (e.g. a vote was refused)
            yield (gr.skip(),) * n_pair_outputs
            return
        name = _annotator(request, typed_name)
        for shown in ranking.stream_next_pair(ctx, name, bool(active), model_a, model_b):
            yield show(shown)

    def vote_handler(choice):
        def on_vote(view, typed_name, request: gr.Request):
            return vote(choice, view, typed_name, request)
        return on_vote

    def vote(choice, view, typed_name, request):
        name = _annotator(request, typed_name)
        if view is None or view.pair_id is None:
            gr.Warning("The next pair is still loading.")
            return (gr.skip(),) * (3 + len(ranking.CHOICE_NAMES))
        _label, reveal = ranking.submit_label(ctx, view.pair_id, choice, name, view.submission_id(choice), reveal=True)
        voting = gr.update(interactive=False)  # until the next pair is complete
        pair = ctx.store.get_pair(view.pair_id)  # the verdict stays next to the pair it describes
        return (ranking.RankView(None, view.token), ranking.reveal_markdown(reveal, ctx.has_reward_model(), pair),
                rank_progress(name), *[voting] * len(ranking.CHOICE_NAMES))

    def on_undo(view, typed_name, request: gr.Request):
        name = _annotator(request, typed_name)
        token = view.token if view is not None and view.token else "none"
        label = ranking.undo_last(ctx, name, f"{token}:undo")
        progress = rank_progress(name)
        if label is None:
            return (gr.skip(),) * n_pair_outputs + ("Nothing to undo.", progress)
        shown = ranking.Shown.stored(ctx.store.get_pair(label.pair_id), "undone: vote on this pair again")
        return (*show(shown), "Your last label was withdrawn.", progress)

    def on_typed(text, model_a, model_b):
        for shown in ranking.stream_pair_for_prompt(ctx, text, model_a, model_b):
            yield show(shown)

    def on_top_up(oracle, noise, n, typed_name, request: gr.Request):
        name = _annotator(request, typed_name)
        steps = persona.top_up(ctx, oracle, n, noise)
        line = next(steps)
        for following in steps:  # the last line (what was added) comes with the stats
            yield line, gr.skip(), gr.skip()
            line = following
        yield line, persona.persona_markdown(persona.persona_stats(ctx)), rank_progress(name)

    def on_history(typed_name, request: gr.Request):
        return exports.history_rows(ctx, _annotator(request, typed_name))

    def on_edit(pair_id, choice, typed_name, request: gr.Request):
        name = _annotator(request, typed_name)
        label = exports.edit_label(ctx, name, (pair_id or "").strip(), choice, f"edit:{uuid.uuid4().hex}")
        return (f"Pair {label.pair_id}: now **{ranking.CHOICE_NAMES[label.choice]}** (revision {label.revision}).",
                exports.history_rows(ctx, name), rank_progress(name))

    # -- Reward model ---------------------------------------------------------------------------------------------
    def rm_poll(seen):
        status = ctx.jobs.status("reward")
        key = (status["state"], ctx.run.metrics_path.stat().st_mtime_ns if ctx.run.metrics_path.exists() else 0)
        counts = guidance.label_counts(ctx)
        text = (guidance.reward_guidance(counts, guidance.enough_labels(ctx), ctx.has_reward_model(),
                                         status["state"] == "running") + "\n\n"
                + guidance.labels_markdown(counts, guidance.enough_labels(ctx)) + "\n\n"
                + training.job_markdown(status, "Reward-model training", training.reward_finished))
        if key == seen:
            return text, gr.skip(), gr.skip(), gr.skip(), seen
        loss, accuracy = training.reward_curves(ctx)
        return text, loss, accuracy, training.reward_summary(ctx), key

    def rm_diagnose():
        result = training.reward_diagnostics(ctx)
        return result["text"], result["histograms"], result["calibration"], result["length"]

    # -- RL -------------------------------------------------------------------------------------------------------
    def rl_poll(seen):
        status = ctx.jobs.status("rl")
        samples = ctx.root / "rl" / "samples.jsonl"
        key = (status["state"], ctx.run.metrics_path.stat().st_mtime_ns if ctx.run.metrics_path.exists() else 0,
               samples.stat().st_mtime_ns if samples.exists() else 0)
        text = (guidance.rl_guidance(ctx.has_reward_model(), ctx.has_tuned_policy(), status["state"] == "running")
                + "\n\n" + training.job_markdown(status, "RL run", training.rl_finished))
        settings = training.rl_settings(ctx)  # every browser shows what really runs
        fields = ((gr.update(value=settings["algo"]), gr.update(value=settings["steps"]),
                   gr.update(value=settings["beta"]), gr.update(value=settings["lora"])) if settings
                  else (gr.skip(),) * 4)
        if key == seen:
            return text, gr.skip(), gr.skip(), gr.skip(), seen, *fields
        return (text, training.rl_curves(ctx), training.rl_note(ctx), training.latest_samples(ctx), key, *fields)

    # -- Compare --------------------------------------------------------------------------------------------------
    def on_compare(prompt, seed):
        result = compare.compare_prompt(ctx, prompt, seed)
        return (result["base"], compare.score_markdown("Base", result["proxy"][0], result["gold"][0]),
                result["tuned"], compare.score_markdown("Tuned", result["proxy"][1], result["gold"][1]),
                result["logratio_figure"])

    def on_report():
        report = compare.evaluation_report(ctx)
        guide = guidance.compare_guidance(ctx.has_tuned_policy(), report is not None)
        if report is None:
            hidden = gr.update(value=None, visible=False)  # no empty plot boxes before there is a report
            return guide + "\n\nNo evaluation yet: press **Evaluate** above.", hidden, hidden, hidden, ""
        shown = [gr.update(value=report[key], visible=True) for key in ("table", "overoptimisation", "win_rates")]
        return (f"{guide}\n\n{report['summary']}", *shown, report["gaming"])

    def eval_poll(seen):
        status = ctx.jobs.status("evaluate")
        path = ctx.root / "rl" / "eval.json"
        key = (status["state"], path.stat().st_mtime_ns if path.exists() else 0)
        text = training.job_markdown(status, "Evaluation", compare.evaluation_finished)
        if key == seen:
            return text, *(gr.skip(),) * 5, seen
        return text, *on_report(), key

    def on_blind(prompt):
        pair, left, right = compare.new_blind_pair(ctx, prompt or None, votes)
        note = ("Which reply is better? The sides are in random order." if not pair.identical else
                "Identical replies: not votable, not counted.")
        return (pair, left, right, note, compare.blind_prompt_markdown(pair),
                compare.win_rate_markdown(votes.win_rate(), votes.count_identical()))

    def blind_vote_handler(choice):
        def on_blind_vote(pair, typed_name, request: gr.Request):
            return blind_vote(choice, pair, typed_name, request)
        return on_blind_vote

    def blind_vote(choice, pair, typed_name, request):
        outcome, estimate = compare.blind_vote(votes, pair, choice, _annotator(request, typed_name))
        tuned = "left" if pair.tuned_side == "left" else "right"
        verdict = {1.0: "you preferred the tuned policy", 0.0: "you preferred the base policy", 0.5: "a tie"}[outcome]
        return (f"The tuned policy was on the **{tuned}**: {verdict}.",
                compare.win_rate_markdown(estimate, votes.count_identical()), None)

    # -- API endpoints (for scripts, tests and the benchmark) -----------------------------------------------------
    def api_label(pair_id: str, choice: str, annotator: str, submission_id: str, request: gr.Request) -> dict:
        label, _ = ranking.submit_label(ctx, pair_id, choice, _annotator(request, annotator), submission_id)
        return {"label_id": label.label_id, "pair_id": label.pair_id, "choice": label.choice,
                "annotator": label.annotator, "revision": label.revision}

    def api_new_pair(prompt: str) -> dict:
        pair = ranking.pair_for_prompt(ctx, prompt) if prompt else ranking.generate_pairs(
            ctx, ranking.next_prompts(ctx, 1))[0]
        return ranking.pair_payload(pair)

    def api_stream_pair(prompt: str) -> Iterator[dict]:
        """A new pair, streamed: both sides as they grow, with "pair_id" null until the pair is complete and stored."""
        shown_so_far = (ranking.stream_pair_for_prompt(ctx, prompt) if prompt
                        else ranking.stream_new_pair(ctx, ranking.next_prompts(ctx, 1)[0]))
        for shown in shown_so_far:
            yield {"pair_id": shown.pair.pair_id if shown.pair is not None else None, "prompt": shown.prompt,
                   "completion_a": shown.text_a, "completion_b": shown.text_b}

    def api_next_pair(annotator: str, request: gr.Request) -> dict:
        return ranking.pair_payload(ranking.next_pair(ctx, _annotator(request, annotator))[0])

    def api_progress(annotator: str, request: gr.Request) -> dict:
        return ranking.progress(ctx, _annotator(request, annotator))

    def api_score(prompt: str, completion: str) -> float:
        return training.score_text(ctx, prompt, completion)

    private = {"api_visibility": "private"}
    model = {"concurrency_id": "model", "concurrency_limit": 1}
    light = {"concurrency_id": "labels", "concurrency_limit": LABEL_WRITERS}
    with gr.Blocks(title="RLHF workbench") as demo:
        gr.Markdown(f"## RLHF workbench\nRun `{ctx.root if show_paths else ctx.root.name}` · policy **{ctx.policy.name}** · reward backbone "
                    f"**{ctx.reward_backbone}**")
        with gr.Tabs():
            with gr.Tab("Rank", id="rank") as rank_tab:
                view = gr.State(None)
                with gr.Row():
                    annotator = gr.Textbox(value="annotator", label="Your name", max_length=64, scale=2,
                                           elem_id="annotator")
                    active = gr.Checkbox(label="Pick pairs the reward model is least sure about", scale=2,
                                         elem_id="active")
                    model_a = gr.Dropdown([ctx.policy.name], value=ctx.policy.name, label="Model A", scale=2)
                    model_b = gr.Dropdown([ctx.policy.name], value=ctx.policy.name, label="Model B", scale=2)
                    mode = gr.Radio(list(rank_k.MODES), value="pairs", label="Mode", scale=2, elem_id="rank-mode")
                    k_choice = gr.Dropdown(list(range(rank_k.MIN_K, rank_k.MAX_K + 1)), value=rank_k.DEFAULT_K,
                                           label="K answers", scale=1, visible=False, elem_id="rank-k")
                progress = gr.Markdown(elem_id="progress")
                with gr.Column() as pair_column:
                    prompt_box = gr.Textbox(label="Prompt", interactive=False, lines=2, elem_id="rank-prompt")
                    with gr.Row(equal_height=True):
                        side_a = gr.Textbox(label="A", interactive=False, lines=7, elem_id="side-a",
                                            elem_classes="completion")
                        side_b = gr.Textbox(label="B", interactive=False, lines=7, elem_id="side-b",
                                            elem_classes="completion")
                    with gr.Row(elem_classes="vote-row"):
                        vote_buttons = {choice: gr.Button(f"{name}  [{key}]", elem_id=f"vote-{choice}",
                                                          variant="primary" if choice in ("A", "B") else "secondary",
                                                          interactive=False)  # enabled once a pair is stored
                                        for (choice, name), key in zip(ranking.CHOICE_NAMES.items(), "12345")}
                        undo = gr.Button("Undo last  [u]", elem_id="undo-last", variant="stop")
                    note = gr.Markdown(elem_id="pair-note")
                    reveal = gr.Markdown(elem_id="reveal")
                    with gr.Accordion("Rank your own prompt", open=False), gr.Row():
                        typed = gr.Textbox(label="Prompt", max_length=MAX_PROMPT_CHARS, lines=2, scale=4,
                                           elem_id="typed-prompt")
                        typed_go = gr.Button("New pair for my prompt", scale=1, elem_id="typed-go")
                rank_panel = rank_k_panel.build_panel(ctx)  # "rank K" mode: K answers stacked (Model A writes them)
                with gr.Accordion("Top up with a simulated persona", open=False):
                    gr.Markdown("A simulated labeler (a gold reward plus noise) labels more pairs for you. Its labels "
                                "are stored as `sim:<persona>` and never mixed up with yours; it also labels the pairs "
                                "you labelled, so you can see below whether it shares your taste.")
                    with gr.Row():
                        persona_name = gr.Dropdown(list(persona.PERSONAS), value=training.ORACLE, label="Persona",
                                                   scale=2, elem_id="persona")
                        persona_noise = gr.Dropdown(list(persona.NOISE), value=next(iter(persona.NOISE)),
                                                    label="Noise", scale=2)
                        persona_n = gr.Number(value=40, precision=0, minimum=1, maximum=persona.MAX_TOP_UP,
                                              label="Pairs to label", scale=1, elem_id="persona-n")
                        persona_go = gr.Button("Label them", scale=1, elem_id="persona-go")
                    persona_status = gr.Markdown(elem_id="persona-status")
                    persona_stats = gr.Markdown(elem_id="persona-stats")
                with gr.Accordion("Your labels: history, edit, download", open=False):
                    with gr.Row():
                        history_go = gr.Button("Show my labels", scale=1, elem_id="history-go")
                        edit_pair = gr.Textbox(label="Pair id to relabel", max_length=64, scale=2,
                                               elem_id="edit-pair")
                        edit_choice = gr.Dropdown(list(ranking.CHOICE_NAMES), value="A", label="New label", scale=1)
                        edit_go = gr.Button("Relabel (a new revision)", scale=1, elem_id="edit-go")
                    edit_note = gr.Markdown()
                    history = gr.Dataframe(headers=exports.HISTORY_HEADERS, wrap=True, interactive=False,
                                           column_widths=["22%", "40%", "12%", "10%", "16%"],
                                           elem_classes="wrap-table", label="Newest first")
                    with gr.Row():
                        labels_format = gr.Dropdown(list(exports.LABEL_FORMATS), value="jsonl", label="Format", scale=1)
                        labels_go = gr.Button("Download all labels", scale=1, elem_id="labels-download")
                        labels_file = gr.File(label="Labels", interactive=False, scale=2, elem_id="labels-file")
                gr.Markdown("Shortcuts: **1**/a = A · **2**/b = B · **3**/t = tie · **4**/x = both bad · "
                            "**5**/s = skip · **u** = undo; in *rank K* mode **1**-**9** pick that answer next. "
                            "The reward model's opinion shows only after your vote.")

            with gr.Tab("Reward model", id="reward"):
                rm_seen = gr.State(None)
                with gr.Row():
                    epochs = gr.Slider(0.5, training.MAX_RM_EPOCHS, value=training.DEFAULT_RM_EPOCHS, step=0.5, label="Epochs", scale=3)
                    rm_train = gr.Button("Train / retrain on the labels so far", variant="primary", scale=2,
                                         elem_id="rm-train")
                rm_status = gr.Markdown(elem_id="rm-status")
                rm_summary = gr.Markdown()
                with gr.Row():
                    rm_loss = gr.Plot(label="Loss")
                    rm_accuracy = gr.Plot(label="Accuracy")
                rm_diag_go = gr.Button("Diagnose on the current labels", elem_id="rm-diagnose")
                rm_diag_text = gr.Markdown()
                with gr.Row():
                    rm_hist = gr.Plot(label="Score histograms")
                    rm_calibration = gr.Plot(label="Calibration")
                    rm_length = gr.Plot(label="Score vs length")
                with gr.Accordion("Score any text with the current reward model", open=True):
                    with gr.Row():
                        score_prompt = gr.Textbox(label="Prompt", max_length=MAX_PROMPT_CHARS, lines=2)
                        score_completion = gr.Textbox(label="Completion", max_length=4000, lines=2)
                        score_value = gr.Number(label="Reward", interactive=False, precision=3)
                    score_go = gr.Button("Score", elem_id="score-go")
                rm_timer = gr.Timer(JOB_POLL_S)

            with gr.Tab("RL fine-tuning", id="rl"):
                rl_seen = gr.State(None)
                with gr.Row():
                    algo = gr.Dropdown(list(training.ALGORITHMS), value="rloo", label="Algorithm")
                    steps = gr.Number(value=training.QUICK_RL_STEPS, precision=0, minimum=1, maximum=training.MAX_RL_STEPS,
                                      label="Steps", elem_id="rl-steps")
                    beta = gr.Number(value=0.05, minimum=0, maximum=1, label="β (KL coefficient)")
                    lora = gr.Checkbox(label="LoRA adapters")
                    archive = gr.Checkbox(label=training.NEW_RUN_LABEL)
                with gr.Row():
                    rl_start = gr.Button("Start", variant="primary", elem_id="rl-start")
                    rl_stop = gr.Button("Stop", variant="stop", elem_id="rl-stop")
                    rl_resume = gr.Button("Resume", elem_id="rl-resume")
                rl_message = gr.Markdown()
                rl_status = gr.Markdown(elem_id="rl-status")
                rl_plot = gr.Plot(label="Training curves")
                rl_note = gr.Markdown(elem_id="rl-note")
                rl_samples = gr.Dataframe(headers=["step", "prompt", "completion", "gold"], wrap=True,
                                          interactive=False, label="Latest samples", elem_classes="wrap-table",
                                          column_widths=["8%", "32%", "50%", "10%"])
                rl_timer = gr.Timer(JOB_POLL_S)

            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    cmp_prompt = gr.Dropdown(heldout, value=heldout[0], allow_custom_value=True, label="Prompt",
                                             scale=4)
                    cmp_seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", scale=1)
                    cmp_go = gr.Button("Compare base and tuned", variant="primary", scale=1, elem_id="compare-go")
                with gr.Row(equal_height=True):
                    with gr.Column():
                        base_text = gr.Textbox(label="Base policy", interactive=False, lines=5)
                        base_score = gr.Markdown()
                    with gr.Column():
                        tuned_text = gr.Textbox(label="Tuned policy (rl/policy)", interactive=False, lines=5)
                        tuned_score = gr.Markdown()
                logratio_plot = gr.Plot(label="Per-token log(π/π_ref) of the tuned sample")
                gr.Markdown("### Evaluation on held-out prompts")
                with gr.Row():
                    eval_n = gr.Number(value=compare.EVAL_PROMPTS_DEFAULT, precision=0, minimum=2,
                                       maximum=compare.MAX_EVAL_PROMPTS, label="Held-out prompts", scale=1)
                    eval_go = gr.Button("Evaluate (background job)", variant="primary", scale=2, elem_id="eval-go")
                eval_message = gr.Markdown()
                eval_status = gr.Markdown(elem_id="eval-status")
                eval_seen = gr.State(None)
                eval_timer = gr.Timer(JOB_POLL_S)
                report_note = gr.Markdown(elem_id="report-note")
                report_table = gr.Plot(label="Before / after")
                with gr.Row():
                    overopt_plot = gr.Plot(label="Over-optimisation")
                    win_plot = gr.Plot(label="Win rates")
                gaming_note = gr.Markdown(elem_id="gaming")
                gr.Markdown("### Blind test\nBase and tuned reply to the same prompt and seed in random order. "
                            "Prompts come from the held-out set, or type your own here.")
                blind_state = gr.State(None)
                with gr.Row():
                    blind_prompt = gr.Textbox(label="Your prompt (empty: a random held-out one)",
                                              max_length=MAX_PROMPT_CHARS, scale=4, elem_id="blind-prompt")
                    blind_go = gr.Button("New blind pair", scale=1, elem_id="blind-go")
                blind_shown_prompt = gr.Markdown(elem_id="blind-shown-prompt")
                with gr.Row(equal_height=True):
                    blind_left = gr.Textbox(label="Left", interactive=False, lines=5, elem_id="blind-left")
                    blind_right = gr.Textbox(label="Right", interactive=False, lines=5, elem_id="blind-right")
                with gr.Row():
                    blind_buttons = {c: gr.Button(f"{c.capitalize()} is better" if c != "tie" else "Tie",
                                                  elem_id=f"blind-vote-{c}") for c in compare.BLIND_CHOICES}
                blind_result = gr.Markdown(elem_id="blind-result")
                blind_rate = gr.Markdown(compare.win_rate_markdown(votes.win_rate(), votes.count_identical()),
                                         elem_id="blind-rate")
                with gr.Accordion("Download the reward model, the tuned policy or the report", open=False):
                    with gr.Row():
                        folder_what = gr.Dropdown(list(exports.FOLDERS), value="reward model", label="Folder (zip)")
                        folder_go = gr.Button("Download folder", elem_id="folder-download")
                        report_go = gr.Button("Download evaluation report", elem_id="report-download")
                    download_file = gr.File(label="Download", interactive=False, elem_id="download-file")

        # -- wiring ---------------------------------------------------------------------------------------------
        voting = list(vote_buttons.values())
        pair_outputs = [view, prompt_box, side_a, side_b, note, *voting]
        next_inputs = [view, annotator, active, model_a, model_b]
        demo.load(None, js=SHORTCUTS_JS)
        demo.load(_guarded(on_load), [annotator], [annotator, progress, model_a, model_b], **private, **light) \
            .then(_guarded(on_next), next_inputs, pair_outputs, **private, **model)
        for choice, button in vote_buttons.items():
            button.click(_guarded(vote_handler(choice)), [view, annotator], [view, reveal, progress, *voting],
                         **private, **light) \
                .success(_guarded(on_next), next_inputs, pair_outputs, **private, **model)
        undo.click(_guarded(on_undo), [view, annotator], [*pair_outputs, reveal, progress], **private, **light)
        rank_k_panel.wire_panel(rank_panel, ctx, mode=mode, k_choice=k_choice, annotator=annotator, model=model_a,
                                progress=progress, pair_only=[pair_column, active, model_b],
                                pair_progress=rank_progress, guarded=_guarded, who=_annotator, light=light,
                                decode=model)
        rank_tab.select(_guarded(on_rank_tab), [annotator, mode, reveal, rank_panel.reveal],
                        [progress, reveal, rank_panel.reveal], **private, **light)
        typed_go.click(_guarded(on_typed), [typed, model_a, model_b], pair_outputs, **private, **model)
        typed.submit(_guarded(on_typed), [typed, model_a, model_b], pair_outputs, **private, **model)
        persona_go.click(_guarded(on_top_up), [persona_name, persona_noise, persona_n, annotator],
                         [persona_status, persona_stats, progress], **private, **model)
        history_go.click(_guarded(on_history), [annotator], [history], **private, **light)
        edit_go.click(_guarded(on_edit), [edit_pair, edit_choice, annotator], [edit_note, history, progress],
                      **private, **light)
        labels_go.click(_guarded(lambda f: str(exports.labels_file(ctx, f))), [labels_format], [labels_file], **private,
                        **light)

        rm_train.click(_guarded(lambda e: training.start_reward_training(ctx, e)), [epochs], [rm_status], **private,
                       **light)
        rm_timer.tick(rm_poll, [rm_seen], [rm_status, rm_loss, rm_accuracy, rm_summary, rm_seen], **private,
                      concurrency_id="poll", concurrency_limit=4, show_progress="hidden")
        rm_diag_go.click(_guarded(rm_diagnose), None, [rm_diag_text, rm_hist, rm_calibration, rm_length], **private,
                         **model)
        score_go.click(_guarded(api_score), [score_prompt, score_completion], [score_value], **private, **light)

        def rl_start_fn(resume):
            return lambda a, s, b, lo, ar: training.start_rl(ctx, a, s, b, lo, resume=resume, archive_previous=ar)
        rl_inputs = [algo, steps, beta, lora, archive]
        rl_start.click(_guarded(rl_start_fn(False)), rl_inputs, [rl_message], **private, **light)
        rl_resume.click(_guarded(rl_start_fn(True)), rl_inputs, [rl_message], **private, **light)
        rl_stop.click(lambda: training.stop_rl(ctx), None, [rl_message], **private, concurrency_id="stop",
                      concurrency_limit=2)
        rl_timer.tick(rl_poll, [rl_seen], [rl_status, rl_plot, rl_note, rl_samples, rl_seen, algo, steps, beta, lora],
                      **private,
                      concurrency_id="poll", concurrency_limit=4, show_progress="hidden")

        cmp_go.click(_guarded(on_compare), [cmp_prompt, cmp_seed],
                     [base_text, base_score, tuned_text, tuned_score, logratio_plot], **private, **model)
        report_outputs = [report_note, report_table, overopt_plot, win_plot, gaming_note]
        demo.load(_guarded(on_report), None, report_outputs, **private, **light)
        eval_go.click(_guarded(lambda n: compare.start_evaluation(ctx, n)), [eval_n], [eval_message], **private,
                      **light)
        eval_timer.tick(eval_poll, [eval_seen], [eval_status, *report_outputs, eval_seen], **private,
                        concurrency_id="poll", concurrency_limit=4, show_progress="hidden")
        folder_go.click(_guarded(lambda w: str(exports.folder_zip(ctx, w))), [folder_what], [download_file], **private,
                        **light)
        report_go.click(_guarded(lambda: str(exports.report_file(ctx))), None, [download_file], **private, **light)
        blind_go.click(_guarded(on_blind), [blind_prompt],
                       [blind_state, blind_left, blind_right, blind_result, blind_shown_prompt, blind_rate],
                       **private, **model)
        for choice, button in blind_buttons.items():
            button.click(_guarded(blind_vote_handler(choice)), [blind_state, annotator],
                         [blind_result, blind_rate, blind_state], **private, **light)

        # queue=False also opens POST /gradio_api/run/label to plain HTTP clients (gradio_client always queues)
        gr.api(_guarded(api_label), api_name="label", queue=False)
        gr.api(_guarded(api_new_pair), api_name="new_pair", **model)
        gr.api(_guarded(api_stream_pair), api_name="stream_pair", **model)
        gr.api(_guarded(api_next_pair), api_name="next_pair", **model)
        gr.api(_guarded(api_progress), api_name="progress", **light)
        gr.api(_guarded(api_score), api_name="score", **light)
    demo.app_context = ctx  # for tests and launch(): the one place the shared state can be reached from
    return demo


def serve(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, auth: list[tuple[str, str]] | None = None,
          prevent_thread_lock: bool = False, quiet: bool = False, root_path: str | None = None,
          extra_hosts: tuple[str, ...] = (), guard: GuardConfig | None = None):
    """Launch with the secure defaults: no share link, no monitoring, capped uploads, run directory not served, and
    `apps.security.RequestGuard` in front of every route (Host/Origin allow-list, login throttling, headers, API
    signatures). extra_hosts: names a reverse proxy forwards in Host (with root_path, the public URL)."""
    from starlette.middleware import Middleware

    for name, value in GRADIO_QUEUE_ANALYTICS.items():  # read when the queue is created
        os.environ.setdefault(name, value)
    guard = guard or GuardConfig(allowed_hosts=allowed_hosts(host, root_path, extra_hosts))
    demo.queue(default_concurrency_limit=1, max_size=512)
    return demo.launch(server_name=host, server_port=port, share=False, auth=auth or None, theme=THEME, css=CSS,
                       app_kwargs={"middleware": [Middleware(RequestGuard, demo=demo, config=guard)]},
                       root_path=root_path,
                       enable_monitoring=False, max_file_size="1mb", show_error=True, ssr_mode=False, mcp_server=False,
                       pwa=False, allowed_paths=[], blocked_paths=[str(demo.app_context.root)],
                       prevent_thread_lock=prevent_thread_lock, quiet=quiet, footer_links=["api"], run_history=False)


def launch(run_dir: str | Path = "runs/demo", policy_name: str = DEFAULT_POLICY,
           reward_backbone: str = DEFAULT_REWARD_BACKBONE, host: str = "127.0.0.1", port: int = 7860,
           auth: list[tuple[str, str]] | None = None, prevent_thread_lock: bool = False, root_path: str | None = None,
           extra_hosts: tuple[str, ...] = (), show_paths: bool = False):
    import torch

    from workbench.models import describe_models, prepare_offline_copy

    torch.set_num_threads(APP_TORCH_THREADS)
    ready = {row["name"]: row["offline_ready"] for row in describe_models()}
    for name in (policy_name, reward_backbone):
        if name in ready and not ready[name]:
            print(f"Preparing {name} (first start only; this takes ~30 s)...", file=sys.stderr, flush=True)
            prepare_offline_copy(name)
    print(f"Loading {policy_name} and opening {run_dir}...", file=sys.stderr, flush=True)
    demo = build_demo(run_dir, policy_name, reward_backbone, show_paths=show_paths)
    try:
        return serve(demo, host, port, auth, prevent_thread_lock, root_path=root_path, extra_hosts=extra_hosts)
    finally:
        if not prevent_thread_lock:
            demo.app_context.close()
