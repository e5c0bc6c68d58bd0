"""AWQ pre-flight: every bad input is refused with a message naming the field; estimates and CLI preview."""

from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from webui.services.models import ModelRoots
from webui.services.quantize_spec import AwqSpec, CheckedAwq, check_awq, cli_preview, hub_reachable


@pytest.fixture
def model(model_root: Path) -> Path:
    return model_root / "tiny llama; echo pwned"


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    folder = tmp_path / "outputs"
    folder.mkdir()
    return folder


@pytest.fixture
def roots(model_root: Path, outputs: Path) -> ModelRoots:
    return ModelRoots([model_root, outputs])


def check(spec: AwqSpec, roots: ModelRoots, outputs: Path, **kw: object) -> CheckedAwq | list:
    kw.setdefault("usable_gpus", 1)
    kw.setdefault("hub_online", False)
    return check_awq(spec, roots, outputs, **kw)


def refused(spec: AwqSpec, roots: ModelRoots, outputs: Path, **kw: object) -> dict[str, str]:
    result = check(spec, roots, outputs, **kw)
    assert isinstance(result, list), "expected a refusal"
    return {e.field: e.key for e in result}


def variant(model: Path, name: str, **config_changes: object) -> Path:
    """A copy of the model with some config.json values changed."""
    target = model.parent / name
    shutil.copytree(model, target)
    config = json.loads((target / "config.json").read_text())
    config.update(config_changes)
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_data_free_job_passes_with_estimates_and_a_cli_twin(model: Path, roots: ModelRoots, outputs: Path) -> None:
    checked = check(AwqSpec(model_path=str(model), calib_source="none", device="cpu"), roots, outputs)
    assert isinstance(checked, CheckedAwq)
    assert checked.output_dir == outputs.resolve() / "tiny-llama-echo-pwned-awq-w4-g128"
    assert checked.layers == 4
    e = checked.estimates
    assert e.size_before_bytes > 30e6 and e.size_after_bytes < e.size_before_bytes
    assert 14e6 < e.size_after_bytes < 20e6  # the real output of this model is 14.9 MB
    words = shlex.split(cli_preview(checked))
    assert words[:4] == ["lmdeploy", "lite", "auto_awq", str(model)]
    assert words[words.index("--calib-samples") + 1] == "0"
    assert "--search-scale" not in words and "ptb" not in words


def test_hub_dataset_preview_uses_only_flags_lmdeploy_018_knows(model: Path, roots: ModelRoots,
                                                                outputs: Path) -> None:
    spec = AwqSpec(model_path=str(model), calib_source="hub", calib_dataset="wikitext2", search_scale=True)
    checked = check(spec, roots, outputs, hub_online=True)
    words = shlex.split(cli_preview(checked))
    assert words[words.index("--calib-dataset") + 1] == "wikitext2"
    assert "--search-scale" in words and words[words.index("--search-scale") + 1].startswith("--")


def test_local_text_has_no_cli_twin_and_counts_tokens(model: Path, roots: ModelRoots, outputs: Path) -> None:
    checked = check(AwqSpec(model_path=str(model), calib_source="sample", calib_samples=16, calib_seqlen=512,
                            device="cpu"), roots, outputs)
    assert isinstance(checked, CheckedAwq)
    assert cli_preview(checked) is None
    assert checked.estimates.calib_tokens > 100_000  # exact count with the model's own tokenizer


