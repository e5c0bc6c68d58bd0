"""Start-up phases and failure hints, read from LMDeploy 0.18.0's recorded output."""

from __future__ import annotations

from pathlib import Path

import pytest

from webui.services.serve_log import PHASE_KEYS, clean, find_hint, read_startup, tail

DATA = Path(__file__).parent / "data"


def lines_of(name: str) -> list[str]:
    return (DATA / name).read_text(encoding="utf-8").splitlines()


def test_recorded_startup_walks_every_phase_in_order() -> None:
    lines = lines_of("api_server-pytorch-startup.log")
    seen = []
    for n in range(len(lines) + 1):
        phase = read_startup(lines[:n]).phase
        if not seen or seen[-1] != phase:
            seen.append(phase)
    assert seen == list(PHASE_KEYS)
    final = read_startup(lines)
    assert final.warmup_seconds == pytest.approx(23.64)
    assert final.gpu_blocks == 256839
    assert final.block_size == 64
    assert final.session_len == 4096  # "updated backend_config=…(session_len=4096": the engine's, not the None asked
    assert final.progress > 0.9


def test_tool_parser_log_reaches_listening() -> None:
    reading = read_startup(lines_of("api_server-pytorch-tool-parser-qwen.log"))
    assert reading.phase == "listening"
    assert reading.warmup_seconds == pytest.approx(14.07)


def test_healthy_logs_have_no_hint() -> None:
    assert find_hint(lines_of("api_server-pytorch-startup.log")) is None


def test_real_no_gpu_failure_is_recognised() -> None:
    hint = find_hint(lines_of("api_server-no-gpu.log"))
    assert hint is not None and hint.key == "hints.no_gpu"
    assert "Found no NVIDIA driver" in hint.line


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "hints.out_of_memory"),
        ("ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 23333): "
         "address already in use", "hints.port_in_use"),
        ("OSError: /m does not appear to have a file named config.json.", "hints.model_missing"),
        ("RuntimeError: Can not found rewrite for architectures: ['FooForCausalLM']",
         "hints.unsupported_architecture"),
        ("RuntimeError: Baichuan (BaiChuanForCausalLM) support has been removed from LMDeploy. Please use an older",
         "hints.unsupported_architecture"),
        ("ModuleNotFoundError: No module named 'lmdeploy'", "hints.lmdeploy_missing"),
        ("ModuleNotFoundError: No module named '_turbomind'", "hints.turbomind_missing"),
    ],
)
def test_known_failures_get_their_hint(line: str, key: str) -> None:
    hint = find_hint(["Traceback (most recent call last):", line])
    assert hint is not None and hint.key == key


def test_clean_drops_colours_and_progress_redraws() -> None:
    assert clean("HINT:    Please open \x1b[93m\x1b[1mhttp://0.0.0.0:23333\x1b[0m in a browser") == (
        "HINT:    Please open http://0.0.0.0:23333 in a browser"
    )
    assert clean("Loading  10%\rLoading 100%\n") == "Loading 100%"


def test_tail_reads_only_the_end(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_text("".join(f"line {i}\n" for i in range(100_000)))
    last = tail(log, max_lines=3)
    assert last == ["line 99997", "line 99998", "line 99999"]
    assert tail(tmp_path / "missing.log") == []


def test_turbomind_cache_budget_line_is_read() -> None:
    """TurboMind reports a KV budget instead of blocks. The line is built from the format string inside LMDeploy
    0.18's _turbomind library ("Object cache budget: {:.2f} MB from free {:.2f} MB and ratio {:.3f}"): TurboMind
    cannot run on the machines this project is tested on, so no recorded log has it."""
    from webui.services.serve_log import read_startup

    line = "[TM][INFO] Object cache budget: 31337.50 MB from free 39171.88 MB and ratio 0.800"
    reading = read_startup(["[TM][INFO] loading weights", line])
    assert reading.cache_budget_mb == 31337.5 and reading.cache_free_mb == 39171.88
    assert read_startup([line.replace("budget", "limit")]).cache_budget_mb is None
