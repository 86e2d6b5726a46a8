"""The workbench app. This file only wires components; logic lives in `apps.handlers`."""

from __future__ import annotations

import gradio as gr

from apps.handlers import InputError, LoadedPolicy, sample_completions
from workbench.data import builtin_prompts
from workbench.models import load_policy

THEME = gr.themes.Soft(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])  # no web fonts


def build_demo(policy_name: str = "smollm2-135m-instruct") -> gr.Blocks:
    model, tokenizer = load_policy(policy_name)
    policy = LoadedPolicy(policy_name, model, tokenizer)
    examples = [r.text for r in builtin_prompts("heldout")[:6]]

    def on_generate(prompt, n, temperature, max_new_tokens, seed):
        try:
            rows = sample_completions(policy, prompt, n, temperature, max_new_tokens, seed)
        except InputError as error:
            raise gr.Error(str(error)) from None
        return [[r["sample"], r["completion"], r["tokens"], r["mean_logprob"], r["finished"]] for r in rows]

    with gr.Blocks(title="RLHF workbench") as demo:
        gr.Markdown(f"# RLHF workbench\nStage 1 — sample from the policy **{policy_name}**.")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=3, max_length=2000, elem_id="prompt")
                gr.Examples(examples, inputs=prompt)
            with gr.Column(scale=2):
                n = gr.Slider(1, 8, value=2, step=1, label="Samples")
                temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)")
                max_new_tokens = gr.Slider(8, 256, value=48, step=8, label="Max new tokens")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        table = gr.Dataframe(headers=["#", "completion", "tokens", "mean log-prob", "ended with EOS"],
                             wrap=True, interactive=False, elem_id="completions")
        inputs = [prompt, n, temperature, max_new_tokens, seed]
        button.click(on_generate, inputs, table, api_name="generate", concurrency_limit=1)
        prompt.submit(on_generate, inputs, table, api_name=False, concurrency_limit=1)
    return demo


def launch(policy_name: str = "smollm2-135m-instruct", host: str = "127.0.0.1", port: int = 7860,
           prevent_thread_lock: bool = False):
    demo = build_demo(policy_name)
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo.launch(server_name=host, server_port=port, share=False, theme=THEME, enable_monitoring=False,
                       max_file_size="1mb", prevent_thread_lock=prevent_thread_lock, show_error=True)
