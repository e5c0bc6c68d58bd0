"""Plain-Python services of the console. Nothing here imports gradio."""
