"""The Quantize tab: an AWQ W4A16 form with pre-flight, a job queue with live progress, results, Serve this."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from webui.i18n.catalog import Catalog
from webui.services.job_states import LIVE_JOB_STATES, JobState
from webui.services.models import ModelRoots
from webui.services.quantize import JobManager, JobSnapshot
from webui.services.quantize_spec import (
    CALIB_SOURCES,
    DEVICES,
    DTYPES,
    HUB_DATASETS,
    W_BITS,
    W_GROUP_SIZES,
    AwqSpec,
    CheckedAwq,
)
from webui.services.serve_spec import FieldError
from webui.settings import Settings
from webui.ui import forms
from webui.ui.common import (
    as_int,
    duration,
    format_errors,
    gib,
    locale_of,
    model_choices,
    picked_row,
    short_model,
    size,
)

LOG_LINES = 40  # the box grows to show them all, so the newest line is always in view


@dataclass(frozen=True)
class QuantizeValues:
    """The Quantize form's values; the field names are submit_quantize's and preflight_quantize's API parameters.

    The defaults are the page's: the sample corpus (it needs no download and no paths) with a size it can fill.
    """

    model_path: str = forms.path(required=True)
    output_dir: str = forms.path("")  # "" = a free folder named after the model, in the outputs folder
    calib_source: str = forms.text("sample", max_chars=64)
    calib_dataset: str = forms.text(AwqSpec.calib_dataset, max_chars=64)
    calib_paths: str = forms.paths("", error_field="calib_files")  # one a line
    text_field: str = forms.text(AwqSpec.text_field)
    calib_samples: int = forms.whole(64)
    calib_seqlen: int = forms.whole(1024)
    batch_size: int = forms.whole(AwqSpec.batch_size)
    w_bits: int = forms.whole(AwqSpec.w_bits)
    w_group_size: int = forms.whole(AwqSpec.w_group_size)
    w_sym: bool = forms.flag(AwqSpec.w_sym)
    search_scale: bool = forms.flag(AwqSpec.search_scale)
    dtype: str = forms.text(AwqSpec.dtype, max_chars=64)
    device: str = forms.text(AwqSpec.device, max_chars=64)
    gpu: int = forms.whole(AwqSpec.gpu)  # NVML number; ignored on the cpu
    trust_remote_code: bool = forms.flag(AwqSpec.trust_remote_code)

    def to_spec(self) -> AwqSpec:
        files = tuple(line.strip() for line in self.calib_paths.splitlines() if line.strip())
        return AwqSpec(
            model_path=self.model_path.strip(), output_dir=self.output_dir.strip(), calib_source=self.calib_source,
            calib_dataset=self.calib_dataset, calib_files=files, text_field=self.text_field.strip() or "text",
            calib_samples=self.calib_samples, calib_seqlen=self.calib_seqlen, batch_size=self.batch_size,
            w_bits=self.w_bits, w_group_size=self.w_group_size, w_sym=self.w_sym, search_scale=self.search_scale,
            dtype=self.dtype, device=self.device, gpu=self.gpu, trust_remote_code=self.trust_remote_code,
        )


QUANTIZE_FORM = forms.Form(QuantizeValues)


@dataclass(frozen=True)
class QuantizeForm:
    """The form's components, one per QuantizeValues field and named like it (uploads are added to calib_paths)."""

    model_path: gr.Dropdown
    output_dir: gr.Textbox
    calib_source: gr.Radio
    calib_dataset: gr.Dropdown
    calib_paths: gr.Textbox
    text_field: gr.Textbox
    calib_samples: gr.Number
    calib_seqlen: gr.Number
    batch_size: gr.Number
    w_bits: gr.Radio
    w_group_size: gr.Dropdown
    w_sym: gr.Checkbox
    search_scale: gr.Checkbox
    dtype: gr.Radio
    device: gr.Radio
    gpu: gr.Number
    trust_remote_code: gr.Checkbox