def test_offline_hub_dataset_is_refused(model: Path, roots: ModelRoots, outputs: Path,
                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    spec = AwqSpec(model_path=str(model), calib_source="hub", calib_dataset="c4")
    assert refused(spec, roots, outputs, hub_online=False) == {"calib_dataset": "errors.dataset_offline"}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False
    cached = tmp_path / "empty-hf-home" / "hub" / "datasets--allenai--c4"
    cached.mkdir(parents=True)
    assert isinstance(check(spec, roots, outputs, hub_online=False), CheckedAwq)


@pytest.mark.parametrize(
    ("change", "field", "key"),
    [
        ({"model_path": ""}, "model_path", "errors.model_required"),
        ({"w_bits": 3}, "w_bits", "errors.choice"),
        ({"w_group_size": 100}, "w_group_size", "errors.choice"),
        ({"device": "tpu"}, "device", "errors.choice"),
        ({"dtype": "float8"}, "dtype", "errors.choice"),
        ({"calib_source": "ptb"}, "calib_source", "errors.choice"),
        ({"calib_source": "hub", "calib_dataset": "ptb"}, "calib_dataset", "errors.choice"),
        ({"dtype": "bfloat16", "device": "cpu"}, "dtype", "errors.bf16_unsupported"),
        ({"calib_source": "sample", "calib_samples": 100_000}, "calib_samples", "errors.int_range"),
        ({"calib_source": "sample", "calib_seqlen": 4}, "calib_seqlen", "errors.int_range"),
        ({"calib_source": "sample", "batch_size": 0}, "batch_size", "errors.int_range"),
        ({"calib_source": "sample", "calib_samples": 128, "calib_seqlen": 2048}, "calib_samples",
         "errors.calib_too_short"),
        ({"calib_source": "files"}, "calib_files", "errors.calib_files_required"),
        ({"calib_source": "files", "calib_files": ("/etc/passwd",)}, "calib_files", "errors.path_outside_roots"),
        ({"device": "cuda"}, "device", "errors.awq_no_gpu"),
    ],
)
def test_bad_fields_are_named(model: Path, roots: ModelRoots, outputs: Path, change: dict, field: str,
                              key: str) -> None:
    spec = replace(AwqSpec(model_path=str(model), calib_source="none", device="cpu"), **change)
    assert refused(spec, roots, outputs, usable_gpus=0, bf16_ok=False).get(field) == key


def test_bf16_on_an_old_gpu_is_refused(model: Path, roots: ModelRoots, outputs: Path) -> None:
    spec = AwqSpec(model_path=str(model), calib_source="none", dtype="bfloat16")
    assert refused(spec, roots, outputs, bf16_ok=False) == {"dtype": "errors.bf16_unsupported"}
    assert isinstance(check(spec, roots, outputs, bf16_ok=True), CheckedAwq)


def test_models_awq_cannot_take(model: Path, roots: ModelRoots, outputs: Path) -> None:
    gpt2 = variant(model, "gpt2-like", architectures=["GPT2LMHeadModel"])
    assert refused(AwqSpec(model_path=str(gpt2), calib_source="none", device="cpu"), roots, outputs) == {
        "model_path": "errors.awq_architecture"}
    done = variant(model, "already-awq", quantization_config={"quant_method": "awq", "bits": 4})
    assert refused(AwqSpec(model_path=str(done), calib_source="none", device="cpu"), roots, outputs) == {
        "model_path": "errors.awq_already_quantized"}
    smol = variant(model, "hidden-576", hidden_size=576)  # SmolLM2-135M's hidden size
    assert refused(AwqSpec(model_path=str(smol), calib_source="none", device="cpu"), roots, outputs) == {
        "w_group_size": "errors.group_size_divides"}
    assert isinstance(check(AwqSpec(model_path=str(smol), calib_source="none", device="cpu", w_group_size=64),
                            roots, outputs), CheckedAwq)


def test_output_folder_rules(model: Path, roots: ModelRoots, outputs: Path, tmp_path: Path) -> None:
    base = AwqSpec(model_path=str(model), calib_source="none", device="cpu")
    taken = outputs / "taken"
    taken.mkdir()
    (taken / "config.json").write_text("{}")
    result = check(replace(base, output_dir=str(taken)), roots, outputs)
    assert [(e.field, e.key, e.params["suggestion"]) for e in result] == [
        ("output_dir", "errors.output_exists", str(outputs.resolve() / "taken-2"))]
    (outputs / "empty").mkdir()
    assert isinstance(check(replace(base, output_dir=str(outputs / "empty")), roots, outputs), CheckedAwq)
    assert refused(replace(base, output_dir=str(model / "awq")), roots, outputs) == {
        "output_dir": "errors.output_inside_model"}
    assert refused(replace(base, output_dir=str(tmp_path / "elsewhere")), roots, outputs) == {
        "output_dir": "errors.path_outside_roots"}
    assert refused(replace(base, output_dir=str(outputs / ".." / ".." / "escape")), roots, outputs) == {
        "output_dir": "errors.path_outside_roots"}
    default = check(base, roots, outputs)
    claimed = frozenset({str(default.output_dir)})
    second = check(base, roots, outputs, claimed_outputs=claimed)  # a queued job already writes there
    assert second.output_dir == default.output_dir.with_name(default.output_dir.name + "-2")
    assert refused(replace(base, output_dir=str(default.output_dir)), roots, outputs,
                   claimed_outputs=claimed) == {"output_dir": "errors.output_claimed"}


def test_calibration_files(model: Path, roots: ModelRoots, outputs: Path, model_root: Path) -> None:
    base = AwqSpec(model_path=str(model), calib_source="files", calib_samples=4, calib_seqlen=64, device="cpu")
    txt = model_root / "notes.txt"
    txt.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    jsonl = model_root / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps({"content": f"row {i}: " + "lorem ipsum dolor " * 20}) for i in range(30)))
    assert isinstance(check(replace(base, calib_files=(str(txt),)), roots, outputs), CheckedAwq)
    ok = check(replace(base, calib_files=(str(txt), str(jsonl)), text_field="content"), roots, outputs)
    assert isinstance(ok, CheckedAwq) and ok.estimates.calib_tokens > 1000
    bad_field = check(replace(base, calib_files=(str(jsonl),)), roots, outputs)
    assert bad_field[0].key == "errors.calib_file_bad" and "line 1" in bad_field[0].params["error"]
    broken = model_root / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{not json\n')
    assert "line 2" in check(replace(base, calib_files=(str(broken),)), roots, outputs)[0].params["error"]
    binary = model_root / "weights.bin"
    binary.write_bytes(b"\0" * 10)
    assert refused(replace(base, calib_files=(str(binary),)), roots, outputs) == {
        "calib_files": "errors.calib_file_type"}
    assert refused(replace(base, calib_files=(str(model_root / "nope.txt"),)), roots, outputs) == {
        "calib_files": "errors.calib_file_missing"}
    assert refused(replace(base, calib_files=(str(txt),), calib_samples=4096, calib_seqlen=2048), roots, outputs)[
        "calib_samples"] == "errors.calib_too_short"


def test_spec_json_round_trip() -> None:
    spec = AwqSpec(model_path="/m", calib_source="files", calib_files=("/a.txt", "/b.jsonl"))
    assert AwqSpec.from_json_dict(json.loads(json.dumps(spec.to_json_dict()))) == spec


def test_the_size_estimate_is_the_planners_and_search_scale_time_grows_with_the_work(
        model: Path, roots: ModelRoots, outputs: Path, model_root: Path) -> None:
    """One AWQ size formula (ModelShape) for the Quantize tab and the Memory planner; and time that follows the
    work: search-scale on 128×2048 tokens on the CPU is a long job, not a minute."""
    from webui.services.planner import ModelShape, PlanInput, plan

    (model_root / "calib.txt").write_text("word " * 300_000)
    smooth = check(AwqSpec(model_path=str(model), calib_source="files", calib_files=(str(model_root / "calib.txt"),),
                           calib_samples=128, calib_seqlen=2048, device="cpu"), roots, outputs)
    search = check(AwqSpec(model_path=str(model), calib_source="files", calib_files=(str(model_root / "calib.txt"),),
                           calib_samples=128, calib_seqlen=2048, device="cpu", search_scale=True), roots, outputs)
    assert isinstance(smooth, CheckedAwq) and isinstance(search, CheckedAwq)
    config = json.loads((model / "config.json").read_text())
    shape = ModelShape.from_config(config)
    assert smooth.estimates.size_after_bytes == shape.weight_bytes(awq_group_size=128)
    planned = plan(PlanInput(shape=shape, awq=True, awq_group_size=128, gpu_total_bytes=24 << 30))
    assert planned.weights_bytes == smooth.estimates.size_after_bytes
    assert search.estimates.seconds > 10 * smooth.estimates.seconds
    assert search.estimates.seconds > 20 * 60  # measured: still on layer 1 of 4 after 20 minutes


def test_token_counts_are_remembered_per_text_and_tokenizer(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from webui.services import quantize_spec

    calls: list[int] = []
    real = quantize_spec.count_tokens

    def counting(model_dir: Path, text: str) -> tuple[int, bool]:
        calls.append(len(text))
        return real(model_dir, text)

    monkeypatch.setattr(quantize_spec, "count_tokens", counting)
    counter = quantize_spec.TokenCounter(size=2)
    text = "hello world " * 2000
    first = counter(model, text)
    assert first == real(model, text) and first[1] is True  # exact, with the model's own tokenizer
    assert counter(model, text) == first and len(calls) == 1  # the same text is not tokenized again
    other = counter(model, text * 2)
    assert other[0] > first[0] and len(calls) == 2
    counter(model, "third text")
    assert len(counter._seen) == 2  # bounded: the oldest was dropped
    counter(model, text)
    assert len(calls) == 4
