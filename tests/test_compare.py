"""Comparisons through the services: real child processes (the stand-in api_server started by the ServerManager,
the load worker, llama.cpp's server with SmolLM2), a real SQLite file, and the numbers they produce."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import MODEL_NAME, StandInNvml, fake_argv_factory, smollm2_gguf, wait_until
from webui.services.compare import (
    CompareConfig,
    CompareManager,
    CompareRequest,
    deltas,
    parse_kv_usage,
    result_csv,
    text_chunks,
    usual_grid,
)
from webui.services.container import Services
from webui.services.job_states import JobState
from webui.services.lifecycle import handle_of
from webui.services.load import LevelSpec, RequestRecord, percentile, read_records, summarize
from webui.services.quantize_spec import AwqSpec
from webui.services.serve_spec import ServerSpec, suggest_port
from webui.services.server_states import ServerState
from webui.services.workload import quality_text
from webui.settings import Settings

ENDED = {JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value}


def spec(settings: Settings, policy: str = "none", fraction: float = 0.4) -> ServerSpec:
    return ServerSpec(model_path=str(settings.model_roots[0] / MODEL_NAME), backend="pytorch", kv_policy=policy,
                      cache_max_entry_count=fraction)


def config(settings: Settings, policy: str = "none", fraction: float = 0.4, label: str = "") -> CompareConfig:
    return CompareConfig(label=label or f"KV {policy} @ {fraction}", spec=spec(settings, policy, fraction))


def is_sleeping(base_url: str) -> bool:
    with urllib.request.urlopen(base_url + "/is_sleeping", timeout=5) as resp:  # noqa: S310 - loopback
        return bool(json.loads(resp.read())["is_sleeping"])




@pytest.fixture
def compare_services(settings: Settings):
    services = Services.build(settings, argv_factory=fake_argv_factory("--oom-above", "0.85"))
    try:
        yield services
    finally:
        services.close()


# --- a whole run -------------------------------------------------------------------------------------------
def test_two_configurations_measured_and_their_servers_stopped(compare_services: Services, settings: Settings):
    request = CompareRequest(configs=(config(settings, "none"), config(settings, "int4")), concurrency=(1, 4),
                             requests_per_level=8, max_new_tokens=16, answers=2, seed=7)
    snap = compare_services.compare.submit(request)
    assert not isinstance(snap, list), snap
    done = compare_services.compare.wait_for(snap.id, ENDED, 120)
    assert done.state == JobState.SUCCEEDED.value, done
    assert done.progress == 1.0
    result = compare_services.compare.result(snap.id)
    configs = result["configs"]
    assert [c["status"] for c in configs] == ["done", "done"]
    for c in configs:
        assert [lv["concurrency"] for lv in c["levels"]] == [1, 4]
        for level in c["levels"]:
            assert level["ok"] == 8 and level["errors"] == 0
            assert level["ttft_p50_ms"] > 0 and level["ttft_p95_ms"] >= level["ttft_p50_ms"]
            assert level["output_tps"] > 0 and level["tokens_from_usage"]
        assert c["perplexity"]["available"] and c["perplexity"]["perplexity"] == pytest.approx(
            math.exp(c["perplexity"]["nats"]))
        assert c["perplexity"]["pieces"] >= 9  # the stand-in, like LMDeploy, refuses a piece over its session
        assert c["perplexity"]["weighted_by"] == "tokens" and c["perplexity"]["tokens"] > 1000  # via /v1/encode
        assert len(c["answers"]) == 2 and all(c["answers"])
        assert c["peak_kv_usage"] is not None
        assert c["kv_tokens"] == c["gpu_blocks"] * 64
        assert c["session_len_used"] == 4096 and c["kv_sessions"] == c["kv_tokens"] // 4096
        # what the run started, it stopped
        assert compare_services.servers.get(c["server_id"]).state == ServerState.STOPPED.value
    assert "--quant-policy 4" in configs[1]["command"] and "--quant-policy" not in configs[0]["command"]
    # the stand-in's blocks follow the ratio measured on the GPU; perplexity is a little worse with int4 KV
    d = result["deltas"]
    assert d[0]["kv_tokens_ratio"] == 1.0 and d[1]["kv_tokens_ratio"] == pytest.approx(3.76, abs=0.01)
    assert d[1]["perplexity_pct"] > 0 and d[1]["concurrency"] == 4
    # every request of a level went to the worker, in the same seeded order for both configurations
    folder = Path(compare_services.store.get_job(snap.id).output_dir)
    sent = [json.loads((folder / f"level-{i}-4.json").read_text())["requests"] for i in (1, 2)]
    assert sent[0] == sent[1] and len(sent[0]) == 8
    rows = list(csv.DictReader(io.StringIO(result_csv(configs))))
    assert len(rows) == 4 and [r["concurrency"] for r in rows] == ["1", "4", "1", "4"]
    assert all("\n" not in r["command"] and "--server-port" in r["command"] for r in rows)
    assert compare_services.compare.running() is None


def test_a_failed_configuration_does_not_stop_the_others(compare_services: Services, settings: Settings):
    request = CompareRequest(configs=(config(settings, "none", 0.9, "too big"), config(settings, "int8", 0.4)),
                             concurrency=(2,), requests_per_level=4, max_new_tokens=8, answers=0, quality="none")
    snap = compare_services.compare.submit(request)
    done = compare_services.compare.wait_for(snap.id, ENDED, 120)
    assert done.state == JobState.SUCCEEDED.value
    failed, ok = done.configs
    assert failed["status"] == "failed" and ok["status"] == "done"
    assert failed["error"]["key"] == "compare.err.server_failed"
    assert failed["error"]["params"]["hint"] == "hints.out_of_memory"
    assert "out of memory" in failed["error"]["params"]["line"].lower()
    assert ok["levels"][0]["ok"] == 4 and ok["perplexity"] is None
    assert deltas(done.configs, 1)[0]["output_tps_pct"] is None  # nothing to compare a failure with


def test_cancel_mid_run_stops_the_load_and_the_server(compare_services: Services, settings: Settings):
    request = CompareRequest(configs=(config(settings, "none"), config(settings, "int8")), concurrency=(1,),
                             requests_per_level=3000, max_new_tokens=16, answers=0, quality="none")
    snap = compare_services.compare.submit(request)
    wait_until(lambda: (c := compare_services.compare.get(snap.id).configs[0]).get("level_done", 0) > 2 and c,
               60, "requests to finish")
    worker = compare_services.store.get_job(snap.id)
    assert worker.pid
    compare_services.compare.cancel(snap.id)
    done = compare_services.compare.wait_for(snap.id, ENDED, 30)
    assert done.state == JobState.CANCELLED.value
    assert [c["status"] for c in done.configs] == ["cancelled", "cancelled"]
    server_id = done.configs[0]["server_id"]
    wait_until(lambda: compare_services.servers.get(server_id).state == ServerState.STOPPED.value, 30, "stop")
    assert not compare_services.supervisor.is_alive(handle_of(worker.pid, worker.create_time, worker.log_path))
    assert not done.configs[1].get("server_id")  # the second never started


def test_a_reused_server_sleeps_while_the_others_run_and_wakes_after(compare_services: Services,
                                                                        settings: Settings):
    # its own free port: LMDeploy's default may still be held by the previous test's server on its way out
    started = compare_services.servers.start(replace(spec(settings, "none", 0.3),
                                                     port=compare_services.servers.suggest_port()))
    assert started.server is not None, started.errors
    mine = compare_services.servers.wait_for(started.server.id, {ServerState.READY.value}, 60)
    request = CompareRequest(configs=(CompareConfig(label="mine", server_id=mine.id), config(settings, "int8")),
                             concurrency=(1,), requests_per_level=200, max_new_tokens=16, answers=0,
                             quality="none", baseline=1)
    snap = compare_services.compare.submit(request)
    wait_until(lambda: compare_services.compare.get(snap.id).configs[1].get("status") == "measuring", 60,
               "the second configuration")
    assert is_sleeping(mine.base_url)  # its KV pool is free for the configuration being measured
    done = compare_services.compare.wait_for(snap.id, ENDED, 120)
    assert done.state == JobState.SUCCEEDED.value
    assert not is_sleeping(mine.base_url)
    assert compare_services.servers.get(mine.id).state == ServerState.READY.value  # reused, never stopped
    assert done.configs[0]["source"] == "reused" and done.configs[0]["levels"][0]["ok"] == 200
    assert deltas(done.configs, 1)[0]["kv_tokens_ratio"] == pytest.approx(0.3 / 0.4 / 1.94, abs=0.01)


def test_a_run_continues_after_a_console_restart(settings: Settings):
    first = Services.build(settings, argv_factory=fake_argv_factory())
    request = CompareRequest(configs=(config(settings, "none"), config(settings, "int4")), concurrency=(1,),
                             requests_per_level=150, max_new_tokens=16, answers=0, quality="none")
    snap = first.compare.submit(request)
    wait_until(lambda: first.compare.get(snap.id).configs[0].get("level_done", 0) > 5, 60, "progress")
    first.close()  # the row stays RUNNING: the next console continues it
    second = Services.build(settings, argv_factory=fake_argv_factory())
    try:
        done = second.compare.wait_for(snap.id, ENDED, 180)
        assert done.state == JobState.SUCCEEDED.value
        assert [c["status"] for c in done.configs] == ["done", "done"]
        assert done.configs[0]["levels"][0]["ok"] == 150
        assert any(e.kind == "resumed" for e in second.store.events(snap.id))
    finally:
        second.close()


def test_a_cancel_while_a_server_starts_stops_that_server(settings: Settings):
    services = Services.build(settings, argv_factory=fake_argv_factory("--phase-delay", "1.0"))
    try:
        request = CompareRequest(configs=(config(settings, "none"), config(settings, "int8")), concurrency=(1,),
                                 requests_per_level=2, answers=0, quality="none")
        snap = services.compare.submit(request)
        row = wait_until(lambda: (c := services.compare.get(snap.id).configs[0]).get("server_id") and c, 30,
                         "the first server to start")
        assert services.servers.get(row["server_id"]).state == ServerState.STARTING.value
        services.compare.cancel(snap.id)
        assert services.compare.wait_for(snap.id, ENDED, 60).state == JobState.CANCELLED.value
        wait_until(lambda: services.servers.get(row["server_id"]).state == ServerState.STOPPED.value, 30,
                   "the half-started server to stop")
        assert [s.state for s in services.servers.snapshots()] == [ServerState.STOPPED.value]
    finally:
        services.close()


def test_kept_servers_sleep_while_the_next_runs(compare_services: Services, settings: Settings):
    request = CompareRequest(configs=(config(settings, "none"), config(settings, "int8")), concurrency=(1,),
                             requests_per_level=150, max_new_tokens=16, answers=0, quality="none",
                             keep_servers=True)
    snap = compare_services.compare.submit(request)
    wait_until(lambda: compare_services.compare.get(snap.id).configs[1].get("status") == "measuring", 60,
               "the second configuration")
    first = compare_services.servers.get(compare_services.compare.get(snap.id).configs[0]["server_id"])
    assert is_sleeping(first.base_url)
    done = compare_services.compare.wait_for(snap.id, ENDED, 120)
    assert done.state == JobState.SUCCEEDED.value
    for c in done.configs:  # kept, and awake again
        server = compare_services.servers.get(c["server_id"])
        assert server.state == ServerState.READY.value and not is_sleeping(server.base_url)


# --- refusals: nothing started, nothing stored ------------------------------------------------------------
def test_bad_requests_are_refused_with_the_field_named(compare_services: Services, settings: Settings,
                                                       tmp_path: Path):
    compare = compare_services.compare
    cases = {
        "configs": CompareRequest(configs=(config(settings),)),
        "concurrency": CompareRequest(configs=(config(settings), config(settings, "int8")), concurrency=(0, 9999)),
        "requests_per_level": CompareRequest(configs=(config(settings), config(settings, "int8")),
                                             requests_per_level=10**9),
        "baseline": CompareRequest(configs=(config(settings), config(settings, "int8")), baseline=5),
        "workload": CompareRequest(configs=(config(settings), config(settings, "int8")), workload="/etc/passwd"),
    }
    for name, request in cases.items():
        errors = compare.submit(request)
        assert isinstance(errors, list) and name in {e.field for e in errors}, (name, errors)
    bad = settings.model_roots[0] / "bad prompts; rm -rf.jsonl"
    bad.write_text('{"prompt": "fine"}\n{not json\n', encoding="utf-8")
    errors = compare.submit(CompareRequest(configs=(config(settings), config(settings, "int8")),
                                           workload=str(bad)))
    assert errors[0].field == "workload" and errors[0].params.get("line") in (2, "2")
    turbo = CompareRequest(configs=(config(settings), CompareConfig(spec=ServerSpec(
        model_path=str(settings.model_roots[0] / MODEL_NAME), backend="turbomind", kv_policy="turbo_quant"))))
    errors = compare.submit(turbo)
    assert errors[0].field == "configs" and errors[0].params["config"] == "2"
    missing = CompareRequest(configs=(config(settings), CompareConfig(server_id="nope")))
    assert compare.submit(missing)[0].key == "compare.err.not_ready"
    exposed = CompareRequest(configs=(config(settings), CompareConfig(spec=replace(
        spec(settings), host="0.0.0.0", api_keys=("sk-secret",)))))
    assert [e.key for e in compare.submit(exposed)] == ["compare.err.config_exposed"]
    unsorted = CompareRequest(configs=(config(settings), config(settings, "int8")), concurrency=(8, 1, 1))
    assert "compare.err.levels_order" in [e.key for e in compare.submit(unsorted)]
    for bad in ({"model_path": "/m", "tp": "2"}, {"model_path": "/m", "extra_args": ["--x"]},
                {"model_path": 5}, {"model_path": "/m", "no_such_option": 1}):
        with pytest.raises(ValueError):
            CompareConfig.from_json_dict(bad)
    assert compare.snapshots() == [] and compare_services.servers.snapshots() == []


def test_refused_while_a_quantization_job_holds_the_gpu(compare_services: Services, settings: Settings):
    services = compare_services
    held: set[int] = {0}  # the GPUs a quantization job runs on
    busy = CompareManager(services.store, services.supervisor, services.servers, services.memory.sampler,
                          services.roots, settings.jobs_dir, gpu_busy=lambda gpus: sorted(gpus & held))
    errors = busy.submit(CompareRequest(configs=(config(settings), config(settings, "int8"))))  # GPU 0: tp 1
    assert [(e.key, e.params) for e in errors] == [("compare.err.gpu_job", {"gpus": "0"})]
    assert busy.snapshots() == []
    held.clear()
    held.add(1)  # a job on GPU 1 distorts nothing on GPU 0: the request is read on (and refused for its order)
    unsorted = CompareRequest(configs=(config(settings), config(settings, "int8")), concurrency=(8, 1))
    assert [e.key for e in busy.submit(unsorted)] == ["compare.err.levels_order"] and busy.snapshots() == []
    # a server attached on another machine (TEST-NET-2 and -3 addresses, not this machine's) holds none of this
    # machine's GPUs; one attached on the loopback may hold GPU 0
    held.clear()
    held.add(0)
    remote = [services.servers.attach(f"http://{ip}:23333").id for ip in ("198.51.100.7", "203.0.113.9")]
    local = services.servers.attach(f"http://127.0.0.1:{suggest_port(24600)}").id
    errors = busy.submit(CompareRequest(configs=tuple(CompareConfig(server_id=r) for r in remote)))
    assert [(e.key, e.params.get("server")) for e in errors] == [("compare.err.not_ready", r) for r in remote]
    errors = busy.submit(CompareRequest(configs=(CompareConfig(server_id=local), CompareConfig(server_id=remote[0]))))
    assert [(e.key, e.params) for e in errors] == [("compare.err.gpu_job", {"gpus": "0"})]


def test_one_comparison_at_a_time(compare_services: Services, settings: Settings):
    request = CompareRequest(configs=(config(settings), config(settings, "int8")), concurrency=(1,),
                             requests_per_level=2000, answers=0, quality="none")
    first = compare_services.compare.submit(request)
    second = compare_services.compare.submit(request)
    assert isinstance(second, list) and second[0].key == "compare.err.busy"
    compare_services.compare.cancel(first.id)
    compare_services.compare.wait_for(first.id, ENDED, 60)


def test_the_usual_grid():
    grid = usual_grid("/m/orig", "/m/orig-awq", backend="pytorch")
    assert [c.label for c in grid][:3] == ["orig · KV none", "orig · KV int8", "orig · KV int4"]
    assert len(grid) == 8 and {c.spec.model_format for c in grid} == {"auto", "awq"}
    assert {c.spec.kv_policy for c in grid} >= {"none", "int8", "int4", "fp8", "turbo_quant"}
    turbomind = usual_grid("/m/orig", "/m/orig-awq", backend="turbomind")
    assert len(turbomind) == 6 and {c.spec.kv_policy for c in turbomind} == {"none", "int8", "int4"}
    assert len(usual_grid("/m/orig", "", backend="turbomind")) == 3


# --- llama.cpp's server: two configurations of a real model on the CPU -------------------------------------
def start_llama_server(tmp_path: Path, n_ctx: int, threads: int) -> tuple[subprocess.Popen, str]:
    """A second llama.cpp server (the session's `chat_server` is the first), one request at a time like it."""
    gguf = smollm2_gguf()
    port = suggest_port(18600 + os.getpid() % 100)
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port",
            str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--seed", "0", "--verbose", "False",
            "--interrupt_requests", "False"]
    log = (tmp_path / "llama2.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # noqa: S603
    return proc, f"http://127.0.0.1:{port}"


def test_two_llama_cpp_configurations(chat_server, bare_settings: Settings, tmp_path: Path):
    proc, url = start_llama_server(tmp_path, n_ctx=2048, threads=1)
    services = Services.build(bare_settings)
    # short prompts of the user's own (ShareGPT and plain lines): SmolLM2 reads a long passage slowly on 2 cores
    workload = bare_settings.state_dir / "my prompts.jsonl"
    workload.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in (
        {"conversations": [{"from": "human", "value": "Name a colour."}]},
        {"prompt": "What is 2 + 2?"}, {"prompt": "用一句话介绍长城。"},
        {"messages": [{"role": "user", "content": "Say hello."}]})), encoding="utf-8")
    try:
        first = services.servers.attach(chat_server.base_url, chat_server.api_key)
        second = services.servers.attach(url)
        for server in (first, second):
            services.servers.wait_for(server.id, {ServerState.READY.value}, 90)
        request = CompareRequest(configs=(CompareConfig(label="ctx 4096", server_id=first.id),
                                          CompareConfig(label="ctx 2048 · 1 thread", server_id=second.id)),
                                 workload=str(workload), concurrency=(1, 2), requests_per_level=3, max_new_tokens=8,
                                 answers=1)
        snap = services.compare.submit(request)
        assert not isinstance(snap, list), snap
        done = services.compare.wait_for(snap.id, ENDED, 240)
        assert done.state == JobState.SUCCEEDED.value, done
        for c in done.configs:
            assert c["status"] == "done", c
            assert all(lv["ok"] == 3 and lv["output_tokens"] > 0 for lv in c["levels"])
            assert c["perplexity"] == {"available": False, "reason": "no_endpoint"}  # not an error
            assert c["gpu_blocks"] is None and c["peak_kv_usage"] is None
            assert c["answers"][0]
        assert deltas(done.configs, 0)[1]["output_tps_pct"] is not None
    finally:
        services.close()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


