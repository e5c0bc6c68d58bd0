"""Gradio layer: one <name>_tab.py per tab. Nothing here spawns processes or calls NVML or openai."""