def job_summary(catalog: Catalog, spec: dict[str, Any], locale: str) -> str:
    """A job's settings in one line, in the page's language: bits and group, calibration, search-scale, device
    (with the GPU: `cuda:1`; a row from before GPUs were chosen ran on GPU 0)."""
    data_free = spec.get("calib_source") == "none" or not int(spec.get("calib_samples") or 0)
    if data_free:
        calib = catalog.text("quantize.calib_source.none", locale)
    elif spec.get("calib_source") == "hub":
        calib = f"{spec.get('calib_dataset', '')} {spec.get('calib_samples')}×{spec.get('calib_seqlen')}"
    else:
        calib = (catalog.text(f"quantize.calib_source.{spec.get('calib_source')}", locale)
                 + f" {spec.get('calib_samples')}×{spec.get('calib_seqlen')}")
    parts = [f"w{spec.get('w_bits')} g{spec.get('w_group_size')}" + (" sym" if spec.get("w_sym") else ""), calib]
    if spec.get("search_scale"):
        parts.append(catalog.text("quantize.search_scale.label", locale))
    device = str(spec.get("device", ""))
    parts.append(f"cuda:{spec.get('gpu', 0)}" if device == "cuda" else device)
    return " · ".join(parts)


class QuantizeHandlers:
    """Event handlers of the Quantize tab; they command the JobManager and read its snapshots.

    preflight and submit_quantize take the form as one parsed value (bind them with QUANTIZE_FORM.bind).
    """

    def __init__(self, jobs: JobManager, roots: ModelRoots, settings: Settings, catalog: Catalog) -> None:
        self.jobs = jobs
        self.roots = roots
        self.settings = settings
        self.catalog = catalog

    # form ----------------------------------------------------------------------------------------
    def check(self, form: forms.Parsed[QuantizeValues]) -> CheckedAwq | list[FieldError]:
        """The job checked, or every problem: the form's own first (the job checked a refused value's default)."""
        checked = self.jobs.check(form.values.to_spec())
        if not form.errors:
            return checked
        return forms.merge_errors(form.errors, checked if isinstance(checked, list) else [])

    def preflight(self, form: forms.Parsed[QuantizeValues], request: gr.Request | None) -> tuple[str, str]:
        """What the job would do (sizes, memory, time) or what is wrong; and the equivalent CLI command."""
        locale = locale_of(request)
        checked = self.check(form)
        if isinstance(checked, list):
            return format_errors(self.catalog, checked, locale, "quantize"), ""
        return self._estimate_markdown(checked, locale), self.jobs.preview(checked) or self.catalog.text(
            "quantize.msg.no_cli", locale)

    def _estimate_markdown(self, checked: CheckedAwq, locale: str) -> str:
        t = self.catalog.text
        e = checked.estimates
        lines = [f"**{t('quantize.msg.ready', locale)}**", "",
                 f"- {t('quantize.detail.output', locale)}: `{checked.output_dir}`",
                 f"- {t('quantize.detail.architecture', locale)}: {checked.info.architecture}, "
                 f"{checked.layers} {t('quantize.detail.layers', locale)}, ~{e.params / 1e9:.2f} B",
                 f"- {t('quantize.detail.size', locale)}: {size(e.size_before_bytes)} → ~{size(e.size_after_bytes)}",
                 f"- {t('quantize.detail.peak', locale)}: RAM ~{gib(e.ram_peak_bytes)}"
                 + (f", GPU {checked.spec.gpu} ~{gib(e.gpu_peak_bytes)}" if checked.spec.device == "cuda" else ""),
                 f"- {t('quantize.detail.duration', locale)}: ~{duration(e.seconds)}"]
        if e.calib_tokens is not None:
            lines.append(f"- {t('quantize.detail.calib_tokens', locale)}: {e.calib_tokens:,}")
        return "\n".join(lines)

    def refresh_models(self, current: str | None) -> gr.Dropdown:
        return model_choices(self.roots, current)

    def add_uploads(self, uploads: list[str] | None, calib_paths: str) -> tuple[str, None]:
        """Keep uploaded files under the state folder and list them with the other calibration paths."""
        paths = [line for line in (calib_paths or "").splitlines() if line.strip()]
        for upload in uploads or []:
            paths.append(self.jobs.accept_upload(upload if isinstance(upload, str) else upload.name,
                                                 self.settings.upload_dir))
        return "\n".join(paths), None

    def gpu_visibility(self, device: str) -> gr.Number:
        """The GPU matters only to a cuda job."""
        return gr.Number(visible=device == "cuda")

    def calibration_defaults(self, calib_source: str, samples: float | None, seqlen: float | None) -> tuple[
        gr.Dropdown, gr.File, gr.Textbox, gr.Textbox, gr.Number, gr.Number
    ]:
        """Show the inputs the chosen calibration needs; the sample corpus holds about 100k tokens."""
        if calib_source == "sample" and as_int(samples) * as_int(seqlen) > 65_536:
            samples, seqlen = 64, 1024
        files = calib_source == "files"
        return (gr.Dropdown(visible=calib_source == "hub"), gr.File(visible=files), gr.Textbox(visible=files),
                gr.Textbox(visible=files), gr.Number(value=samples, visible=calib_source != "none"),
                gr.Number(value=seqlen, visible=calib_source != "none"))

    # actions -------------------------------------------------------------------------------------
    def submit_quantize(self, form: forms.Parsed[QuantizeValues], request: gr.Request | None) -> tuple[str, str]:
        """Queue an AWQ job; returns a message and the job id ("" if refused)."""
        locale = locale_of(request)
        if form.errors:
            checked = self.check(form)  # a list whenever the form has errors: theirs first, then the job's
            errors = checked if isinstance(checked, list) else form.errors
            return format_errors(self.catalog, errors, locale, "quantize"), ""
        outcome = self.jobs.submit(form.values.to_spec())
        if outcome.job is None:
            return format_errors(self.catalog, outcome.errors, locale, "quantize"), ""
        job = outcome.job
        key = "quantize.msg.queued" if job.state == JobState.QUEUED else "quantize.msg.started"
        return self.catalog.text(key, locale, id=job.id, position=job.queue_position or 1), job.id

    def cancel_job(self, job_id: str | None, request: gr.Request) -> str:
        locale = locale_of(request)
        if not job_id:
            return self.catalog.text("quantize.msg.no_selection", locale)
        try:
            job = self.jobs.cancel(job_id)
        except KeyError:
            return self.catalog.text("errors.unknown_job", locale, id=job_id)
        if job.state == JobState.CANCELLING:  # cancel() returns at once; the monitor sees the processes go
            return self.catalog.text("quantize.msg.cancelling", locale, id=job.id)
        return self.catalog.text("quantize.msg.cancelled", locale, id=job.id,
                                 state=self.catalog.text(f"quantize.state.{job.state}", locale))

    def serve_this(self, job_id: str | None, request: gr.Request) -> tuple[gr.Dropdown, str, gr.Tabs, str]:
        """Fill the Serve form with the job's output as an AWQ model and switch to the Serve tab."""
        locale = locale_of(request)
        job = self.jobs.get(job_id) if job_id else None
        if job is None or job.state != JobState.SUCCEEDED:
            return gr.Dropdown(), gr.skip(), gr.Tabs(), self.catalog.text("quantize.msg.serve_needs_result", locale)
        choices = [str(p) for p in self.roots.discover()]
        return (gr.Dropdown(choices=choices, value=job.output_dir), "awq", gr.Tabs(selected="serve"),
                self.catalog.text("quantize.msg.serving", locale, path=job.output_dir))

    # views ---------------------------------------------------------------------------------------
    def list_jobs(self, request: gr.Request) -> pd.DataFrame:
        locale = locale_of(request)
        t = self.catalog.text
        columns = [t(f"quantize.col.{c}", locale) for c in ("id", "state", "model", "settings", "progress", "time")]
        rows = []
        for j in self.jobs.snapshots():
            state = t(f"quantize.state.{j.state}", locale)
            if j.queue_position:
                state += f" #{j.queue_position}"
            rows.append([j.id, state, short_model(j.model_path), job_summary(self.catalog, j.spec, locale),
                         f"{j.fraction * 100:.0f}%", duration(j.elapsed_seconds)])
        return pd.DataFrame(rows, columns=columns)

    def job_detail(self, job_id: str | None, request: gr.Request) -> tuple[str, str]:
        locale = locale_of(request)
        job = self.jobs.get(job_id) if job_id else None
        if job is None:
            return self.catalog.text("quantize.msg.no_selection", locale), ""
        return self._progress_markdown(job, locale), "\n".join(self.jobs.log(job.id, LOG_LINES))

    def refresh(self, job_id: str | None, request: gr.Request, tick: bool = True) -> tuple[
        pd.DataFrame, gr.Dropdown, str, str, gr.Button, gr.Button
    ]:
        """Timer tick: table, job choices, detail, log and the buttons that fit the job's state."""
        detail, log = self.job_detail(job_id, request)
        return (self.list_jobs(request), self._job_choices(job_id, locale_of(request), keep=tick), detail, log,
                *self.controls(job_id))

    def show_selected(self, job_id: str | None, request: gr.Request) -> tuple[str, str, gr.Button, gr.Button]:
        """A job was picked: its detail, its log and the buttons that fit its state."""
        return (*self.job_detail(job_id, request), *self.controls(job_id))

    def controls(self, job_id: str | None) -> tuple[gr.Button, gr.Button]:
        """Cancel while the job waits or runs (not once CANCELLING: the cancel is under way), Serve this once it
        has succeeded."""
        job = self.jobs.get(job_id) if job_id else None
        state = job.state if job else None
        return (gr.Button(interactive=state in (JobState.QUEUED, JobState.RUNNING)),
                gr.Button(interactive=state == JobState.SUCCEEDED))

    def select_job(self, job_id: str | None, current: str | None, request: gr.Request) -> gr.Dropdown:
        return self._job_choices(job_id or current, locale_of(request))

    def pick_from_table(self, table: pd.DataFrame, evt: gr.SelectData) -> str | None:
        """Clicking a row selects that job."""
        return picked_row(table, evt, column=0)

    def load_page(self, job_id: str | None, request: gr.Request) -> tuple[
        gr.Dropdown, pd.DataFrame, gr.Dropdown, str, str, gr.Button, gr.Button
    ]:
        jobs = self.jobs.snapshots()
        running = [j for j in jobs if j.state in LIVE_JOB_STATES]
        selected = job_id or (running[0].id if running else (jobs[0].id if jobs else None))
        return (self.refresh_models(None), *self.refresh(selected, request, tick=False))  # sets the selection

    # scripting -----------------------------------------------------------------------------------
    def list_jobs_api(self) -> list[dict]:
        """Every job as a JSON object: state, phase, layer k/N, fraction, timings, result."""
        return [j.as_dict() for j in self.jobs.snapshots()]

    def job_progress_api(self, job_id: str) -> dict:
        """One job's progress and result as a JSON object (empty if the id is unknown)."""
        job = self.jobs.get(job_id)
        return job.as_dict() if job else {}

    # helpers -------------------------------------------------------------------------------------
    def _job_choices(self, selected: str | None, locale: str, keep: bool = False) -> gr.Dropdown:
        """The jobs as choices. With `keep` (a timer tick) a valid selection is not sent back: the tick read it
        before it ran, and sending it would undo a pick the user made meanwhile."""
        jobs = self.jobs.snapshots()
        ids = {j.id for j in jobs}
        choices = [(f"{j.id} · {self.catalog.text(f'quantize.state.{j.state}', locale)} · "
                    f"{short_model(j.model_path)}", j.id) for j in jobs]
        if keep and selected in ids:
            return gr.Dropdown(choices=choices)
        return gr.Dropdown(choices=choices, value=selected if selected in ids else (jobs[0].id if jobs else None))

    def _progress_markdown(self, j: JobSnapshot, locale: str) -> str:
        t = self.catalog.text
        state = t(f"quantize.state.{j.state}", locale)
        summary = html.escape(job_summary(self.catalog, j.spec, locale))
        lines = [f"### <span class='state state-{j.state.lower()}'>{state}</span> `{j.id}` · {summary}"]
        if j.state == JobState.CANCELLING:
            lines.append(t("quantize.detail.cancelling", locale))
        if j.state in LIVE_JOB_STATES:
            pct = int(j.fraction * 100)
            phase = t(f"quantize.phase.{j.phase}", locale)
            layer = f" · {t('quantize.detail.layer', locale)} {j.layer}/{j.layers}" if j.layers and j.layer else ""
            lines.append(f"**{phase}**{layer} <progress value='{pct}' max='100'></progress> {pct}%")
            timing = []
            if j.elapsed_seconds is not None:
                timing.append(f"{t('quantize.detail.elapsed', locale)} {duration(j.elapsed_seconds)}")
            if j.eta_seconds is not None:
                timing.append(f"{t('quantize.detail.eta', locale)} {duration(j.eta_seconds)}")
            if j.queue_position:
                timing.append(t("quantize.detail.queue", locale, position=j.queue_position))
            if timing:
                lines.append(" · ".join(timing))
        lines.append(f"- {t('quantize.detail.output', locale)}: `{j.output_dir}`")
        r = j.result
        if j.state == JobState.SUCCEEDED and r:
            ratio = f" (×{r['ratio']})" if r.get("ratio") else ""
            lines += [
                f"- {t('quantize.detail.size', locale)}: {size(r.get('size_before_bytes'))} → "
                f"{size(r.get('size_after_bytes'))}{ratio}",
                f"- {t('quantize.detail.took', locale)}: {duration(r.get('wall_seconds'))}",
                f"- {t('quantize.detail.peak', locale)}: RAM {gib(r.get('peak_ram_bytes'))}"
                + (f", GPU {gib(r.get('peak_gpu_bytes'))}" if r.get("peak_gpu_bytes") else ""),
                f"- quantization_config: `{json.dumps(r.get('quantization_config'))}`",
            ]
        if j.state in (JobState.FAILED, JobState.LOST) and j.error:
            # The worker's or the OS's own words, quoted as log text under our heading.
            lines.append(f"\n> **{t('quantize.detail.error', locale)}**\n\n```text\n{j.error[-600:]}\n```")
        if j.command:
            lines.append(f"\n```bash\n{j.command}\n```")
        return "\n".join(lines)