# --- pure pieces --------------------------------------------------------------------------------------------
def test_the_quality_text_goes_in_pieces_under_the_session_length():
    text = quality_text("sample")
    pieces = text_chunks(text)
    assert "".join(pieces) == text and max(len(p) for p in pieces) <= 1010 and len(pieces) >= 9
    assert text_chunks("a" * 2500, 1000) == ["a" * 1000, "a" * 1000, "a" * 500]
    assert text_chunks("One. Two.\n\nThree.", 6) == ["One.", " Two.\n\n", "Three."]


def test_kv_usage_from_metrics_text():
    text = ('# TYPE lmdeploy:gpu_cache_usage_perc gauge\n'
            'lmdeploy:gpu_cache_usage_perc{engine="0",model_name="m"} 0.125\n'
            'lmdeploy:gpu_cache_usage_perc{engine="1",model_name="m"} 0.5\n'
            'lmdeploy:num_requests_running{engine="0"} 3.0\n')
    assert parse_kv_usage(text) == 0.5
    assert parse_kv_usage("python_gc_objects_collected_total 1.0\n") is None


def test_level_statistics():
    records = [RequestRecord(0, 0.0, 1.0, ttft=0.1, last_token=1.0, output_tokens=10),
               RequestRecord(1, 0.0, 2.0, ttft=0.3, last_token=2.0, output_tokens=18),
               RequestRecord(2, 0.5, 0.6, error="HTTP 503: sleeping")]
    stats = summarize(records, 2)
    assert stats.ok == 2 and stats.errors == 1 and stats.wall_s == 2.0
    assert stats.output_tps == 14.0 and stats.rps == 1.0
    assert stats.ttft_p50_ms == pytest.approx(200.0)
    assert stats.itl_p50_ms == pytest.approx((100.0 + 100.0) / 2)  # (1.0-0.1)/9 and (2.0-0.3)/17
    assert stats.first_errors == ("HTTP 503: sleeping",)
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([], 50) is None


