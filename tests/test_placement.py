"""GPU placement of servers: which GPUs a server sees (its real environment), the checks against the GPUs present
and tp, the executor for tp > 1, and the command preview that shows the environment it runs in."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import MODEL_NAME, STAND_IN_UUIDS, StandInNvml, fake_argv_factory
from webui.i18n.catalog import Catalog
from webui.services.container import Services
from webui.services.placement import (
    UsableGpus,
    check_gpus,
    parse_gpus,
    placement_env,
    ray_importable,
    resolve_executor,
    usable_gpus,
)
from webui.services.serve_spec import CheckedSpec, FieldError, ServerSpec, build_argv, command_preview, suggest_port
from webui.services.server_states import ServerState
from webui.settings import Settings


def spec_for(settings: Settings, **values: object) -> ServerSpec:
    return ServerSpec(model_path=str(settings.model_roots[0] / MODEL_NAME), **values)  # type: ignore[arg-type]


def fields(errors: object) -> dict[str, str]:
    assert isinstance(errors, list), errors
    return {e.field: e.key for e in errors}


@pytest.mark.parametrize(("given", "expected"), [
    ("", ()), (None, ()), ("0", (0,)), ("0,1", (0, 1)), (" 1 , 0 ", (1, 0)), ("2 3", (2, 3)), ([1, 0], (1, 0)),
    ("[0, 1]", (0, 1)), ("[]", ()), (" [ 3 ] ", (3,)),  # a JSON list that an API client's text field made text
])
def test_gpu_lists_that_read(given: object, expected: tuple[int, ...]) -> None:
    assert parse_gpus(given) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("given", "key"), [
    ("a", "errors.gpus_syntax"), ("0;rm -rf /", "errors.gpus_syntax"), ("-1", "errors.gpus_syntax"),
    ("0,,1", "errors.gpus_syntax"), ("99999", "errors.gpus_syntax"), ("1,1", "errors.gpus_repeated"),
    ([True], "errors.gpus_syntax"), (["0"], "errors.gpus_syntax"), ("['0']", "errors.gpus_syntax"),
    ("[0, 1", "errors.gpus_syntax"), ("[[0]]", "errors.gpus_syntax"), ("[0,,1]", "errors.gpus_syntax"),
])
def test_gpu_lists_that_do_not(given: object, key: str) -> None:
    error = parse_gpus(given)  # type: ignore[arg-type]
    assert isinstance(error, FieldError) and (error.field, error.key) == ("gpus", key)


def test_checks_against_the_gpus_present_and_tp() -> None:
    assert check_gpus((0, 1), 2, tp=2) == []
    assert check_gpus((), 0, tp=4) == []  # no choice: tp is checked on its own
    assert fields(check_gpus((2,), 2, tp=1)) == {"gpus": "errors.gpus_missing"}
    assert check_gpus((2,), 2, tp=1)[0].params == {"missing": "2", "present": "0, 1"}
    assert fields(check_gpus((0,), 2, tp=2)) == {"gpus": "errors.gpus_tp"}
    assert check_gpus((7,), None, tp=1) == []  # NVML absent: only the shape can be checked
    assert placement_env((1, 0)) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1,0"}
    assert placement_env(()) == {}


@pytest.mark.parametrize(("executor", "tp", "backend", "ray_ok", "expected"), [
    ("auto", 1, "pytorch", False, (None, "")),  # one GPU: LMDeploy's uni executor, nothing to choose
    ("auto", 2, "turbomind", False, (None, "")),  # TurboMind runs its ranks itself
    ("auto", 2, "pytorch", True, (None, "")),  # LMDeploy's own choice: ray
    ("auto", 2, "pytorch", None, (None, "")),  # unknown: LMDeploy's own choice
    ("auto", 2, "pytorch", False, ("mp", "serve.note.executor_mp_fallback")),
    ("ray", 2, "pytorch", False, ("ray", "")),  # asked for: passed on (LMDeploy says what is missing)
    ("mp", 4, "pytorch", True, ("mp", "")),
])
def test_executor(executor: str, tp: int, backend: str, ray_ok: bool | None, expected: tuple) -> None:
    assert resolve_executor(executor, tp, backend, ray_ok) == expected


def test_ray_is_looked_for_in_the_interpreter_that_runs_lmdeploy(tmp_path: Path) -> None:
    assert ray_importable(sys.executable) is (importlib.util.find_spec("ray") is not None)
    assert ray_importable(str(tmp_path / "no-python")) is None


def test_argv_and_preview_for_every_combination(tmp_path: Path) -> None:
    model = tmp_path / "m"
    combinations = [((), 1, "turbomind", "auto", None), ((1,), 1, "pytorch", "auto", None),
                    ((0, 1), 2, "pytorch", "auto", False), ((1, 0), 2, "pytorch", "ray", False),
                    ((0, 1), 2, "turbomind", "mp", False), ((0, 1), 2, "pytorch", "auto", True)]
    for gpus, tp, backend, executor, ray_ok in combinations:
        spec = ServerSpec(model_path=str(model), gpus=gpus, tp=tp, backend=backend, executor=executor)
        argv = build_argv(CheckedSpec(spec, model), "python", ray_ok)
        preview = command_preview(spec, str(model), ray_ok)
        flag = resolve_executor(executor, tp, backend, ray_ok)[0]
        if flag:
            assert argv[argv.index("--distributed-executor-backend") + 1] == flag
            assert f"--distributed-executor-backend {flag}" in preview
        else:
            assert "--distributed-executor-backend" not in argv and "--distributed-executor-backend" not in preview
        assert argv[argv.index("--tp") + 1] == str(tp)
        first = preview.splitlines()[0]
        if gpus:
            assert first.startswith(f"CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES={','.join(map(str, gpus))} "
                                    "lmdeploy serve api_server"), first
        else:
            assert first.startswith("lmdeploy serve api_server"), first
        assert not any("CUDA_VISIBLE_DEVICES" in a for a in argv)  # the environment, never an argument


def test_the_executor_flag_belongs_to_the_form(settings: Settings, stand_in_nvml: StandInNvml) -> None:
    services = Services.build(settings, argv_factory=fake_argv_factory())
    try:
        spec = spec_for(settings, extra_args="--distributed-executor-backend ray", port=suggest_port(24100))
        assert fields(services.servers.check(spec)) == {"extra_args": "errors.extra_form_flag"}
    finally:
        services.close()


def test_a_server_sees_only_its_gpus(settings: Settings, stand_in_nvml: StandInNvml) -> None:
    """Two GPUs (NVML stand-in: there is no GPU here); the stand-in server is a real child whose environment is read
    back from the OS."""
    services = Services.build(settings, argv_factory=fake_argv_factory())
    try:
        port = suggest_port(24200)
        refused = services.servers.start(spec_for(settings, gpus="5", port=port))
        assert [(e.field, e.key) for e in refused.errors] == [("gpus", "errors.gpus_missing")]
        refused = services.servers.start(spec_for(settings, gpus="0", tp=2, port=port))
        assert {e.field: e.key for e in refused.errors} == {"gpus": "errors.gpus_tp"}
        refused = services.servers.start(spec_for(settings, gpus="0", executor="dask", port=port))
        assert {e.field: e.key for e in refused.errors} == {"executor": "errors.choice"}
        assert services.servers.snapshots() == []  # nothing stored, nothing spawned

        started = services.servers.start(spec_for(settings, gpus="1", port=port))
        assert not started.errors and started.server is not None
        server = services.servers.wait_for(started.server.id, {ServerState.READY.value}, 60)
        env = psutil.Process(server.pid).environ()
        assert (env["CUDA_VISIBLE_DEVICES"], env["CUDA_DEVICE_ORDER"]) == ("1", "PCI_BUS_ID")
        assert server.gpus == (1,) and server.as_dict()["gpus"] == (1,)
        assert server.command.startswith("CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=1 lmdeploy serve")
        start_event = next(e for e in services.store.events(server.id) if e.kind == "start")
        assert "CUDA_VISIBLE_DEVICES=1" in start_event.detail

        # a server started without a choice sees what the console sees
        other = services.servers.start(spec_for(settings, port=suggest_port(port + 1)))
        assert other.server is not None
        other_pid = services.servers.wait_for(other.server.id, {ServerState.READY.value}, 60).pid
        assert psutil.Process(other_pid).environ().get("CUDA_VISIBLE_DEVICES") == \
            psutil.Process().environ().get("CUDA_VISIBLE_DEVICES")
    finally:
        services.close()


def test_a_spec_stored_with_the_executor_in_extra_arguments_still_starts() -> None:
    """Before the form had an Executor, the flag went in extra arguments; the form now refuses it there."""
    old = {"model_path": "/m", "tp": 2, "extra_args": "--enable-prefix-caching --distributed-executor-backend mp"}
    spec = ServerSpec.from_json_dict(old)
    assert (spec.executor, spec.extra_args) == ("mp", "--enable-prefix-caching")
    spec = ServerSpec.from_json_dict({"model_path": "/m", "extra_args": "--distributed-executor-backend=uni"})
    assert (spec.executor, spec.extra_args) == ("auto", "")
    kept = {"model_path": "/m", "executor": "ray", "extra_args": "--dtype float16"}
    assert ServerSpec.from_json_dict(kept) == ServerSpec(model_path="/m", executor="ray", extra_args="--dtype float16")


ALIKE = ("NVIDIA H200", "NVIDIA H200", "NVIDIA H200")
UUIDS = ("GPU-aaaa1111-0000", "GPU-bbbb2222-0000", "GPU-cccc3333-0000")


@pytest.mark.parametrize(("limit", "order", "names", "indices", "spelled"), [
    (None, "", ALIKE, (0, 1, 2), ("0", "1", "2")),  # no limit: every GPU NVML lists
    ("2,0", "", ALIKE, (2, 0), ("2", "0")),  # alike GPUs: fastest-first is bus order
    ("1", "PCI_BUS_ID", ("A", "B", "C"), (1,), ("1",)),
    ("GPU-bbbb", "", ("A", "B", "C"), (1,), ("GPU-bbbb",)),  # a unique UUID prefix, kept as given
    (" gpu-cccc3333-0000 , 0", "", ALIKE, (2, 0), ("gpu-cccc3333-0000", "0")),
    ("0,7,1", "", ALIKE, (0,), ("0",)),  # CUDA stops at the first entry that names no GPU
    ("1,1,2", "", ALIKE, (1,), ("1",)),  # ... or one named already
    ("GPU-", "", ALIKE, (), ()),  # a prefix of every UUID names none
    ("\u00b2", "", ALIKE, (), ()),  # a superscript two is a digit to Python, not to CUDA
    ("", "", ALIKE, (), ()),  # set and empty: CUDA sees no GPU
    ("-1", "", ALIKE, (), ()),
])
def test_the_consoles_own_limit_read_as_cuda_reads_it(limit: str | None, order: str, names: tuple[str, ...],
                                                       indices: tuple[int, ...], spelled: tuple[str, ...]) -> None:
    usable = usable_gpus(limit, order, UUIDS, names)
    assert not usable.opaque and usable.indices == indices
    assert tuple(usable.spelling.get(i, str(i)) for i in indices) == spelled


@pytest.mark.parametrize(("limit", "order", "names", "key"), [
    ("MIG-4f2a-0000", "", ALIKE, "errors.gpus_limit_mig"),
    ("0,1", "FASTEST_FIRST", ("A100", "T4", "T4"), "errors.gpus_limit_order"),  # numbers that are not NVML's
])
def test_a_limit_that_cannot_be_mapped_allows_no_choice(limit: str, order: str, names: tuple[str, ...],
                                                        key: str) -> None:
    usable = usable_gpus(limit, order, UUIDS, names)
    assert usable.opaque == key and usable.count is None
    assert [(e.field, e.key, e.params["limit"]) for e in check_gpus((0,), usable)] == [("gpus", key, limit)]
    assert check_gpus((), usable) == []  # no choice: the child keeps the console's devices
    assert placement_env((0,), usable) == {}


def test_a_choice_outside_the_limit_is_refused_and_one_inside_is_spelled_as_the_console_spells_it() -> None:
    usable = usable_gpus("GPU-cccc,1", "", UUIDS, ALIKE)
    [error] = check_gpus((0, 2), usable, tp=2)
    assert (error.key, error.params) == ("errors.gpus_outside_limit",
                                         {"missing": "0", "present": "2, 1", "limit": "GPU-cccc,1"})
    assert check_gpus((1, 2), usable, tp=2) == []
    assert placement_env((1, 2), usable) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1,GPU-cccc"}
    assert placement_env((1, 2), UsableGpus((0, 1, 2))) == placement_env((1, 2)) == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1,2"}


def test_a_console_started_with_cuda_visible_devices_keeps_its_servers_inside(
        settings: Settings, stand_in_nvml: StandInNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator limited the console to GPU 1 by UUID; NVML (the stand-in) still lists both GPUs."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", STAND_IN_UUIDS[1])
    limited = Settings(state_dir=settings.state_dir, model_roots=settings.model_roots)  # read from the environment
    assert limited.cuda_visible_devices == STAND_IN_UUIDS[1]
    services = Services.build(limited, argv_factory=fake_argv_factory())
    try:
        port = suggest_port(24300)
        refused = services.servers.start(spec_for(settings, gpus="0", port=port))
        assert [(e.field, e.key) for e in refused.errors] == [("gpus", "errors.gpus_outside_limit")]
        message = Catalog.load().text(refused.errors[0].key, "en", **refused.errors[0].params)
        assert message.startswith(f"GPU 0 is outside the GPUs this console was started with "
                                  f"(CUDA_VISIBLE_DEVICES={STAND_IN_UUIDS[1]}): choose among 1,"), message
        refused = services.servers.start(spec_for(settings, tp=2, port=port))  # one GPU is usable, not two
        assert [(e.field, e.key) for e in refused.errors] == [("tp", "errors.tp_too_large")]
        assert services.servers.snapshots() == []  # nothing stored, nothing spawned
        preview = services.servers.preview(spec_for(settings, gpus="1", port=port))
        assert preview.startswith(f"CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES={STAND_IN_UUIDS[1]} lmdeploy")

        started = services.servers.start(spec_for(settings, gpus="1", port=port))
        assert not started.errors and started.server is not None
        server = services.servers.wait_for(started.server.id, {ServerState.READY.value}, 60)
        assert psutil.Process(server.pid).environ()["CUDA_VISIBLE_DEVICES"] == STAND_IN_UUIDS[1]
        shown = f"CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES={STAND_IN_UUIDS[1]} lmdeploy serve"
        assert server.command.startswith(shown), server.command  # the table's command, as it ran
        start_event = next(e for e in services.store.events(server.id) if e.kind == "start")
        assert start_event.detail.startswith(shown), start_event.detail
        other = services.servers.start(spec_for(settings, port=suggest_port(port + 1)))  # no choice: the limit
        assert other.server is not None
        other_pid = services.servers.wait_for(other.server.id, {ServerState.READY.value}, 60).pid
        assert psutil.Process(other_pid).environ()["CUDA_VISIBLE_DEVICES"] == STAND_IN_UUIDS[1]
    finally:
        services.close()
