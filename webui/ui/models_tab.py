"""The Models tab: a hub repo's files before anything is fetched, downloads with live progress, the hub token,
and "Quantize this" / "Serve this" for a finished download."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from webui.i18n.catalog import Catalog
from webui.services.downloads import DownloadManager, DownloadPreview, DownloadRequest, DownloadSnapshot
from webui.services.hub import SUGGESTED_REPOS, looks_like_repo_id
from webui.services.job_states import LIVE_JOB_STATES, JobState
from webui.services.models import read_model_info
from webui.services.serve_spec import FieldError
from webui.ui import forms
from webui.ui.common import duration, format_errors, locale_of, picked_row, size

LOG_LINES = 30
MAX_FILES_SHOWN = 40  # per-file bars of a detail; a repo with hundreds of files shows the largest


@dataclass(frozen=True)
class ModelsValues:
    """The download form's values; the field names are download_model's API parameters."""

    repo_id: str = forms.text("", max_chars=200)
    revision: str = forms.text("main", max_chars=128)
    source: str = forms.text("huggingface", max_chars=32)
    destination: str = forms.text("models", max_chars=32)

    def to_request(self) -> DownloadRequest:
        return DownloadRequest(self.repo_id.strip(), self.revision.strip() or "main", self.source, self.destination)


MODELS_FORM = forms.Form(ModelsValues)


@dataclass(frozen=True)
class ModelsForm:
    repo_id: gr.Dropdown
    revision: gr.Textbox
    source: gr.Radio
    destination: gr.Radio


def file_size(n: int) -> str:
    """A file's size: small ones (configs, tokenizers) in KB rather than "0.0 MB"."""
    return f"{n / 1024:.1f} KB" if n < 1 << 20 else size(n)


def rate(bps: float) -> str:
    return f"{bps / (1 << 20):.1f} MB/s" if bps else ""


def bar(fraction: float) -> str:
    pct = max(0, min(100, int(fraction * 100)))
    return f"<progress value='{pct}' max='100'></progress> {pct}%"


