"""The Compare tab: the same workload against several configurations, and what each knob costs and buys.

The configurations are one JSON list (the `configs` parameter of submit_compare), built with the buttons here or
edited by hand for any other Serve option. The services return numbers; this module words them: the table with
the baseline marked and deltas in %, the charts, and the plain-language verdict.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from webui.i18n.catalog import Catalog
from webui.services.compare import (
    CompareConfig,
    CompareManager,
    CompareRequest,
    CompareSnapshot,
    deltas,
    field_error,
    result_csv,
)
from webui.services.job_states import JobState, is_live_job
from webui.services.models import ModelRoots
from webui.services.quantize import JobManager
from webui.services.serve import ServerManager
from webui.services.serve_spec import BACKENDS, KV_POLICIES, FieldError, ServerSpec
from webui.services.server_states import ServerState
from webui.ui import forms
from webui.ui.common import format_errors, gib, locale_of, model_choices, picked_row

MAX_CONFIGS_CHARS = 64000
QUALITY_SOURCES = ("sample", "own", "none")


@dataclass(frozen=True)
class CompareValues:
    """The run form's values; the field names are submit_compare's API parameters."""

    configs: str = forms.text("[]", max_chars=MAX_CONFIGS_CHARS)
    workload: str = forms.text("builtin", max_chars=4096)
    concurrency: str = forms.text("1, 8", max_chars=64)
    requests_per_level: int = forms.whole(CompareRequest.requests_per_level)
    max_new_tokens: int = forms.whole(CompareRequest.max_new_tokens)
    seed: int = forms.whole(CompareRequest.seed)
    quality: str = forms.text("sample", max_chars=16)
    quality_text: str = forms.text("", max_chars=200000)
    answers: int = forms.whole(CompareRequest.answers)
    baseline: int = forms.whole(1)
    ignore_eos: bool = forms.flag(CompareRequest.ignore_eos)
    keep_servers: bool = forms.flag(CompareRequest.keep_servers)

    def to_request(self) -> CompareRequest | list[FieldError]:
        errors: list[FieldError] = []
        configs = parse_configs(self.configs)
        if isinstance(configs, FieldError):
            errors.append(configs)
            configs = []
        levels: list[int] = []
        for part in self.concurrency.replace("，", ",").split(","):
            if part.strip():
                try:
                    levels.append(int(part.strip()))
                except ValueError:
                    errors.append(field_error("concurrency", "compare.err.levels_format", {"value": part.strip()[:20]}))
                    break
        if self.quality not in QUALITY_SOURCES:
            errors.append(field_error("quality", "errors.choice", {"value": self.quality[:20],
                                                                   "choices": ", ".join(QUALITY_SOURCES)}))
        quality = self.quality_text if self.quality == "own" else self.quality
        if self.quality == "own" and not self.quality_text.strip():
            errors.append(field_error("quality_text", "compare.err.quality_empty", {}))
        if errors:
            return errors
        return CompareRequest(configs=tuple(configs), workload=self.workload.strip() or "builtin",
                              concurrency=tuple(sorted(set(levels))), requests_per_level=self.requests_per_level,
                              max_new_tokens=self.max_new_tokens, seed=self.seed, quality=quality,
                              answers=self.answers, baseline=self.baseline - 1, ignore_eos=self.ignore_eos,
                              keep_servers=self.keep_servers)


COMPARE_FORM = forms.Form(CompareValues)


def parse_configs(text: str) -> list[CompareConfig] | FieldError:
    """The JSON list of configurations, or an error naming where it broke and what each entry needs."""
    try:
        data = json.loads(text or "[]")
    except ValueError as exc:
        line = getattr(exc, "lineno", 0)
        return field_error("configs", "compare.err.configs_json", {"line": line, "error": str(exc)[:120]})
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        return field_error("configs", "compare.err.configs_shape", {})
    configs = []
    for number, item in enumerate(data, 1):
        if not item.get("server_id") and not (item.get("model_path") or (item.get("spec") or {}).get("model_path")):
            return field_error("configs", "compare.err.config_empty", {"config": number})
        try:
            configs.append(CompareConfig.from_json_dict(item))
        except (TypeError, ValueError) as exc:
            return field_error("configs", "compare.err.configs_shape_at", {"config": number, "error": str(exc)[:120]})
    return configs


@dataclass(frozen=True)
class CompareForm:
    configs: gr.Code
    workload: gr.Textbox
    concurrency: gr.Textbox
    requests_per_level: gr.Number
    max_new_tokens: gr.Number
    seed: gr.Number
    quality: gr.Radio
    quality_text: gr.Textbox
    answers: gr.Number
    baseline: gr.Number
    ignore_eos: gr.Checkbox
    keep_servers: gr.Checkbox


class CompareHandlers:
    """Event handlers of the Compare tab; they command the CompareManager and word its numbers."""

    def __init__(self, compare: CompareManager, servers: ServerManager, jobs: JobManager, roots: ModelRoots,
                 catalog: Catalog) -> None:
        self.compare = compare
        self.servers = servers
        self.jobs = jobs
        self.roots = roots
        self.catalog = catalog

    # building the list ----------------------------------------------------------------------------------
    def awq_output_of(self, model_path: str | None) -> str:
        """The newest finished AWQ output of this model, "" if it was never quantized here."""
        done = [j for j in self.jobs.snapshots() if j.state == JobState.SUCCEEDED and j.model_path == model_path]
        return max(done, key=lambda j: j.ended_at or 0).output_dir if done else ""

    def suggest_awq(self, model_path: str | None) -> gr.Dropdown:
        outputs = [j.output_dir for j in self.jobs.snapshots() if j.state == JobState.SUCCEEDED]
        return gr.Dropdown(choices=["", *outputs], value=self.awq_output_of(model_path))

    def add_grid(self, configs: str, model_path: str | None, awq_path: str | None, backend: str,
                 fraction: float | None, request: gr.Request) -> tuple[str, str]:
        from webui.services.compare import usual_grid

        locale = locale_of(request)
        if not model_path:
            return gr.skip(), self.catalog.text("compare.msg.pick_model", locale)
        current = _loads(configs)
        grid = usual_grid(model_path, awq_path or "", backend or "pytorch", float(fraction or 0.4))
        entries = [{"label": c.label, **_compact(c.spec)} for c in grid if c.spec]
        merged = (current + entries)[:8]
        message = self.catalog.text("compare.msg.grid_added", locale, count=len(entries))
        if not awq_path:
            message += " " + self.catalog.text("compare.msg.grid_no_awq", locale)
        return _dumps(merged), message

    def add_config(self, configs: str, model_path: str | None, backend: str, kv_policy: str, fraction: float | None,
                   label: str, request: gr.Request) -> tuple[str, str]:
        locale = locale_of(request)
        if not model_path:
            return gr.skip(), self.catalog.text("compare.msg.pick_model", locale)
        entry: dict[str, Any] = {"label": label.strip(), "model_path": model_path, "backend": backend,
                                 "kv_policy": kv_policy, "cache_max_entry_count": float(fraction or 0.4)}
        if "awq" in Path(model_path).name.lower():
            entry["model_format"] = "awq"
        return _dumps([*_loads(configs), entry][:8]), ""

    def add_server(self, configs: str, server_id: str | None, request: gr.Request) -> tuple[str, str]:
        locale = locale_of(request)
        if not server_id:
            return gr.skip(), self.catalog.text("compare.msg.pick_server", locale)
        return _dumps([*_loads(configs), {"label": "", "server_id": server_id}][:8]), ""

    def clear(self) -> str:
        return "[]"

    def server_choices(self, current: str | None) -> gr.Dropdown:
        ready = [s for s in self.servers.snapshots() if s.state == ServerState.READY]
        choices = [(f"{s.id} · {s.model_id.rsplit('/', 1)[-1]}", s.id) for s in ready]
        return gr.Dropdown(choices=choices, value=current if current in {s.id for s in ready} else None)

    def preview(self, configs: str, request: gr.Request) -> tuple[pd.DataFrame, str]:
        """The list as a table with each configuration's exact command, or what is wrong with it."""
        locale = locale_of(request)
        t = self.catalog.text
        columns = [t("compare.col.number", locale), t("compare.col.label", locale), t("compare.col.runs", locale),
                   t("compare.col.command", locale)]
        parsed = parse_configs(configs)
        if isinstance(parsed, FieldError):
            return pd.DataFrame(columns=columns), self.errors_text([parsed], locale)
        if not parsed:
            return pd.DataFrame(columns=columns), ""
        described, errors = self.compare.preview(CompareRequest(configs=tuple(parsed), concurrency=(1,)))
        rows = [[d["index"] + 1, d["label"], t(f"compare.source.{d['source']}", locale), d["command"]]
                for d in described]
        return pd.DataFrame(rows, columns=columns), self.errors_text(errors, locale) if errors else ""

    def errors_text(self, errors: list[FieldError] | tuple[FieldError, ...], locale: str) -> str:
        """Field errors in the page's words; a configuration's own Serve errors name it and its Serve field."""
        own = [e for e in errors if e.key.startswith("compare.") or "field" not in e.params]
        lines = [format_errors(self.catalog, own, locale, "compare")] if own else []
        t = self.catalog.text
        for e in errors:
            if e in own:
                continue
            where = t("compare.err.at_config", locale, config=e.params.get("config", "?"))
            label = t(f"serve.{e.params['field']}.label", locale)
            lines.append(f"- **{where} · {label}**: {t(e.key, locale, **e.params)}")
        return "\n".join(lines)

    # running -----------------------------------------------------------------------------------------------
    def submit_compare(self, form: forms.Parsed[CompareValues], request: gr.Request | None) -> tuple[str, str]:
        """Start a comparison of 2-8 configurations; returns a message and the new comparison's id ("" if not)."""
        locale = locale_of(request)
        if form.errors:
            return self.errors_text(form.errors, locale), ""
        built = form.values.to_request()
        if isinstance(built, list):
            return self.errors_text(built, locale), ""
        outcome = self.compare.submit(built)
        if isinstance(outcome, list):
            return self.errors_text(outcome, locale), ""
        return self.catalog.text("compare.msg.started", locale, id=outcome.id, count=len(outcome.configs)), outcome.id

    def cancel_compare(self, compare_id: str, request: gr.Request | None = None) -> str:
        """Cancel a running comparison: the load stops, what it started is stopped, measured results stay."""
        locale = locale_of(request)
        try:
            snap = self.compare.cancel(compare_id or "")
        except KeyError:
            return self.catalog.text("compare.msg.unknown", locale, id=compare_id)
        return self.catalog.text("compare.msg.cancelling", locale, id=snap.id)

    def compare_progress_api(self, compare_id: str) -> dict:
        """State, overall progress (0..1), the configuration being measured and each one's status ({} if unknown)."""
        snap = self.compare.get(compare_id)
        if snap is None:
            return {}
        return {"id": snap.id, "state": snap.state, "progress": snap.progress, "current": snap.current,
                "configs": [{k: c.get(k) for k in ("index", "label", "status", "phase", "level", "level_done",
                                                   "level_total", "server_id", "error")} for c in snap.configs]}

    def list_compares_api(self) -> list[dict]:
        """Every comparison, newest first: id, state, when, labels."""
        return [{"id": s.id, "state": s.state, "created_at": s.created_at, "ended_at": s.ended_at,
                 "labels": [c.get("label") for c in s.configs]} for s in self.compare.snapshots()]

    def compare_result_api(self, compare_id: str) -> dict:
        """Every configuration's numbers (levels, memory, KV blocks, perplexity, answers, command) and deltas."""
        return self.compare.result(compare_id) or {}

    # showing ------------------------------------------------------------------------------------------------
    def refresh(self, compare_id: str | None, beside: list[str] | None, request: gr.Request) -> tuple[Any, ...]:
        """The timer's view: it keeps the page's pick (a tick sent before a run started must not select the
        previous comparison again), and picks the newest only when there is none yet."""
        return self._view(compare_id, request, keep=True, beside=beside)

    def select(self, compare_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        """Show this comparison (the newest when unknown) and select it in the dropdown."""
        return self._view(compare_id, request, keep=False)

    def _view(self, compare_id: str | None, request: gr.Request, keep: bool,
              beside: list[str] | None = None) -> tuple[Any, ...]:
        snaps = self.compare.snapshots()
        ids = [s.id for s in snaps]
        known = compare_id in ids
        if not known:
            compare_id = ids[0] if ids else None
        choices = [(f"{s.id} · {self.catalog.text(f'quantize.state.{s.state}', locale_of(request))}", s.id)
                   for s in snaps]
        picker = gr.Dropdown(choices=choices) if keep and known else gr.Dropdown(choices=choices, value=compare_id)
        others = gr.Dropdown(choices=choices)
        return (self.history(snaps, request), picker, others, *self.show(compare_id, beside, request))

    def history(self, snaps: list[CompareSnapshot], request: gr.Request) -> pd.DataFrame:
        locale = locale_of(request)
        t = self.catalog.text
        columns = [t("quantize.col.id", locale), t("compare.col.state", locale), t("compare.col.when", locale),
                   t("compare.col.configs", locale)]
        rows = [[s.id, t(f"quantize.state.{s.state}", locale), _clock(s.created_at),
                 " | ".join(str(c.get("label")) for c in s.configs)] for s in snaps]
        return pd.DataFrame(rows, columns=columns)

    def show(self, compare_id: str | None, beside: list[str] | None, request: gr.Request) -> tuple[Any, ...]:
        """Progress, verdict, table, charts, answers and commands of one comparison, with the configurations of
        earlier runs picked in "show beside it" added after its own (against the same baseline)."""
        locale = locale_of(request)
        own = self.compare.get(compare_id) if compare_id else None
        if own is None:
            empty = pd.DataFrame()
            return self.catalog.text("compare.msg.none", locale), "", empty, None, None, empty, "", \
                gr.Button(interactive=False)
        snap = self.beside(own, beside or [])
        baseline = int(snap.request.get("baseline") or 0)
        found = deltas(snap.configs, baseline)
        return (self.progress_html(own, locale), self.verdict(snap, found, baseline, locale),
                self.table(snap, found, baseline, locale), self.throughput_chart(snap, locale),
                self.tradeoff_chart(snap, locale), self.answers(snap, locale), self.commands(snap),
                gr.Button(interactive=is_live_job(own.state)))

    def beside(self, own: CompareSnapshot, others: list[str]) -> CompareSnapshot:
        """One view of several runs: the others' configurations follow, labelled with their run's id."""
        configs = list(own.configs)
        levels = set(own.request.get("concurrency") or [])
        for other_id in others:
            other = self.compare.get(other_id) if other_id != own.id else None
            if other is None:
                continue
            for c in other.configs:
                configs.append({**c, "index": len(configs), "label": f"{other.id} · {c.get('label')}"})
            levels |= set(other.request.get("concurrency") or [])
        request = {**own.request, "concurrency": sorted(levels)}
        return dataclasses.replace(own, configs=configs, request=request)

    def progress_html(self, snap: CompareSnapshot, locale: str) -> str:
        t = self.catalog.text
        parts = [f"<div><b>{snap.id}</b> · {t(f'quantize.state.{snap.state}', locale)} · "
                 f"<progress value='{snap.progress:.3f}' max='1'></progress> {snap.progress * 100:.0f}%</div>"]
        levels = snap.request.get("concurrency") or []
        for c in snap.configs:
            status = c.get("status", "pending")
            line = f"{c.get('index', 0) + 1}. {_html(c.get('label'))} — {t(f'compare.status.{status}', locale)}"
            if status == "measuring" and levels:
                level = int(c.get("level") or 0)
                done, total = int(c.get("level_done") or 0), max(int(c.get("level_total") or 1), 1)
                line += (" · " + t("compare.msg.level", locale, concurrency=levels[min(level, len(levels) - 1)],
                                   k=level + 1, n=len(levels), done=done, total=total)
                         + f" <progress value='{done / total:.3f}' max='1'></progress>")
            elif status == "starting" and c.get("phase"):
                line += " · " + t(f"serve.phase.{c['phase']}", locale)
            elif status == "failed" and c.get("error"):
                line += " · " + self.reason(c["error"], locale)
            parts.append(f"<div>{line}</div>")
        if snap.error:
            parts.append(f"<div>{_html(snap.error)}</div>")
        return "".join(parts)

    def reason(self, error: dict[str, Any], locale: str) -> str:
        params = {k: v for k, v in (error.get("params") or {}).items()}
        text = self.catalog.text(str(error.get("key", "")), locale, **params)
        hint = params.get("hint")
        if hint:
            text += " " + self.catalog.text(str(hint), locale)
        return _html(text)

    def verdict(self, snap: CompareSnapshot, found: list[dict[str, Any]], baseline: int, locale: str) -> str:
        """One sentence a configuration, against the baseline, with only what was measured."""
        t = self.catalog.text
        lines = []
        if snap.configs and baseline < len(snap.configs):
            lines.append(t("compare.verdict.baseline", locale, label=snap.configs[baseline].get("label")))
        for config, d in zip(snap.configs, found, strict=False):
            if config.get("index") == baseline or config.get("status") not in ("done", "failed"):
                continue
            if config.get("status") == "failed":
                lines.append(f"- **{config.get('label')}**: " + t("compare.verdict.failed", locale) + " — "
                             + self.reason(config.get("error") or {}, locale))
                continue
            bits = []
            if d.get("kv_tokens_ratio"):
                bits.append(t("compare.verdict.kv", locale, ratio=f"{d['kv_tokens_ratio']:.2f}"))
            if d.get("peak_gpu_pct") is not None:
                bits.append(t("compare.verdict.memory", locale, pct=f"{d['peak_gpu_pct']:+.1f}"))
            if d.get("perplexity_pct") is not None:
                bits.append(t("compare.verdict.ppl", locale, pct=f"{d['perplexity_pct']:+.2f}"))
            if d.get("output_tps_pct") is not None:
                bits.append(t("compare.verdict.tps", locale, pct=f"{d['output_tps_pct']:+.1f}",
                              concurrency=d["concurrency"]))
            if d.get("ttft_p50_pct") is not None:
                bits.append(t("compare.verdict.ttft", locale, pct=f"{d['ttft_p50_pct']:+.1f}"))
            lines.append(f"- **{config.get('label')}**: " + (t("compare.verdict.sep", locale).join(bits) or "—"))
        return "\n".join(lines)

    def table(self, snap: CompareSnapshot, found: list[dict[str, Any]], baseline: int, locale: str) -> pd.DataFrame:
        t = self.catalog.text
        levels = snap.request.get("concurrency") or []
        columns = [t("compare.col.label", locale), t("compare.col.status", locale), t("compare.col.blocks", locale),
                   t("compare.col.kv_tokens", locale), t("compare.col.sessions", locale),
                   t("compare.col.peak_memory", locale),
                   t("compare.col.kv_peak", locale), t("compare.col.ppl", locale)]
        for c in levels:
            columns += [t("compare.col.tps_at", locale, c=c), t("compare.col.ttft_at", locale, c=c),
                        t("compare.col.itl_at", locale, c=c)]
        columns.append(t("compare.col.errors", locale))
        rows = []
        for config, d in zip(snap.configs, found or [{}] * len(snap.configs), strict=False):
            mark = "★ " if config.get("index") == baseline else ""
            ppl = config.get("perplexity") or {}
            ppl_text = (f"{ppl['perplexity']:.3f}" + _delta(d.get("perplexity_pct")) if ppl.get("available")
                        else t("compare.na", locale) if ppl else "")
            kv_tokens = config.get("kv_tokens")
            row = [mark + str(config.get("label")), t(f"compare.status.{config.get('status', 'pending')}", locale),
                   config.get("gpu_blocks") or "", (f"{kv_tokens:,}" + _ratio(d.get("kv_tokens_ratio")))
                   if kv_tokens else "", _sessions(config), (gib(_held(config)) + _delta(d.get("peak_gpu_pct")))
                   if _held(config) else t("compare.na", locale),
                   f"{config['peak_kv_usage'] * 100:.1f}%" if config.get("peak_kv_usage") is not None
                   else t("compare.na", locale), ppl_text]
            by_level = {lv["concurrency"]: lv for lv in config.get("levels") or []}
            for c in levels:
                lv = by_level.get(c) or {}
                row += [_num(lv.get("output_tps"), 1), _p50_95(lv.get("ttft_p50_ms"), lv.get("ttft_p95_ms")),
                        _p50_95(lv.get("itl_p50_ms"), lv.get("itl_p95_ms"))]
            row.append(sum(lv.get("errors", 0) for lv in config.get("levels") or []))
            rows.append(row)
        return pd.DataFrame(rows, columns=columns)

    def throughput_chart(self, snap: CompareSnapshot, locale: str) -> go.Figure | None:
        t = self.catalog.text
        fig = go.Figure()
        for config in snap.configs:
            levels = [lv for lv in config.get("levels") or [] if lv.get("output_tps")]
            if levels:
                fig.add_trace(go.Scatter(x=[lv["concurrency"] for lv in levels],
                                         y=[lv["output_tps"] for lv in levels], mode="lines+markers",
                                         name=str(config.get("label"))))
        if not fig.data:
            return None
        fig.update_layout(title=t("compare.chart.throughput", locale), height=360, margin={"t": 40, "b": 40},
                          xaxis_title=t("compare.chart.concurrency", locale),
                          xaxis_type="log" if len(snap.request.get("concurrency") or []) > 1 else "linear",
                          yaxis_title=t("compare.chart.tps", locale))
        return fig

    def tradeoff_chart(self, snap: CompareSnapshot, locale: str) -> go.Figure | None:
        """Memory (x) against throughput at the highest level (y); perplexity as the marker's colour."""
        t = self.catalog.text
        xs, ys, colours, names = [], [], [], []
        measured = [c for c in snap.configs if any(lv.get("output_tps") for lv in c.get("levels") or [])]
        by_memory = bool(measured) and all(_held(c) for c in measured)  # one unit on the axis, never both
        for config in snap.configs:
            levels = [lv for lv in config.get("levels") or [] if lv.get("output_tps")]
            memory = _held(config) if by_memory else config.get("kv_tokens")
            if not levels or not memory:
                continue
            top = max(levels, key=lambda lv: lv["concurrency"])
            xs.append(memory / 2**30 if by_memory else memory)
            ys.append(top["output_tps"])
            ppl = (config.get("perplexity") or {}).get("perplexity")
            colours.append(ppl if ppl is not None else math.nan)
            names.append(str(config.get("label")))
        if not xs:
            return None
        marker: dict[str, Any] = {"size": 14}
        if not all(math.isnan(c) for c in colours):
            marker.update(color=colours, colorscale="Viridis", showscale=True,
                          colorbar={"title": t("compare.chart.ppl", locale)})
        fig = go.Figure(go.Scatter(x=xs, y=ys, mode="markers+text", text=names, textposition="top center",
                                   marker=marker))
        fig.update_layout(title=t("compare.chart.tradeoff", locale), height=360, margin={"t": 40, "b": 40},
                          xaxis_title=t("compare.chart.memory" if by_memory else "compare.chart.kv_tokens", locale),
                          yaxis_title=t("compare.chart.tps", locale))
        return fig

    def answers(self, snap: CompareSnapshot, locale: str) -> pd.DataFrame:
        t = self.catalog.text
        with_answers = [c for c in snap.configs if c.get("answers")]
        if not with_answers:
            return pd.DataFrame()
        count = max(len(c["answers"]) for c in with_answers)
        data = {t("compare.col.prompt", locale): [f"#{i + 1}" for i in range(count)]}
        for c in with_answers:
            data[str(c.get("label"))] = [(c["answers"][i] if i < len(c["answers"]) else "")[:600] for i in range(count)]
        return pd.DataFrame(data)

    def commands(self, snap: CompareSnapshot) -> str:
        return "\n\n".join(f"# {c.get('index', 0) + 1}. {c.get('label')}\n{c.get('command') or ''}"
                           for c in snap.configs)

    def export(self, compare_id: str | None) -> tuple[str | None, str | None]:
        """The comparison as CSV (one row per configuration and level) and as JSON (everything)."""
        result = self.compare.result(compare_id) if compare_id else None
        if result is None:
            return None, None
        folder = Path(tempfile.mkdtemp(prefix="compare-"))  # Gradio serves files from its temp dir, not the state
        csv_path = folder / f"{compare_id}.csv"
        json_path = folder / f"{compare_id}.json"
        csv_path.write_text(result_csv(result["configs"]), encoding="utf-8")
        json_path.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
        return str(csv_path), str(json_path)

    def pick_from_table(self, table: pd.DataFrame, evt: gr.SelectData) -> str | None:
        return picked_row(table, evt, column=0)

    def load_page(self, model: str | None, server: str | None, compare_id: str | None,
                  request: gr.Request) -> tuple[Any, ...]:
        return (model_choices(self.roots, model), self.server_choices(server),
                *self.refresh(compare_id, None, request))


def _sessions(config: dict[str, Any]) -> str:
    """Full-length sessions that fit in the KV pool, with the session length the engine settled on."""
    sessions, length = config.get("kv_sessions"), config.get("session_len_used")
    return f"{sessions:,} × {length:,}" if sessions is not None and length else ""


def _held(config: dict[str, Any]) -> int | None:
    """The configuration's peak memory: its own server's processes where NVML names them, else the whole GPU."""
    return config.get("peak_server_bytes") or config.get("peak_gpu_bytes")


def _compact(spec: ServerSpec) -> dict[str, Any]:
    """A spec as the list shows it: the model, backend and KV settings always, other options only when set (the
    port is chosen when the configuration starts)."""
    defaults = ServerSpec(model_path="").to_json_dict()
    always = ("model_path", "backend", "kv_policy", "cache_max_entry_count")
    return {k: v for k, v in spec.to_json_dict().items()
            if k != "port" and (k in always or v != defaults.get(k))}


def _loads(text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text or "[]")
    except ValueError:
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def _dumps(entries: list[dict[str, Any]]) -> str:
    return json.dumps(entries, ensure_ascii=False, indent=1)


def _html(value: object) -> str:
    import html

    return html.escape(str(value if value is not None else ""))


def _clock(at: float | None) -> str:
    import time

    return time.strftime("%m-%d %H:%M", time.localtime(at)) if at else ""


def _num(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _p50_95(p50: float | None, p95: float | None) -> str:
    return "" if p50 is None else f"{p50:,.1f} / {p95:,.1f} ms"


def _delta(pct: float | None) -> str:
    return "" if pct in (None, 0) else f" ({pct:+.1f}%)"


def _ratio(ratio: float | None) -> str:
    return "" if ratio in (None, 1) else f" (×{ratio:.2f})"


@dataclass(frozen=True)
class CompareTab:
    timer: gr.Timer


def build_compare_tab(demo: gr.Blocks, handlers: CompareHandlers, i18n: gr.I18n) -> CompareTab:
    """Lay out the Compare tab and wire its events."""
    v = CompareValues()
    with gr.Row():
        with gr.Column(scale=5):
            gr.Markdown(i18n("compare.configs_heading"))
            with gr.Accordion(i18n("compare.grid_heading"), open=True):
                with gr.Row():
                    grid_model = gr.Dropdown(label=i18n("compare.grid_model.label"), choices=[],
                                             allow_custom_value=True, scale=3, elem_id="compare-grid-model")
                    grid_awq = gr.Dropdown(label=i18n("compare.grid_awq.label"), choices=[""],
                                           allow_custom_value=True, scale=3, elem_id="compare-grid-awq")
                with gr.Row():
                    grid_backend = gr.Radio(list(BACKENDS), value="pytorch", label=i18n("compare.backend.label"),
                                            elem_id="compare-grid-backend")
                    grid_fraction = gr.Number(0.4, label=i18n("compare.fraction.label"), minimum=0.01, maximum=0.99,
                                              step=0.05, elem_id="compare-grid-fraction")
                    add_grid = gr.Button(i18n("compare.add_grid_button"), elem_id="compare-add-grid")
            with gr.Accordion(i18n("compare.one_heading"), open=False):
                with gr.Row():
                    one_kv = gr.Dropdown(list(KV_POLICIES), value="none", label=i18n("compare.kv_policy.label"),
                                         elem_id="compare-one-kv")
                    one_label = gr.Textbox(label=i18n("compare.one_label.label"), elem_id="compare-one-label")
                    add_one = gr.Button(i18n("compare.add_one_button"), elem_id="compare-add-one")
                with gr.Row():
                    server = gr.Dropdown(label=i18n("compare.server.label"), choices=[], scale=3,
                                         elem_id="compare-server")
                    add_server = gr.Button(i18n("compare.add_server_button"), scale=1, elem_id="compare-add-server")
            configs = gr.Code(v.configs, language="json", label=i18n("compare.configs.label"), lines=6, max_lines=18,
                              interactive=True, elem_id="compare-configs")
            with gr.Row():
                clear = gr.Button(i18n("compare.clear_button"), size="sm", elem_id="compare-clear")
            preview_message = gr.Markdown(elem_id="compare-preview-message")
            preview = gr.Dataframe(interactive=False, wrap=True, elem_id="compare-preview")
            gr.Markdown(i18n("compare.workload_heading"))
            workload = gr.Textbox(v.workload, label=i18n("compare.workload.label"), info=i18n("compare.workload.info"),
                                  elem_id="compare-workload")
            with gr.Row():
                concurrency = gr.Textbox(v.concurrency, label=i18n("compare.concurrency.label"),
                                         info=i18n("compare.concurrency.info"), elem_id="compare-concurrency")
                requests_per_level = gr.Number(v.requests_per_level, precision=0,
                                               label=i18n("compare.requests_per_level.label"),
                                               elem_id="compare-requests")
                max_new_tokens = gr.Number(v.max_new_tokens, precision=0, label=i18n("compare.max_new_tokens.label"),
                                           elem_id="compare-max-tokens")
                seed = gr.Number(v.seed, precision=0, label=i18n("compare.seed.label"))
            with gr.Row():
                quality = gr.Radio([(i18n(f"compare.quality.{q}"), q) for q in QUALITY_SOURCES], value=v.quality,
                                   label=i18n("compare.quality.label"), elem_id="compare-quality")
                answers = gr.Number(v.answers, precision=0, label=i18n("compare.answers.label"))
                baseline = gr.Number(v.baseline, precision=0, label=i18n("compare.baseline.label"),
                                     elem_id="compare-baseline")
            quality_text = gr.Textbox(label=i18n("compare.quality_text.label"), lines=3, visible=True,
                                      elem_id="compare-quality-text")
            with gr.Row():
                ignore_eos = gr.Checkbox(v.ignore_eos, label=i18n("compare.ignore_eos.label"),
                                         info=i18n("compare.ignore_eos.info"))
                keep_servers = gr.Checkbox(v.keep_servers, label=i18n("compare.keep_servers.label"))
            run = gr.Button(i18n("compare.run_button"), variant="primary", elem_id="compare-run")
            message = gr.Markdown(elem_id="compare-message")
        with gr.Column(scale=6):
            gr.Markdown(i18n("compare.history_heading"))
            history = gr.Dataframe(interactive=False, wrap=True, elem_id="compare-history")
            with gr.Row():
                selected = gr.Dropdown(label=i18n("compare.selected.label"), choices=[], scale=3,
                                       elem_id="compare-selected")
                cancel = gr.Button(i18n("compare.cancel_button"), variant="stop", scale=1, interactive=False,
                                   elem_id="compare-cancel")
            beside = gr.Dropdown(label=i18n("compare.beside.label"), info=i18n("compare.beside.info"), choices=[],
                                 multiselect=True, elem_id="compare-beside")
            cancel_message = gr.Markdown(elem_id="compare-cancel-message")
            progress = gr.HTML(elem_id="compare-progress")
            verdict = gr.Markdown(elem_id="compare-verdict")
            table = gr.Dataframe(interactive=False, wrap=True, elem_id="compare-table")
            throughput = gr.Plot(label=i18n("compare.chart.throughput"), elem_id="compare-throughput")
            tradeoff = gr.Plot(label=i18n("compare.chart.tradeoff"), elem_id="compare-tradeoff")
            answers_table = gr.Dataframe(interactive=False, wrap=True, label=i18n("compare.answers_heading"),
                                         elem_id="compare-answers")
            commands = gr.Code(language="shell", label=i18n("compare.commands.label"), interactive=False,
                               elem_id="compare-commands")
            with gr.Row():
                export = gr.Button(i18n("compare.export_button"), size="sm", elem_id="compare-export")
                csv_file = gr.File(label="CSV", interactive=False, height=60, elem_id="compare-csv")
                json_file = gr.File(label="JSON", interactive=False, height=60, elem_id="compare-json")
    form = CompareForm(configs=configs, workload=workload, concurrency=concurrency,
                       requests_per_level=requests_per_level, max_new_tokens=max_new_tokens, seed=seed,
                       quality=quality, quality_text=quality_text, answers=answers, baseline=baseline,
                       ignore_eos=ignore_eos, keep_servers=keep_servers)
    inputs = COMPARE_FORM.inputs(form)
    quiet: dict[str, Any] = {"show_progress": "hidden", "api_visibility": "private"}
    timer = gr.Timer(1.0, active=False)
    shown = [progress, verdict, table, throughput, tradeoff, answers_table, commands, cancel]
    touched = gr.Textbox(visible=False)

    grid_model.change(handlers.suggest_awq, grid_model, grid_awq, **quiet)
    add_grid.click(handlers.add_grid, [configs, grid_model, grid_awq, grid_backend, grid_fraction], [configs, message],
                   api_visibility="private")
    add_one.click(handlers.add_config, [configs, grid_model, grid_backend, one_kv, grid_fraction, one_label],
                  [configs, message], api_visibility="private")
    add_server.click(handlers.add_server, [configs, server], [configs, message], api_visibility="private")
    clear.click(handlers.clear, None, configs, api_visibility="private")
    configs.change(handlers.preview, configs, [preview, preview_message], **quiet)
    started = run.click(COMPARE_FORM.bind(handlers.submit_compare), inputs, [message, touched],
                        api_name="submit_compare", **forms.RAW_INPUTS)
    started.then(handlers.select, touched, [history, selected, beside, *shown], **quiet)
    cancel.click(handlers.cancel_compare, selected, cancel_message, api_name="cancel_compare")
    history.select(handlers.pick_from_table, history, selected, api_visibility="private")
    for picker in (selected, beside):
        picker.change(handlers.show, [selected, beside], shown, **quiet)
    timer.tick(handlers.refresh, [selected, beside], [history, selected, beside, *shown], concurrency_limit=None,
               **quiet)
    export.click(handlers.export, selected, [csv_file, json_file], api_visibility="private")
    demo.load(handlers.load_page, [grid_model, server, selected],
              [grid_model, server, history, selected, beside, *shown], **quiet)
    gr.api(handlers.compare_progress_api, api_name="compare_progress")
    gr.api(handlers.list_compares_api, api_name="list_compares")
    gr.api(handlers.compare_result_api, api_name="compare_result")
    return CompareTab(timer)
