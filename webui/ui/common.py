"""Small helpers every tab uses: the browser's locale, numbers from forms, and how values are shown."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from webui.i18n.catalog import Catalog
from webui.services.models import ModelRoots
from webui.services.serve_spec import FieldError


def locale_of(request: gr.Request | None) -> str:
    """en or zh, from the browser's Accept-Language (backend messages follow the page's language)."""
    headers = getattr(request, "headers", None) or {}
    return Catalog.locale_from_header(headers.get("accept-language"))


def as_int(value: object, default: int = 0) -> int:
    """Gradio reports a cleared Number as None; the specs want a default (0 = let LMDeploy decide)."""
    if value is None or value == "":
        return default
    try:
        return int(float(str(value)))
    except ValueError:
        return default


def format_errors(catalog: Catalog, errors: list[FieldError] | tuple[FieldError, ...], locale: str,
                  prefix: str) -> str:
    """A list naming each refused field by its label (`<prefix>.<field>.label`) with the fix."""
    lines = []
    for err in errors:
        field = catalog.text(f"{prefix}.{err.field}.label", locale)
        lines.append(f"- **{field}**: {catalog.text(err.key, locale, **err.params)}")
    return f"**{catalog.text('serve.msg.errors_heading', locale)}**\n\n" + "\n".join(lines)


def state_refusal(catalog: Catalog, error: str, params: Mapping[str, Any], locale: str) -> str:
    """A refused sleep or wake in words, the server states it names (`state`, `needs`) in the page's language."""
    words = {k: str(v) for k, v in params.items()}
    for key in ("state", "needs"):
        if key in words:
            words[key] = catalog.text(f"serve.state.{words[key]}", locale)
    return catalog.text(error, locale, **words)


def reply_numbers(catalog: Catalog, stats: Mapping[str, Any], locale: str) -> str:
    """A reply's numbers in the page's words: `TTFT 42 ms · 31.2 tok/s · 12 + 64 tokens` (≈ when counted from
    the stream); the services return only the numbers (ReplyStats.as_dict)."""
    parts = []
    ttft = stats.get("ttft_s")
    if ttft is not None:
        parts.append(catalog.text("chat.numbers.ttft", locale, ms=f"{ttft * 1000:.0f}"))
    tps = stats.get("tokens_per_s")
    if tps is not None and math.isfinite(tps):
        parts.append(catalog.text("chat.numbers.speed", locale, tps=f"{tps:.1f}"))
    prompt = stats.get("prompt_tokens")
    done = stats.get("completion_tokens", 0)
    if prompt is not None:
        parts.append(catalog.text("chat.numbers.tokens", locale, prompt=prompt, completion=done))
    else:
        approx = "" if stats.get("usage_reported") else "≈"
        parts.append(approx + catalog.text("chat.numbers.completion", locale, completion=done))
    if stats.get("cancelled"):
        parts.append(catalog.text("chat.numbers.stopped", locale))
    elif stats.get("finish_reason") == "length":
        parts.append(catalog.text("chat.numbers.length", locale))
    return " · ".join(parts)


def model_choices(roots: ModelRoots, current: str | None) -> gr.Dropdown:
    """The model folders found under the roots, keeping what the user typed or picked."""
    choices = [str(p) for p in roots.discover()]
    return gr.Dropdown(choices=choices, value=current or (choices[0] if choices else None))


def picked_row(table: pd.DataFrame, evt: gr.SelectData, column: int) -> str | None:
    """The id in `column` of the row a user clicked in a table."""
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    try:
        return str(table.iloc[int(row), column])
    except (IndexError, ValueError, TypeError):
        return None


def short_model(model: str) -> str:
    """A model id that is a path shows as its folder name in tables (details show it whole)."""
    return Path(model).name if "/" in model and not model.endswith("/") else model


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def gib(n: float | int | None) -> str:
    return f"{(n or 0) / (1 << 30):.2f} GiB"


def size(n: float | int | None) -> str:
    n = float(n or 0)
    return f"{n / (1 << 30):.2f} GB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MB"
