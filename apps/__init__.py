"""The Gradio door into the workbench: `build_demo()` wires components, `handlers` holds the logic."""
