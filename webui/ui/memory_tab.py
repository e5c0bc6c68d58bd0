"""The Memory tab: live GPU memory per device and per process with event markers, and the planner that
predicts it before a launch (and puts its prediction next to what a READY server really holds)."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import gradio as gr
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from webui.i18n.catalog import Catalog
from webui.services.memory import WINDOWS, MemoryService
from webui.services.models import ModelRoots
from webui.services.planner import GPU_SIZES_MIB, MIB, PRESETS, ModelShape, PlanInput, plan, sweep
from webui.services.serve import ServerManager
from webui.services.serve_spec import KV_POLICIES
from webui.services.server_states import ServerState
from webui.ui import forms
from webui.ui.common import as_int, locale_of, short_model

POLICY_NAMES = MappingProxyType({number: name for name, number in KV_POLICIES.items()})
COLORS = ("#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d")
DETECTED = "detected"
DEFAULT_GPU = str(next(iter(GPU_SIZES_MIB.values())))  # the 24 GB slice most users have
# Event kinds the chart's markers word from the catalog (memory.event.<kind>); others show as recorded.
EVENT_KINDS = ("start", "started", "queued", "ready", "reachable", "unreachable", "stopped", "detached", "attached",
               "failed", "lost", "reattached", "cancelling", "cancelled", "succeeded", "spec_changed",
               "memory_released", "memory_not_released", "slept", "woke")
OWNER_KEYS = MappingProxyType({"server": "memory.owner.server", "job": "memory.owner.job"})


def _clock(t: float) -> datetime:
    return datetime.fromtimestamp(t)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f}%"


class MemoryHandlers:
    """Event handlers of the Memory tab; they read the MemoryService snapshots and the pure planner."""

    def __init__(self, memory: MemoryService, servers: ServerManager, roots: ModelRoots, catalog: Catalog) -> None:
        self.memory = memory
        self.servers = servers
        self.roots = roots
        self.catalog = catalog

    # live view -------------------------------------------------------------------------------------
    def refresh(self, window: str, request: gr.Request) -> tuple[str, go.Figure | None, pd.DataFrame, pd.DataFrame]:
        """Status line, chart, device table and process table (the timer calls this only while visible)."""
        locale = locale_of(request)
        t = self.catalog.text
        # Empty tables keep their headings (a bare DataFrame shows Gradio's "1 2 3").
        device_columns = ["GPU", t("memory.col.name", locale), t("memory.col.memory", locale), "%",
                          t("memory.col.util", locale), t("memory.col.temp", locale), t("memory.col.power", locale)]
        process_columns = ["GPU", "PID", t("memory.col.process", locale), t("memory.col.used", locale),
                           t("memory.col.owner", locale)]
        snap = self.memory.snapshot()
        if not snap["devices"]:
            # NVML's own words are quoted as they came; when it gave none, the page says so in its language.
            raw = self.memory.reason  # NVML's or the sampler's own error, "" when there is none
            reason = f"`{raw}`" if raw else self.catalog.text("memory.msg.no_devices", locale)
            text = "⚠ " + self.catalog.text("memory.msg.no_gpu", locale, reason=reason)
            return text, None, pd.DataFrame(columns=device_columns), pd.DataFrame(columns=process_columns)
        status = self.catalog.text("memory.msg.sampling", locale, hz=f"{self.memory.sampler.hz:g}",
                                   time=_clock(snap["t"]).strftime("%H:%M:%S"))
        devices = pd.DataFrame([[
            d["gpu"], d["name"], f"{d['used_mib']:,.0f} / {d['total_mib']:,.0f} MiB",
            f"{d['used_mib'] / d['total_mib'] * 100:.0f}%" if d["total_mib"] else "",
            "" if d["utilization"] is None else f"{d['utilization']}%",
            "" if d["temperature"] is None else f"{d['temperature']} °C",
            "" if d["power_w"] is None else f"{d['power_w']:.0f} W",
        ] for d in snap["devices"]], columns=device_columns)
        processes = pd.DataFrame([[
            p["gpu"], p["pid"], p["name"], f"{p['used_mib']:,.0f} MiB", self.owner_text(p["owner"], locale),
        ] for p in snap["processes"]], columns=process_columns)
        return status, self.chart(window, locale), devices, processes

    def owner_text(self, owner: str, locale: str) -> str:
        """MemoryService names owners "server <id>" / "job <id>"; the page says it in its own language."""
        kind, _, ident = (owner or "").partition(" ")
        key = OWNER_KEYS.get(kind)
        return self.catalog.text(key, locale, id=ident) if key and ident else (owner or "—")

    def event_text(self, event: dict[str, Any], locale: str) -> str:
        """A chart marker's hover: who, what happened (worded when the kind is known), and the recorded detail."""
        kind, detail = str(event["kind"]), str(event["detail"] or "")
        if kind in EVENT_KINDS:
            what = self.catalog.text(f"memory.event.{kind}", locale)
        elif kind.startswith("phase "):
            phase = kind.removeprefix("phase ")
            what = self.catalog.text("memory.event.phase", locale,
                                     phase=self.catalog.text(f"quantize.phase.{phase}", locale))
        else:
            what = kind
        if detail in self.catalog.keys(locale):  # a hint recorded as its catalog key
            detail = self.catalog.text(detail, locale)
        return " · ".join(part for part in (str(event["source"]), what, detail) if part)

    def chart(self, window: str, locale: str) -> go.Figure:
        """Used memory per GPU over the window, total as a dashed line, events as labelled markers."""
        rows = self.memory.history(window)
        fig = go.Figure()
        frame = pd.DataFrame(rows)
        for i, (gpu, part) in enumerate(frame.groupby("gpu") if not frame.empty else []):
            x = [_clock(t) for t in part["t"]]
            color = COLORS[i % len(COLORS)]
            fig.add_trace(go.Scatter(x=x, y=part["used_mib"], mode="lines",
                                     name=self.catalog.text("memory.chart.used_trace", locale, gpu=gpu),
                                     line={"color": color, "width": 2}))
            fig.add_trace(go.Scatter(x=x, y=part["total_mib"], mode="lines",
                                     name=self.catalog.text("memory.chart.total_trace", locale, gpu=gpu),
                                     line={"color": color, "width": 1, "dash": "dot"}, showlegend=False))
        top = float(frame["total_mib"].max()) if not frame.empty else 1.0
        for event in self.memory.events(window):
            at = _clock(event["t"])
            fig.add_vline(x=at, line={"color": "#9ca3af", "width": 1, "dash": "dash"})
            fig.add_trace(go.Scatter(x=[at], y=[top], mode="markers", marker={"symbol": "triangle-down", "size": 9,
                                     "color": "#6b7280"}, showlegend=False,
                                     hovertext=self.event_text(event, locale),
                                     hoverinfo="text", name="event"))
        fig.update_layout(height=340, margin={"l": 50, "r": 10, "t": 30, "b": 40},
                          yaxis_title=self.catalog.text("memory.chart.y", locale), legend={"orientation": "h"},
                          uirevision=window)
        return fig

    def export_history(self, window: str) -> str | None:
        text = self.memory.history_csv(window)
        if text.count("\n") <= 1:
            return None
        path = Path(tempfile.mkdtemp(prefix="gpu-history-")) / f"gpu-memory-{window}.csv"
        path.write_text(text, encoding="utf-8")
        return str(path)

    # planner ---------------------------------------------------------------------------------------
    def model_sources(self, current: str | None) -> gr.Dropdown:
        """The presets and the model folders under the roots, keeping the user's pick."""
        folders = [str(p) for p in self.roots.discover()]
        return gr.Dropdown(choices=[*PRESETS, *folders], value=current or next(iter(PRESETS)))

    def gpu_dropdown(self, current: str | None) -> gr.Dropdown:
        """The detected GPUs first (the first picked unless the user chose a size or another detected GPU that is
        still there), then the sizes people plan for."""
        choices = self.gpu_choices()
        values = [v for _, v in choices]
        detected = [v for v in values if v.startswith(DETECTED)]
        value = current if current in values and current != DEFAULT_GPU else (detected[0] if detected else current)
        return gr.Dropdown(choices=choices, value=value)

    def gpu_choices(self) -> list[tuple[str, str]]:
        """Every detected GPU by its NVML number (two alike stay two choices), then the usual sizes."""
        snap = self.memory.snapshot()
        detected = [(f"GPU {d['gpu']}: {d['name']} ({d['total_mib']:,.0f} MiB)",
                     f"{DETECTED}:{d['gpu']}:{d['total_mib']:.0f}") for d in snap["devices"]]
        return [*detected, *[(name, str(mib)) for name, mib in GPU_SIZES_MIB.items()]]

    def shape_of(self, source: str, locale: str) -> tuple[ModelShape | None, str]:
        """A preset's shape, or one read from a model folder's config.json (with the reason it cannot be, in
        `locale`)."""
        if source in PRESETS:
            return ModelShape.from_config(PRESETS[source]), ""
        resolved = self.roots.resolve(source or "")
        if not isinstance(resolved, Path):
            return None, self.catalog.text(resolved.key, locale, **resolved.params)
        try:
            return ModelShape.from_config(json.loads((resolved / "config.json").read_text(encoding="utf-8"))), ""
        except (OSError, ValueError, KeyError) as exc:  # the parser's own words, quoted
            return None, self.catalog.text("errors.model_bad_config", locale, path=str(resolved),
                                           error=f"`{type(exc).__name__}: {exc}`")

    def plan_input(self, source: str, weights: str, group_size: float | None, gpu: str, fraction: float,
                   kv_policy: str, session_len: float | None, batch: float | None, tp: float | None,
                   locale: str) -> tuple[PlanInput | None, str]:
        """The planner's input from the form, or why there is none (in `locale`)."""
        shape, problem = self.shape_of(source, locale)
        if shape is None:
            return None, problem
        mib = float(gpu.rsplit(":", 1)[1]) if gpu.startswith(DETECTED) else float(gpu or 0)  # detected:GPU:MiB
        if mib <= 0:
            return None, self.catalog.text("memory.msg.no_gpu_size", locale)
        awq = weights == "awq" or bool(shape.awq_group_size)
        return PlanInput(shape, int(mib * MIB), cache_max_entry_count=float(fraction),
                         quant_policy=KV_POLICIES.get(kv_policy, 0), awq=awq,
                         awq_group_size=as_int(group_size, 128) or 128, session_len=as_int(session_len, 4096) or 4096,
                         max_batch_size=as_int(batch, 128) or 128, tp=as_int(tp, 1) or 1), ""

    def show_plan(self, source: str, weights: str, group_size: float | None, gpu: str, fraction: float,
                    kv_policy: str, session_len: float | None, batch: float | None, tp: float | None,
                    request: gr.Request) -> tuple[str, go.Figure | None]:
        """The prediction as a short table, and the chart of memory and tokens against the fraction."""
        locale = locale_of(request)
        spec, problem = self.plan_input(source, weights, group_size, gpu, fraction, kv_policy, session_len, batch, tp,
                                        locale)
        if spec is None:
            return "⚠ " + self.catalog.text("memory.msg.cannot_plan", locale, reason=problem), None
        p = plan(spec)
        t = self.catalog.text
        lines = [
            f"| {t('memory.plan.item', locale)} | {t('memory.plan.value', locale)} |", "|---|---|",
            f"| {t('memory.plan.weights', locale)} | {p.weights_bytes / MIB:,.0f} MiB |",
            f"| {t('memory.plan.context', locale)} | {p.context_bytes / MIB:,.0f} MiB |",
            f"| {t('memory.plan.free', locale)} | {p.free_for_cache_bytes / MIB:,.0f} MiB |",
            f"| {t('memory.plan.pool', locale)} | {p.kv_pool_bytes / MIB:,.0f} MiB ({p.blocks:,} × 64) |",
            f"| {t('memory.plan.per_token', locale)} | {p.kv_bytes_per_token:,.0f} B |",
            f"| {t('memory.plan.tokens', locale)} | {p.tokens:,} |",
            f"| {t('memory.plan.sessions', locale)} | {p.sessions:,} × {spec.session_len:,} |",
            f"| {t('memory.plan.total', locale)} | **{p.total_bytes / MIB:,.0f} MiB** "
            f"/ {spec.gpu_total_bytes / MIB:,.0f} |",
        ]
        for problem in p.problems:
            lines.append(f"\n⚠ {t(f'memory.problem.{problem}', locale)}")
        return "\n".join(lines), self.sweep_chart(spec, locale)

    def sweep_chart(self, spec: PlanInput, locale: str) -> go.Figure:
        rows = pd.DataFrame(sweep(spec))
        fig = make_subplots(rows=1, cols=2, subplot_titles=(self.catalog.text("memory.chart.total", locale),
                                                            self.catalog.text("memory.chart.tokens", locale)))
        for i, (policy, part) in enumerate(rows.groupby("policy", sort=False)):
            color = COLORS[i]
            name = POLICY_NAMES.get(int(policy), str(policy))
            fig.add_trace(go.Scatter(x=part["fraction"], y=part["total_mib"], name=name, line={"color": color},
                                     legendgroup=name), row=1, col=1)
            fig.add_trace(go.Scatter(x=part["fraction"], y=part["tokens"], name=name, line={"color": color},
                                     legendgroup=name, showlegend=False), row=1, col=2)
        fig.add_vline(x=spec.cache_max_entry_count, line={"dash": "dash", "color": "#9ca3af"})
        fig.update_xaxes(title_text="--cache-max-entry-count")
        fig.update_layout(height=340, margin={"l": 50, "r": 10, "t": 60, "b": 40},
                          legend={"orientation": "h", "y": 1.18, "x": 0})
        return fig

    # predicted against measured ----------------------------------------------------------------------
    def ready_servers(self, current: str | None) -> gr.Dropdown:
        ready = [(f"{s.id} · {short_model(s.model_id)} · {s.kv_policy} · {s.cache_max_entry_count}", s.id)
                 for s in self.servers.snapshots() if s.owned and s.state == ServerState.READY]
        ids = [i for _, i in ready]
        return gr.Dropdown(choices=ready, value=current if current in ids else (ids[0] if ids else None))

    def compare_server(self, server_id: str | None, request: gr.Request) -> str:
        locale = locale_of(request)
        if not server_id:
            return self.catalog.text("memory.msg.no_ready_server", locale)
        result = self.memory.compare_server(server_id)
        if "error" in result:
            detail = result.get("detail", "")  # a parser's or NVML's own words: quoted
            return "⚠ " + self.catalog.text(f"memory.compare_error.{result['error']}", locale,
                                            detail=f"`{detail}`" if detail else "")
        t = self.catalog.text
        measured, error = result["measured"], result["error_percent"]
        rows = result.get("per_gpu") or []
        lines = [f"| | {t('memory.compare.predicted', locale)} | {t('memory.compare.measured', locale)} | "
                 f"{t('memory.compare.error', locale)} |", "|---|---|---|---|"]
        for row in rows:
            if len(rows) > 1:  # one group per GPU: the planner predicts one GPU, each is measured alone
                lines.append(f"| **GPU {row['gpu']}** · {row['name']} | | | |")
            lines += [f"| {t('memory.compare.device', locale)} | {row['predicted_total_bytes'] / MIB:,.0f} MiB | "
                      f"{row['device_used_bytes'] / MIB:,.0f} MiB | {_pct(row['error_percent']['total'])} |",
                      f"| {t('memory.compare.server', locale)} | {row['predicted_server_bytes'] / MIB:,.0f} MiB | "
                      f"{row['server_tree_bytes'] / MIB:,.0f} MiB | {_pct(row['error_percent']['server'])} |"]
        predicted = result["predicted"]
        lines.append(f"| {t('memory.compare.blocks', locale)} | {predicted['blocks']:,} | "
                     f"{measured['engine_blocks'] or '—'} | {_pct(error['blocks'])} |")
        if measured["engine_cache_budget_bytes"]:
            lines.append(f"| {t('memory.compare.budget', locale)} | {predicted['kv_pool_bytes'] / MIB:,.0f} MiB | "
                         f"{measured['engine_cache_budget_bytes'] / MIB:,.0f} MiB | {_pct(error['cache_budget'])} |")
        return "\n".join(lines)

    # scripting -------------------------------------------------------------------------------------
    def gpu_snapshot_api(self) -> dict[str, Any]:
        """GPUs and compute processes now (owners named), or {"available": false, "reason": …}."""
        return self.memory.snapshot()

    def gpu_history_api(self, window: str = "5m") -> list[dict[str, Any]]:
        """One row per GPU per sample over 5m, 1h or 24h."""
        return self.memory.history(window if window in WINDOWS else "5m")

    def plan_memory_api(self, model: str = "InternLM2.5 7B", weights: str = "fp16", group_size: int = 128,
                        gpu_memory_mib: float = 24_576, cache_max_entry_count: float = 0.8, kv_policy: str = "none",
                        session_len: int = 4096, max_batch_size: int = 128, tp: int = 1) -> dict[str, Any]:
        """The planner for scripts: `model` is a preset name or a model folder under the roots."""
        numbers, problems = forms.convert_numbers({
            "group_size": (group_size, 128), "gpu_memory_mib": (gpu_memory_mib, 24_576.0),
            "cache_max_entry_count": (cache_max_entry_count, 0.8), "session_len": (session_len, 4096),
            "max_batch_size": (max_batch_size, 128), "tp": (tp, 1)})
        if problems:
            return {"error": "; ".join(f"{e.field}: {self.catalog.text(e.key, 'en', **e.params)}" for e in problems)}
        spec, problem = self.plan_input(model, weights, numbers["group_size"], str(numbers["gpu_memory_mib"]),
                                        numbers["cache_max_entry_count"], kv_policy, numbers["session_len"],
                                        numbers["max_batch_size"], numbers["tp"], "en")
        if spec is None:
            return {"error": problem}
        return plan(spec).as_dict()