class ModelsHandlers:
    """Event handlers of the Models tab; they command the DownloadManager and read its snapshots."""

    def __init__(self, downloads: DownloadManager, catalog: Catalog) -> None:
        self.downloads = downloads
        self.catalog = catalog

    def _errors(self, errors: list[FieldError] | tuple[FieldError, ...], locale: str) -> str:
        return format_errors(self.catalog, errors, locale, "models")

    # preview ---------------------------------------------------------------------------------------
    def list_files(self, form: forms.Parsed[ModelsValues], request: gr.Request | None) -> tuple[str, pd.DataFrame]:
        """What a download would fetch: the files, the total, the room on disk, gating and the GPU's verdict."""
        locale = locale_of(request)
        t = self.catalog.text
        empty = pd.DataFrame(columns=[t(f"models.col.{c}", locale) for c in ("file", "size", "hash")])
        if form.errors:
            return self._errors(form.errors, locale), empty
        preview = self.downloads.preview(form.values.to_request())
        if isinstance(preview, list):
            return self._errors(preview, locale), empty
        return self._preview_markdown(preview, locale), self._files_table(preview, locale)

    def _files_table(self, preview: DownloadPreview, locale: str) -> pd.DataFrame:
        t = self.catalog.text
        columns = [t(f"models.col.{c}", locale) for c in ("file", "size", "hash")]
        files = preview.listing.files if preview.listing else ()
        return pd.DataFrame([[f.path, file_size(f.size), (f"sha256 {f.sha256[:12]}…" if f.sha256 else
                                                     f"git {f.blob_id[:12]}…")] for f in files], columns=columns)

    def _preview_markdown(self, p: DownloadPreview, locale: str) -> str:
        t = self.catalog.text
        lines: list[str] = []
        if p.problem is not None:
            lines.append("⚠ " + t(p.problem.key, locale, **p.problem.params))
            if p.local_path:
                lines.append(t("models.msg.local_copy", locale, path=p.local_path))
            return "\n\n".join(lines)
        listing = p.listing
        assert listing is not None
        lines.append(f"**{html.escape(listing.repo_id)}** @ `{listing.sha[:12]}` · "
                     + t("models.preview.files", locale, count=len(listing.files), total=size(listing.total_bytes)))
        if p.local_path:
            lines.append("✓ " + t("models.msg.local_copy", locale, path=p.local_path))
        free = size(p.free_bytes) if p.free_bytes is not None else "?"
        disk = t("models.preview.disk", locale, path=p.output_dir, free=free, need=size(p.needed_bytes))
        lines.append(("✓ " if p.fits_on_disk else "⚠ ") + disk)
        if p.present_bytes:
            lines.append(t("models.preview.partial", locale, have=size(p.present_bytes)))
        if listing.gated:
            lines.append(("⚠ " if p.needs_token else "✓ ") + t(
                "models.preview.gated_needs_token" if p.needs_token else "models.preview.gated_token", locale))
        lines.append(self._verdict(p, locale))
        return "\n\n".join(lines)

    def _verdict(self, p: DownloadPreview, locale: str) -> str:
        t = self.catalog.text
        if p.config_problem is not None:
            return "⚠ " + t(p.config_problem.key, locale, **p.config_problem.params)
        v = p.gpu_verdict
        if not v or "error" in v:
            return t("models.preview.no_plan", locale)
        weights = t("models.preview.weights", locale, fp16=size(v["weights_bytes"]), awq=size(v["awq_weights_bytes"]))
        if not v.get("gpu"):
            return weights + " " + t("models.preview.no_gpu", locale)
        parts = []
        for name in ("fp16", "awq"):
            plan = v.get(name) or {}
            key = "models.preview.fits" if plan.get("fits") else "models.preview.no_fit"
            parts.append(t(key, locale, weights=t(f"models.weights.{name}", locale),
                           tokens=f"{plan.get('tokens', 0):,}", sessions=plan.get("sessions", 0)))
        return weights + "\n\n" + t("models.preview.on_gpu", locale, gpu=v["gpu"],
                                    total=size(v["gpu_total_bytes"])) + "\n" + "\n".join(f"- {x}" for x in parts)

    # actions ---------------------------------------------------------------------------------------
    def download_model(self, form: forms.Parsed[ModelsValues], request: gr.Request | None) -> tuple[str, str]:
        """Start (or queue) a download; returns a message and the download id ("" if refused)."""
        locale = locale_of(request)
        if form.errors:
            return self._errors(form.errors, locale), ""
        outcome = self.downloads.submit(form.values.to_request())
        if outcome.download is None:
            return self._errors(outcome.errors, locale), ""
        d = outcome.download
        return self.catalog.text("models.msg.started", locale, repo=d.repo_id, id=d.id, path=d.output_dir), d.id

    def cancel_download(self, download_id: str, keep_partial: bool = True, request: gr.Request | None = None) -> str:
        """Cancel a download; its fetched files stay for a resume unless keep_partial is false."""
        locale = locale_of(request)
        if not download_id:
            return self.catalog.text("models.msg.no_selection", locale)
        try:
            d = self.downloads.cancel(download_id, keep_partial=bool(keep_partial))
        except KeyError:
            return self.catalog.text("models.msg.unknown", locale, id=download_id)
        key = "models.msg.cancelling" if d.state == JobState.CANCELLING else "models.msg.cancelled"
        return self.catalog.text(key, locale, id=d.id)

    def resume_download(self, download_id: str, request: gr.Request | None = None) -> tuple[str, str]:
        """Start a stopped download again from the files it kept; returns a message and the new id."""
        locale = locale_of(request)
        if not download_id:
            return self.catalog.text("models.msg.no_selection", locale), ""
        try:
            outcome = self.downloads.resume(download_id)
        except KeyError:
            return self.catalog.text("models.msg.unknown", locale, id=download_id), ""
        if outcome.download is None:
            return self._errors(outcome.errors, locale), ""
        d = outcome.download
        return self.catalog.text("models.msg.started", locale, repo=d.repo_id, id=d.id, path=d.output_dir), d.id

    def save_token(self, token: str, request: gr.Request) -> tuple[str, str]:
        """Keep the hub token (owner-only file); the box is emptied and only a masked hint is shown."""
        locale = locale_of(request)
        problem = self.downloads.save_token(token or "")
        if problem is not None:
            return "", self._errors([problem], locale)
        return "", self.token_status(request)

    def forget_token(self, request: gr.Request) -> str:
        self.downloads.save_token("")
        return self.token_status(request)

    def token_status(self, request: gr.Request | None) -> str:
        hint = self.downloads.token_hint()
        locale = locale_of(request)
        return (self.catalog.text("models.token.saved", locale, hint=hint) if hint
                else self.catalog.text("models.token.none", locale))

    def _finished(self, download_id: str | None) -> DownloadSnapshot | None:
        d = self.downloads.get(download_id) if download_id else None
        return d if d is not None and d.state == JobState.SUCCEEDED else None

    def quantize_this(self, download_id: str | None, request: gr.Request) -> tuple[gr.Dropdown, gr.Tabs, str]:
        """The finished download's folder in the Quantize tab's model picker, and that tab shown."""
        locale = locale_of(request)
        d = self._finished(download_id)
        if d is None:
            return gr.Dropdown(), gr.Tabs(), self.catalog.text("models.msg.needs_finished", locale)
        return (gr.Dropdown(value=d.output_dir), gr.Tabs(selected="quantize"),
                self.catalog.text("models.msg.using", locale, path=d.output_dir))

    def serve_this(self, download_id: str | None, request: gr.Request) -> tuple[gr.Dropdown, Any, gr.Tabs, str]:
        """The finished download's folder (and its weight format) in the Serve form, and that tab shown."""
        locale = locale_of(request)
        d = self._finished(download_id)
        if d is None:
            return gr.Dropdown(), gr.skip(), gr.Tabs(), self.catalog.text("models.msg.needs_finished", locale)
        info = read_model_info(Path(d.output_dir))
        quant = getattr(info, "quant_method", "")
        model_format = quant if quant in ("awq", "gptq") else "hf"
        return (gr.Dropdown(value=d.output_dir), model_format, gr.Tabs(selected="serve"),
                self.catalog.text("models.msg.using", locale, path=d.output_dir))

    def offer_download(self, model_path: str | None) -> gr.Button:
        """Another tab's picker holds a repo id that is not on disk: show the button that opens it here."""
        text = (model_path or "").strip()
        missing = looks_like_repo_id(text) and not os.path.exists(text) and self.downloads.local_path(text) is None
        return gr.Button(visible=missing)

    def open_in_models(self, model_path: str | None) -> tuple[gr.Dropdown, gr.Tabs]:
        return gr.Dropdown(value=(model_path or "").strip()), gr.Tabs(selected="models")

    # views -----------------------------------------------------------------------------------------
    def list_downloads(self, request: gr.Request) -> pd.DataFrame:
        locale = locale_of(request)
        t = self.catalog.text
        columns = [t("quantize.col.id", locale),  # the same "ID" as every table
                   *(t(f"models.col.{c}", locale) for c in ("state", "repo", "progress", "size", "speed", "eta"))]
        rows = [[d.id, t(f"quantize.state.{d.state}", locale), d.repo_id, f"{d.fraction * 100:.0f}%",
                 size(d.total_bytes), rate(d.rate_bps), duration(d.eta_seconds)]
                for d in sorted(self.downloads.snapshots(), key=lambda s: -s.created_at)]
        return pd.DataFrame(rows, columns=columns)

    def detail(self, download_id: str | None, request: gr.Request) -> tuple[str, str]:
        locale = locale_of(request)
        d = self.downloads.get(download_id) if download_id else None
        if d is None:
            return self.catalog.text("models.msg.no_selection", locale), ""
        return self._detail_markdown(d, locale), "\n".join(self.downloads.log(d.id, LOG_LINES))

    def _detail_markdown(self, d: DownloadSnapshot, locale: str) -> str:
        t = self.catalog.text
        state = t(f"quantize.state.{d.state}", locale)
        lines = [f"### <span class='state state-{d.state.lower()}'>{state}</span> `{d.id}` · "
                 f"{html.escape(d.repo_id)} @ `{d.commit[:12]}`"]
        lines.append(f"**{t('models.detail.total', locale)}** {bar(d.fraction)} {size(d.done_bytes)} / "
                     f"{size(d.total_bytes)}")
        timing = [x for x in (rate(d.rate_bps), (t("quantize.detail.eta", locale) + " " + duration(d.eta_seconds))
                              if d.eta_seconds is not None else "") if x]
        if timing:
            lines.append(" · ".join(timing))
        lines.append(f"- {t('models.detail.where', locale)}: `{d.output_dir}`")
        lines.append(f"- {t('models.detail.source', locale)}: `{d.endpoint}` · {t('models.detail.commit', locale)} "
                     f"`{d.commit}`")
        if d.state in (JobState.FAILED, JobState.LOST, JobState.CANCELLED) or d.error:
            if d.error_key:
                lines.append("\n⚠ " + t(d.error_key, locale, **d.error_params))
            elif d.error:
                lines.append(f"\n> **{t('quantize.detail.error', locale)}**\n\n```text\n{d.error[-600:]}\n```")
            if d.state != JobState.SUCCEEDED:
                lines.append(t("models.detail.resume_hint" if d.keep_partial else "models.detail.removed", locale))
        if d.state in LIVE_JOB_STATES or d.state == JobState.SUCCEEDED:
            shown = sorted(d.files, key=lambda f: -f.size)[:MAX_FILES_SHOWN]
            rows = [f"<tr><td><code>{html.escape(f.path)}</code></td><td>{bar(f.done / f.size if f.size else 1)}</td>"
                    f"<td>{file_size(f.size)}</td><td>{'✓' if f.verified else ''}</td></tr>" for f in shown]
            lines.append(f"\n<table class='download-files'>{''.join(rows)}</table>")
        return "\n".join(lines)

    def controls(self, download_id: str | None) -> tuple[gr.Button, gr.Button, gr.Button, gr.Button]:
        """Cancel while it waits or runs; Resume once stopped; Quantize/Serve this once finished."""
        d = self.downloads.get(download_id) if download_id else None
        state = d.state if d else None
        stopped = state in (JobState.FAILED, JobState.LOST, JobState.CANCELLED)
        done = state == JobState.SUCCEEDED
        return (gr.Button(interactive=state in (JobState.QUEUED, JobState.RUNNING)), gr.Button(interactive=stopped),
                gr.Button(interactive=done), gr.Button(interactive=done))

    def refresh(self, download_id: str | None, request: gr.Request, tick: bool = True) -> tuple[Any, ...]:
        """Timer tick: table, choices, detail, log and the buttons that fit the selected download."""
        return (self.list_downloads(request), self._choices(download_id, locale_of(request), keep=tick),
                *self.detail(download_id, request), *self.controls(download_id))

    def show_selected(self, download_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        return (*self.detail(download_id, request), *self.controls(download_id))

    def select(self, download_id: str | None, current: str | None, request: gr.Request) -> gr.Dropdown:
        return self._choices(download_id or current, locale_of(request))

    def pick_from_table(self, table: pd.DataFrame, evt: gr.SelectData) -> str | None:
        return picked_row(table, evt, column=0)

    def load_page(self, download_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        snaps = sorted(self.downloads.snapshots(), key=lambda s: -s.created_at)
        running = [d for d in snaps if d.state in LIVE_JOB_STATES]
        selected = download_id or (running[0].id if running else (snaps[0].id if snaps else None))
        return (self.token_status(request), *self.refresh(selected, request, tick=False))  # sets the selection

    def _choices(self, selected: str | None, locale: str, keep: bool = False) -> gr.Dropdown:
        """The downloads as choices; with `keep` (a timer tick) a valid selection is not sent back, so a tick
        that read it before the user picked another cannot undo the pick."""
        snaps = sorted(self.downloads.snapshots(), key=lambda s: -s.created_at)
        ids = {d.id for d in snaps}
        choices = [(f"{d.id} · {self.catalog.text(f'quantize.state.{d.state}', locale)} · {d.repo_id}", d.id)
                   for d in snaps]
        if keep and selected in ids:
            return gr.Dropdown(choices=choices)
        return gr.Dropdown(choices=choices, value=selected if selected in ids else (snaps[0].id if snaps else None))

    # scripting -------------------------------------------------------------------------------------
    def model_files_api(self, repo_id: str, revision: str = "main", source: str = "huggingface",
                        destination: str = "models") -> dict:
        """A repo's files (path, size, hashes), its commit, total, free disk, gating and the GPU verdict, or
        `errors` (field and message) when it cannot be listed. Nothing but config.json is fetched."""
        parsed = MODELS_FORM.parse({"repo_id": repo_id, "revision": revision, "source": source,
                                    "destination": destination})
        preview = list(parsed.errors) if parsed.errors else self.downloads.preview(parsed.values.to_request())
        if isinstance(preview, list):
            return {"errors": [{"field": e.field, "message": self.catalog.text(e.key, "en", **e.params)}
                               for e in preview]}
        listing = preview.listing
        out: dict[str, Any] = {
            "repo_id": preview.request.repo_id, "revision": preview.request.revision,
            "output_dir": preview.output_dir, "free_bytes": preview.free_bytes, "local_path": preview.local_path,
            "fits_on_disk": preview.fits_on_disk, "needs_token": preview.needs_token,
            "gpu_verdict": preview.gpu_verdict,
        }
        if preview.problem is not None:
            out["problem"] = self.catalog.text(preview.problem.key, "en", **preview.problem.params)
        if listing is not None:
            out.update(commit=listing.sha, gated=listing.gated, total_bytes=listing.total_bytes,
                       endpoint=listing.endpoint,  # "file", not "path": Gradio's client fetches any {"path": …}
                       files=[{"file": f.path, "size": f.size, "blob_id": f.blob_id, "sha256": f.sha256}
                              for f in listing.files])
        return out

    def download_progress_api(self, download_id: str) -> dict:
        """One download: state, bytes done/total, bytes/s, ETA, per-file progress, commit, folder, error."""
        d = self.downloads.get(download_id)
        return d.as_dict() if d else {}

    def list_downloads_api(self) -> list[dict]:
        """Every download as a JSON object (as download_progress gives one)."""
        return [d.as_dict() for d in self.downloads.snapshots()]


@dataclass(frozen=True)
class ModelsTab:
    """What the app wires across tabs: the two "use it" buttons, the selected download, the message, the timer,
    and the form with its preview (another tab's picker can open a repo id here)."""

    quantize_this: gr.Button
    serve_this: gr.Button
    selected: gr.Dropdown
    message: gr.Markdown
    timer: gr.Timer
    form: ModelsForm
    preview: gr.Markdown
    files: gr.Dataframe


def build_models_tab(demo: gr.Blocks, handlers: ModelsHandlers, i18n: gr.I18n) -> ModelsTab:
    """Lay out the Models tab and wire its events."""
    defaults = ModelsValues()
    sources = handlers.downloads.sources()
    with gr.Row():
        with gr.Column(scale=5):
            gr.Markdown(i18n("models.form_heading"))
            repo_id = gr.Dropdown(list(SUGGESTED_REPOS), value=None, allow_custom_value=True, filterable=True,
                                  label=i18n("models.repo_id.label"), info=i18n("models.repo_id.info"),
                                  elem_id="models-repo")
            with gr.Row():
                revision = gr.Textbox(defaults.revision, label=i18n("models.revision.label"),
                                      info=i18n("models.revision.info"), elem_id="models-revision")
                source = gr.Radio([(i18n(f"models.source.{s}"), s) for s in sources], value=defaults.source,
                                  label=i18n("models.source.label"), info=i18n("models.source.info"),
                                  elem_id="models-source")
            destination = gr.Radio([(i18n(f"models.destination.{d}"), d) for d in ("models", "cache")],
                                   value=defaults.destination, label=i18n("models.destination.label"),
                                   info=i18n("models.destination.info"), elem_id="models-destination")
            with gr.Row():
                list_button = gr.Button(i18n("models.list_button"), elem_id="models-list")
                download = gr.Button(i18n("models.download_button"), variant="primary", elem_id="models-download")
            preview = gr.Markdown(elem_id="models-preview")
            files = gr.Dataframe(interactive=False, wrap=True, elem_id="models-files", max_height=300)
            with gr.Accordion(i18n("models.token.heading"), open=False):
                token_status = gr.Markdown(elem_id="models-token-status")
                with gr.Row():
                    token = gr.Textbox(type="password", label=i18n("models.token.label"),
                                       info=i18n("models.token.info"), scale=4, elem_id="models-token")
                    save_token = gr.Button(i18n("models.token.save"), scale=1, size="sm", elem_id="models-token-save")
                    forget_token = gr.Button(i18n("models.token.forget"), scale=1, size="sm")
        with gr.Column(scale=6):
            gr.Markdown(i18n("models.downloads_heading"))
            table = gr.Dataframe(interactive=False, wrap=True, elem_id="models-downloads")
            with gr.Row():
                selected = gr.Dropdown(label=i18n("models.selected.label"), choices=[], allow_custom_value=True,
                                       scale=3, elem_id="models-selected")
                keep_partial = gr.Checkbox(True, label=i18n("models.keep_partial.label"), scale=2,
                                           elem_id="models-keep-partial")
            with gr.Row():
                cancel = gr.Button(i18n("models.cancel_button"), variant="stop", elem_id="models-cancel")
                resume = gr.Button(i18n("models.resume_button"), elem_id="models-resume")
                quantize_this = gr.Button(i18n("models.quantize_this_button"), elem_id="models-quantize-this")
                serve_this = gr.Button(i18n("models.serve_this_button"), elem_id="models-serve-this")
            message = gr.Markdown(elem_id="models-message")
            detail = gr.Markdown(elem_id="models-detail")
            log = gr.Textbox(label=i18n("models.log.label"), lines=8, max_lines=LOG_LINES, autoscroll=True,
                             interactive=False, elem_id="models-log")

    form = ModelsForm(repo_id=repo_id, revision=revision, source=source, destination=destination)
    inputs = MODELS_FORM.inputs(form)
    quiet: dict[str, Any] = {"show_progress": "hidden", "concurrency_limit": None}
    timer = gr.Timer(0.5, active=False)  # progress shows at least once a second
    touched = gr.Textbox(visible=False)
    controls = [cancel, resume, quantize_this, serve_this]

    list_button.click(MODELS_FORM.bind(handlers.list_files), inputs, [preview, files], api_visibility="private",
                      **forms.RAW_INPUTS)
    started = download.click(MODELS_FORM.bind(handlers.download_model), inputs, [message, touched],
                             api_name="download_model", concurrency_id="download_control", **forms.RAW_INPUTS)
    started.then(handlers.select, [touched, selected], selected, api_visibility="private")
    cancel.click(handlers.cancel_download, [selected, keep_partial], message, api_name="cancel_download",
                 concurrency_id="download_control")
    resumed = resume.click(handlers.resume_download, selected, [message, touched], api_name="resume_download",
                           concurrency_id="download_control")
    resumed.then(handlers.select, [touched, selected], selected, api_visibility="private")
    save_token.click(handlers.save_token, token, [token, token_status], api_visibility="private")
    token.submit(handlers.save_token, token, [token, token_status], api_visibility="private")
    forget_token.click(handlers.forget_token, None, token_status, api_visibility="private")
    table.select(handlers.pick_from_table, table, selected, api_visibility="private")
    selected.change(handlers.show_selected, selected, [detail, log, *controls], api_visibility="private", **quiet)
    timer.tick(handlers.refresh, selected, [table, selected, detail, log, *controls], api_visibility="private",
               **quiet)
    demo.load(handlers.load_page, selected, [token_status, table, selected, detail, log, *controls],
              api_visibility="private")
    gr.api(handlers.model_files_api, api_name="model_files")
    gr.api(handlers.download_progress_api, api_name="download_progress")
    gr.api(handlers.list_downloads_api, api_name="list_downloads")
    return ModelsTab(quantize_this, serve_this, selected, message, timer, form, preview, files)