def build_quantize_tab(demo: gr.Blocks, handlers: QuantizeHandlers, i18n: gr.I18n) -> tuple[
    gr.Button, gr.Dropdown, gr.Markdown, gr.Timer, gr.Dropdown, gr.Button
]:
    """Lay out the Quantize tab; returns what the app wires across tabs (Serve this, selected job, timer, the
    model picker that the Models tab fills, and the button that offers a repo id's download)."""
    defaults = QuantizeValues()
    with gr.Row():
        with gr.Column(scale=5):
            gr.Markdown(i18n("quantize.form_heading"))
            with gr.Row():
                model_path = gr.Dropdown(label=i18n("quantize.model_path.label"), info=i18n("quantize.model_path.info"),
                                         choices=[], allow_custom_value=True, filterable=True, scale=5,
                                         elem_id="quantize-model-path")
                rescan = gr.Button(i18n("serve.refresh_models"), scale=1, size="sm")
            get_model = gr.Button(i18n("models.get_it_button"), visible=False, size="sm", variant="primary",
                                  elem_id="quantize-get-model")
            output_dir = gr.Textbox(value=defaults.output_dir, label=i18n("quantize.output_dir.label"),
                                    info=i18n("quantize.output_dir.info"),
                                    placeholder=i18n("quantize.output_dir.placeholder"), elem_id="quantize-output")
            calib_source = gr.Radio(
                [(i18n(f"quantize.calib_source.{v}"), v) for v in CALIB_SOURCES],
                value=defaults.calib_source, label=i18n("quantize.calib_source.label"),
                info=i18n("quantize.calib_source.info"), elem_id="quantize-calib-source",
            )
            calib_dataset = gr.Dropdown(list(HUB_DATASETS), value=defaults.calib_dataset, visible=False,
                                        label=i18n("quantize.calib_dataset.label"),
                                        info=i18n("quantize.calib_dataset.info"))
            calib_uploads = gr.File(file_count="multiple", file_types=[".txt", ".jsonl", ".md"], visible=False,
                                    label=i18n("quantize.calib_upload.label"), elem_id="quantize-uploads")
            with gr.Row():
                calib_paths = gr.Textbox(value=defaults.calib_paths, label=i18n("quantize.calib_files.label"),
                                         visible=False, lines=2, info=i18n("quantize.calib_files.info"), scale=3,
                                         elem_id="quantize-calib-paths")
                text_field = gr.Textbox(value=defaults.text_field, label=i18n("quantize.text_field.label"),
                                        visible=False, info=i18n("quantize.text_field.info"), scale=1)
            with gr.Row():
                calib_samples = gr.Number(value=defaults.calib_samples, precision=0, minimum=0,
                                          label=i18n("quantize.calib_samples.label"),
                                          info=i18n("quantize.calib_samples.info"), elem_id="quantize-samples")
                calib_seqlen = gr.Number(value=defaults.calib_seqlen, precision=0, minimum=16,
                                         label=i18n("quantize.calib_seqlen.label"),
                                         info=i18n("quantize.calib_seqlen.info"), elem_id="quantize-seqlen")
                batch_size = gr.Number(value=defaults.batch_size, precision=0, minimum=1,
                                       label=i18n("quantize.batch_size.label"), info=i18n("quantize.batch_size.info"))
            with gr.Row():
                w_bits = gr.Radio(list(W_BITS), value=defaults.w_bits, label=i18n("quantize.w_bits.label"),
                                  info=i18n("quantize.w_bits.info"))
                w_group_size = gr.Dropdown(list(W_GROUP_SIZES), value=defaults.w_group_size,
                                           label=i18n("quantize.w_group_size.label"),
                                           info=i18n("quantize.w_group_size.info"), elem_id="quantize-group-size")
            with gr.Row():
                device = gr.Radio(list(DEVICES), value=defaults.device, label=i18n("quantize.device.label"),
                                  info=i18n("quantize.device.info"), elem_id="quantize-device")
                gpu = gr.Number(value=defaults.gpu, precision=0, minimum=0, label=i18n("quantize.gpu.label"),
                                info=i18n("quantize.gpu.info"), visible=defaults.device == "cuda",
                                elem_id="quantize-gpu")
                dtype = gr.Radio(list(DTYPES), value=defaults.dtype,
                                 label=i18n("quantize.dtype.label"), info=i18n("quantize.dtype.info"))
            with gr.Row():
                search_scale = gr.Checkbox(defaults.search_scale, label=i18n("quantize.search_scale.label"),
                                           info=i18n("quantize.search_scale.info"))
                w_sym = gr.Checkbox(defaults.w_sym, label=i18n("quantize.w_sym.label"),
                                    info=i18n("quantize.w_sym.info"))
                trust_remote_code = gr.Checkbox(defaults.trust_remote_code,
                                                label=i18n("quantize.trust_remote_code.label"),
                                                info=i18n("quantize.trust_remote_code.info"))
            preflight = gr.Markdown(elem_id="quantize-preflight")
            command = gr.Code(label=i18n("quantize.command.label"), language="shell", interactive=False,
                              elem_id="quantize-command")
            submit = gr.Button(i18n("quantize.submit_button"), variant="primary", elem_id="quantize-submit")
        with gr.Column(scale=6):
            gr.Markdown(i18n("quantize.jobs_heading"))
            jobs_table = gr.Dataframe(interactive=False, wrap=True, elem_id="quantize-jobs")
            with gr.Row():
                selected = gr.Dropdown(label=i18n("quantize.selected.label"), choices=[], allow_custom_value=True,
                                       scale=3, elem_id="quantize-selected")
                cancel = gr.Button(i18n("quantize.cancel_button"), variant="stop", scale=1, elem_id="quantize-cancel")
                serve_this = gr.Button(i18n("quantize.serve_this_button"), scale=1, elem_id="quantize-serve-this")
            message = gr.Markdown(elem_id="quantize-message")
            detail = gr.Markdown(elem_id="quantize-detail")
            log = gr.Textbox(label=i18n("quantize.log.label"), lines=12, max_lines=LOG_LINES, autoscroll=True,
                             interactive=False, elem_id="quantize-log")

    form = QuantizeForm(
        model_path=model_path, output_dir=output_dir, calib_source=calib_source, calib_dataset=calib_dataset,
        calib_paths=calib_paths, text_field=text_field, calib_samples=calib_samples, calib_seqlen=calib_seqlen,
        batch_size=batch_size, w_bits=w_bits, w_group_size=w_group_size, w_sym=w_sym, search_scale=search_scale,
        dtype=dtype, device=device, gpu=gpu, trust_remote_code=trust_remote_code,
    )
    inputs = QUANTIZE_FORM.inputs(form)
    preflight_fn = QUANTIZE_FORM.bind(handlers.preflight)
    quiet: dict[str, Any] = {"show_progress": "hidden", "concurrency_limit": None}
    timer = gr.Timer(1.0, active=False)
    touched = gr.Textbox(visible=False)

    gr.on([c.change for c in inputs], preflight_fn, inputs, [preflight, command], api_name="preflight_quantize",
          trigger_mode="always_last", **forms.RAW_INPUTS, **quiet)
    calib_source.change(handlers.calibration_defaults, [calib_source, calib_samples, calib_seqlen],
                        [calib_dataset, calib_uploads, calib_paths, text_field, calib_samples, calib_seqlen],
                        api_visibility="private", **quiet)
    device.change(handlers.gpu_visibility, device, gpu, api_visibility="private", **quiet)
    rescan.click(handlers.refresh_models, model_path, model_path, api_visibility="private")
    calib_uploads.upload(handlers.add_uploads, [calib_uploads, calib_paths], [calib_paths, calib_uploads],
                         api_visibility="private")
    submitted = submit.click(QUANTIZE_FORM.bind(handlers.submit_quantize), inputs, [message, touched],
                             api_name="submit_quantize", concurrency_id="job_control", **forms.RAW_INPUTS)
    submitted.then(handlers.select_job, [touched, selected], selected, api_visibility="private")
    # The output name just claimed is taken: show the next free one.
    submitted.then(preflight_fn, inputs, [preflight, command], api_visibility="private", **forms.RAW_INPUTS, **quiet)
    cancel.click(handlers.cancel_job, selected, message, api_name="cancel_job", concurrency_id="job_control")
    jobs_table.select(handlers.pick_from_table, jobs_table, selected, api_visibility="private")
    controls = [cancel, serve_this]
    selected.change(handlers.show_selected, selected, [detail, log, *controls], api_visibility="private", **quiet)
    timer.tick(handlers.refresh, selected, [jobs_table, selected, detail, log, *controls], api_visibility="private",
               **quiet)
    demo.load(handlers.load_page, selected, [model_path, jobs_table, selected, detail, log, *controls],
              api_visibility="private")
    gr.api(handlers.list_jobs_api, api_name="list_jobs")
    gr.api(handlers.job_progress_api, api_name="job_progress")
    return serve_this, selected, message, timer, model_path, get_model