def test_level_spec_round_trip_and_a_cut_record_file(tmp_path: Path):
    level = LevelSpec("http://x", "m", (({"role": "user", "content": "你好"},),), 1, 8, seed=3)
    assert LevelSpec.from_json(level.to_json()) == level
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps({"index": 0, "start": 0, "end": 1, "ttft": 0.1, "last_token": 1,
                                "output_tokens": 2}) + "\n{\"index\": 1, \"sta", encoding="utf-8")
    assert [r.index for r in read_records(path)] == [0]


# --- placement: a quantization job on another GPU ------------------------------------------------------------
STAND_IN_AWQ = Path(__file__).resolve().parent / "stand_in_awq_worker.py"


def test_a_job_blocks_only_a_comparison_on_its_gpu_and_its_memory_is_not_counted(
        settings: Settings, stand_in_nvml: StandInNvml) -> None:
    """Two GPUs (NVML stand-in); a real stand-in AWQ worker RUNNING on GPU 1, through the console's own wiring."""
    services = Services.build(settings, argv_factory=fake_argv_factory(),
                              job_argv=lambda job_file: [sys.executable, str(STAND_IN_AWQ), str(job_file), "60", "0"])
    try:
        job = services.jobs.submit(AwqSpec(model_path=str(settings.model_roots[0] / MODEL_NAME), calib_source="none",
                                           device="cuda", gpu=1, dtype="float16"))
        assert job.errors == () and job.job is not None, job.errors
        services.jobs.wait_for(job.job.id, {"RUNNING"}, 20)
        on_1 = CompareRequest(configs=(CompareConfig(spec=replace(spec(settings), gpus=(1,))),
                                       CompareConfig(spec=replace(spec(settings, "int8"), gpus=(1,)))))
        assert [(e.key, e.params) for e in services.compare.submit(on_1)] == [("compare.err.gpu_job", {"gpus": "1"})]
        on_0 = CompareRequest(configs=(config(settings), config(settings, "int8")), concurrency=(8, 1))  # GPU 0
        assert [e.key for e in services.compare.submit(on_0)] == ["compare.err.levels_order"]  # read on: not busy

        started = services.servers.start(replace(spec(settings), gpus=(0,), port=suggest_port(24400)))
        assert started.server is not None, started.errors
        services.servers.wait_for(started.server.id, {ServerState.READY.value}, 60)
        since = time.time()
        stand_in_nvml.used = {0: 3 << 30, 1: 40 << 30}  # the job's 40 GiB sit on GPU 1
        services.memory.sampler.tick()
        peak = services.compare._peak_memory(started.server.id, since - 0.01)
        assert peak["peak_gpu_bytes"] == 3 << 30  # GPU 0's alone (both GPUs would read 43 GiB)
        # a server attached on another machine: none of this machine's memory is its (the whole of it was read)
        remote = services.servers.attach("http://198.51.100.7:23333")
        assert services.compare._peak_memory(remote.id, since - 0.01) == {"peak_gpu_bytes": None,
                                                                          "peak_server_bytes": None}
    finally:
        for snap in services.jobs.snapshots():
            services.jobs.cancel(snap.id)
        services.close()