def build_memory_tab(handlers: MemoryHandlers, i18n: gr.I18n) -> tuple[gr.Timer, list[Any]]:
    """Lay out the tab and wire it; returns its timer and what a page load must fill."""
    status = gr.Markdown(elem_id="memory-status")
    with gr.Row():
        window = gr.Radio(list(WINDOWS), value="5m", label=i18n("memory.window.label"), scale=3,
                          elem_id="memory-window")
        export = gr.Button(i18n("memory.export_button"), scale=1, size="sm")
        export_file = gr.File(label=i18n("memory.export_file.label"), interactive=False, height=60, scale=2)
    chart = gr.Plot(label=i18n("memory.chart.label"), elem_id="memory-chart")
    with gr.Row():
        devices = gr.Dataframe(label=i18n("memory.devices.label"), interactive=False, elem_id="memory-devices")
        processes = gr.Dataframe(label=i18n("memory.processes.label"), interactive=False, elem_id="memory-processes")
    with gr.Accordion(i18n("memory.planner.heading"), open=True):
        gr.Markdown(i18n("memory.planner.explain"))
        with gr.Row():
            source = gr.Dropdown(choices=list(PRESETS), value=next(iter(PRESETS)), allow_custom_value=True,
                                 label=i18n("memory.source.label"), info=i18n("memory.source.info"), scale=3,
                                 elem_id="memory-source")
            weights = gr.Radio([("fp16 / bf16", "fp16"), (i18n("memory.weights.awq"), "awq")], value="fp16",
                               label=i18n("memory.weights.label"), scale=2)
            group_size = gr.Number(value=128, precision=0, label=i18n("memory.group_size.label"), scale=1)
            gpu = gr.Dropdown(choices=handlers.gpu_choices(), value=DEFAULT_GPU,
                              label=i18n("memory.gpu.label"), scale=2, elem_id="memory-gpu")
        with gr.Row():
            fraction = gr.Slider(0.05, 0.95, value=0.8, step=0.05, label=i18n("memory.fraction.label"),
                                 elem_id="memory-fraction")
            kv_policy = gr.Dropdown(list(KV_POLICIES), value="none", label=i18n("memory.kv_policy.label"),
                                    elem_id="memory-planner-kv")
            session_len = gr.Number(value=4096, precision=0, label=i18n("memory.session_len.label"))
            batch = gr.Number(value=128, precision=0, label=i18n("memory.batch.label"))
            tp = gr.Number(value=1, precision=0, minimum=1, label=i18n("memory.tp.label"))
        prediction = gr.Markdown(elem_id="memory-prediction")
        sweep_plot = gr.Plot(label=i18n("memory.sweep.label"), elem_id="memory-sweep")
    with gr.Accordion(i18n("memory.compare.heading"), open=True):
        with gr.Row():
            server = gr.Dropdown(label=i18n("memory.server.label"), choices=[], scale=3, elem_id="memory-server")
            compare = gr.Button(i18n("memory.compare_button"), scale=1)
        comparison = gr.Markdown(elem_id="memory-comparison")

    timer = gr.Timer(1.0, active=False)
    quiet: dict[str, Any] = {"show_progress": "hidden", "api_visibility": "private"}
    live = [status, chart, devices, processes]
    timer.tick(handlers.refresh, window, live, concurrency_limit=None, **quiet)
    window.change(handlers.refresh, window, live, **quiet)
    export.click(handlers.export_history, window, export_file, **quiet)
    plan_inputs: list[forms.FormInput] = [source, weights, group_size, gpu, fraction, kv_policy, session_len, batch,
                                          tp]
    gr.on([c.change for c in plan_inputs], handlers.show_plan, plan_inputs, [prediction, sweep_plot],
          trigger_mode="always_last", **quiet)
    compare.click(handlers.compare_server, server, comparison, **quiet)
    gr.api(handlers.gpu_snapshot_api, api_name="gpu_snapshot")
    gr.api(handlers.gpu_history_api, api_name="gpu_history")
    gr.api(handlers.plan_memory_api, api_name="plan_memory")
    on_open = [(handlers.refresh, window, live), (handlers.model_sources, source, source),
               (handlers.gpu_dropdown, gpu, gpu),
               (handlers.ready_servers, server, server), (handlers.show_plan, plan_inputs, [prediction, sweep_plot])]
    return timer, on_open
