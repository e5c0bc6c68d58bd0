"""The multi-node Ray recipe (LMDeploy 0.18's guide, as argv and copyable lines) and the cluster status read from
LMDeploy's interpreter: without ray, against a real one-node Ray head, and against an address where nothing listens."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from webui.services.field_errors import FieldError
from webui.services.ray_cluster import (
    HEAD_NODE,
    OTHER_NODES,
    RayClusterSpec,
    RayRecipe,
    _status_from_report,
    build_recipe,
    check_cluster_fits,
    parse_address,
    ray_status,
)

HEAD_START_TIMEOUT_S = 90.0


def recipe(**changes: object) -> RayRecipe:
    values: dict[str, object] = {"head_host": "10.0.0.1", "nodes": 2, "gpus_per_node": 8,
                                 "model_path": "/models/internlm2_5-7b-chat"}
    values.update(changes)
    built = build_recipe(RayClusterSpec(**values))  # type: ignore[arg-type]
    assert isinstance(built, RayRecipe), built
    return built


def refusals(**changes: object) -> dict[str, str]:
    values: dict[str, object] = {"head_host": "10.0.0.1", "nodes": 2, "gpus_per_node": 8, "model_path": "/m"}
    values.update(changes)
    built = build_recipe(RayClusterSpec(**values))  # type: ignore[arg-type]
    assert isinstance(built, list), built
    return {e.field: e.key for e in built}




# --- the recipe ---------------------------------------------------------------------------------------------------


def test_two_nodes_of_eight_gpus_follow_lmdeploys_guide() -> None:
    built = recipe()
    assert built.tp == 16 and built.ray_address == "10.0.0.1:6379"
    assert built.base_url == "http://10.0.0.1:23333/v1"
    assert [s.where for s in built.steps] == [HEAD_NODE, OTHER_NODES, HEAD_NODE]
    assert [s.line for s in built.steps] == [
        "ray start --head --port 6379",
        "ray start --address 10.0.0.1:6379",
        "lmdeploy serve api_server /models/internlm2_5-7b-chat --backend pytorch --tp 16"
        " --distributed-executor-backend ray --server-port 23333",
    ]
    assert built.steps[2].argv[:4] == ("lmdeploy", "serve", "api_server", "/models/internlm2_5-7b-chat")
    assert all(s.env == () for s in built.steps)
    assert [s.note_key for s in built.steps] == ["ray.step.head", "ray.step.join", "ray.step.serve"]
    assert built.steps[1].note_params["model"] == "/models/internlm2_5-7b-chat"
    assert built.script.splitlines()[0] == "# head node"


def test_ports_name_interface_and_quoting_reach_every_line() -> None:
    built = recipe(head_host="gpu-head.lan", nodes=4, gpus_per_node=2, ray_port=6380, api_port=8000,
                   model_path="/data/my models/qwen's", model_name="qwen", socket_ifname="eth1")
    assert built.tp == 8
    head, join, serve = built.steps
    env = (("NCCL_SOCKET_IFNAME", "eth1"), ("GLOO_SOCKET_IFNAME", "eth1"))
    assert head.env == join.env == serve.env == env
    assert head.argv == ("ray", "start", "--head", "--port", "6380")
    assert head.line == "NCCL_SOCKET_IFNAME=eth1 GLOO_SOCKET_IFNAME=eth1 ray start --head --port 6380"
    assert join.argv == ("ray", "start", "--address", "gpu-head.lan:6380")
    assert serve.argv == ("lmdeploy", "serve", "api_server", "/data/my models/qwen's", "--backend", "pytorch",
                          "--tp", "8", "--distributed-executor-backend", "ray", "--server-port", "8000",
                          "--model-name", "qwen")
    assert "'/data/my models/qwen'\"'\"'s'" in serve.line  # shlex.join: pasted, it is one argument
    assert built.base_url == "http://gpu-head.lan:8000/v1"


def test_one_node_has_no_join_step_and_ipv6_is_bracketed() -> None:
    built = recipe(head_host="fd00::1", nodes=1, gpus_per_node=4)
    assert [s.where for s in built.steps] == [HEAD_NODE, HEAD_NODE]
    assert built.ray_address == "[fd00::1]:6379" and built.base_url == "http://[fd00::1]:23333/v1"
    assert built.steps[1].line.endswith("--tp 4 --distributed-executor-backend ray --server-port 23333")
    assert recipe(head_host="127.0.0.1", nodes=1, gpus_per_node=1).tp == 1  # one node may be this machine


def test_each_refusal_names_its_field() -> None:
    assert refusals(head_host="") == {"head_host": "ray.err.host"}
    assert refusals(head_host="head; rm -rf /") == {"head_host": "ray.err.host"}
    assert refusals(head_host="a b") == {"head_host": "ray.err.host"}
    assert refusals(head_host="$(id)") == {"head_host": "ray.err.host"}
    assert refusals(head_host="-head") == {"head_host": "ray.err.host"}
    assert refusals(head_host="300.1.1.1") == {"head_host": "ray.err.host"}
    assert refusals(head_host="0.0.0.0") == {"head_host": "ray.err.host_unspecified"}
    assert refusals(head_host="127.0.0.1") == {"head_host": "ray.err.host_loopback"}
    assert refusals(head_host="localhost") == {"head_host": "ray.err.host_loopback"}
    assert refusals(nodes=0) == {"nodes": "ray.err.count_range"}
    assert refusals(nodes=65) == {"nodes": "ray.err.count_range"}
    assert refusals(nodes=2.0) == {"nodes": "errors.not_whole_number"}
    assert refusals(nodes=True) == {"nodes": "errors.not_whole_number"}
    assert refusals(gpus_per_node=9) == {"gpus_per_node": "ray.err.count_range"}
    assert refusals(gpus_per_node=6) == {"gpus_per_node": "ray.err.tp_power_of_two"}
    assert refusals(nodes=3) == {"nodes": "ray.err.tp_power_of_two"}  # 3 × 8 = 24
    assert refusals(ray_port=80) == {"ray_port": "errors.port_range"}
    assert refusals(api_port=65536) == {"api_port": "errors.port_range"}
    assert refusals(api_port="23333") == {"api_port": "errors.port_range"}
    assert refusals(api_port=6379) == {"api_port": "ray.err.same_port"}
    assert refusals(model_path="") == {"model_path": "errors.model_required"}
    assert refusals(model_path="x" * 4097) == {"model_path": "errors.too_long"}
    assert refusals(model_path="/m\0") == {"model_path": "errors.nul_character"}
    assert refusals(model_path=" /m") == {"model_path": "errors.model_name_space"}
    assert refusals(model_path="--help") == {"model_path": "errors.path_invalid"}
    assert refusals(model_path=None) == {"model_path": "errors.not_text"}
    assert refusals(model_name="a\nb") == {"model_name": "errors.model_name_space"}
    assert refusals(socket_ifname="eth0; reboot") == {"socket_ifname": "ray.err.ifname"}
    assert refusals(socket_ifname="a-very-long-interface") == {"socket_ifname": "ray.err.ifname"}
    # Several at once, each field once.
    assert refusals(head_host="", nodes=0, gpus_per_node=3, model_path="", ray_port=1) == {
        "head_host": "ray.err.host", "nodes": "ray.err.count_range", "gpus_per_node": "ray.err.tp_power_of_two",
        "model_path": "errors.model_required", "ray_port": "errors.port_range"}
    assert recipe(model_path="x" * 4096).tp == 16


def test_addresses_are_checked_like_the_recipe() -> None:
    assert parse_address("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert parse_address("head-0") == ("head-0", 6379)
    assert parse_address("[::1]:7000") == ("::1", 7000)
    bad = {text: parse_address(text) for text in
           ("", "::1", "h:1", "h:65536", "h:x", "h:6379:1", "[h]:6379", "0.0.0.0:6379", "a b:6379", "h;x:6379")}
    assert {text: e.key for text, e in bad.items() if isinstance(e, FieldError)} == {
        "": "ray.err.address", "::1": "ray.err.address", "h:1": "errors.port_range", "h:65536": "errors.port_range",
        "h:x": "errors.port_range", "h:6379:1": "ray.err.address", "[h]:6379": "ray.err.address",
        "0.0.0.0:6379": "ray.err.host_unspecified", "a b:6379": "ray.err.host", "h;x:6379": "ray.err.host"}


def test_an_invalid_address_runs_nothing() -> None:
    status = ray_status("/nonexistent/python", "head;reboot:6379")
    assert status.state == "invalid" and [e.field for e in status.errors] == ["address"]
    assert status.key == "ray.err.host"


def test_a_missing_interpreter_is_a_result() -> None:
    status = ray_status("/nonexistent/python", "127.0.0.1:6379")
    assert status.state == "error" and status.key == "ray.status.no_python"


def test_the_report_becomes_typed_nodes_and_totals() -> None:
    """The child's report as a two-node cluster gives it (one node gone), in the order the page shows."""
    report = {"state": "ok", "ray_version": "2.60.0", "cluster_ray_version": "2.59.0", "nodes": [
        {"node_id": "b", "ip": "10.0.0.2", "hostname": "n2", "alive": False, "total": {"GPU": 8.0, "CPU": 64.0},
         "available": None},
        {"node_id": "a", "ip": "10.0.0.1", "hostname": "n1", "alive": True,
         "total": {"GPU": 8.0, "CPU": 64.0, "node:__internal_head__": 1.0}, "available": {"GPU": 6.0, "CPU": 60.0}},
        "junk"]}
    status = _status_from_report(report, "10.0.0.1:6379", "10.0.0.1:6379", "python", 0.5)
    assert status.ok and [n.node_id for n in status.nodes] == ["a", "b"]
    head, gone = status.nodes
    assert head.head and head.alive and head.gpus_available == 6.0 and head.cpus_total == 64.0
    assert not gone.alive and gone.gpus_available is None
    assert (status.gpus_total, status.gpus_available, status.cpus_total) == (8.0, 6.0, 64.0)
    assert [key for key, _ in status.notes] == ["ray.status.version_mismatch"]
    fits = check_cluster_fits(recipe(), status)
    assert [(e.key, e.params) for e in fits] == [
        ("ray.fit.nodes", {"alive": "1", "nodes": "2"}), ("ray.fit.gpus", {"available": "6", "total": "8", "tp": "16"})]


# --- an interpreter without ray --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def python_without_ray() -> Iterator[str]:
    """A bare venv (no pip, no site-packages of ours): `import ray` fails there whatever this venv holds."""
    folder = Path(tempfile.mkdtemp(prefix="noray"))
    venv.EnvBuilder(with_pip=False, symlinks=True).create(folder)
    python = folder / "bin" / "python"
    yield str(python)
    shutil.rmtree(folder, ignore_errors=True)


def test_an_interpreter_without_ray_says_so_with_the_install_command(python_without_ray: str) -> None:
    assert subprocess.run([python_without_ray, "-c", "import ray"], capture_output=True).returncode != 0
    status = ray_status(python_without_ray, "127.0.0.1:6379")
    assert status.state == "no_ray" and status.key == "ray.status.no_ray"
    assert status.install_argv == (python_without_ray, "-m", "pip", "install", "ray")
    assert status.install_line == f"{python_without_ray} -m pip install ray"
    assert status.params["command"] == status.install_line and not status.nodes


# --- a real Ray head ------------------------------------------------------------------------------------------------

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray is not installed in this interpreter (LMDeploy 0.18 and the tests extra "
                                      "install it): the real one-node cluster cannot be started")


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """`ray start --head --block` with 1 CPU and no GPU in its own session and temp folder, on a free port;
    ended by killing its process group (never `ray stop`, which stops every Ray on the machine)."""
    ray = Path(sys.executable).parent / "ray"
    if not ray.exists():
        pytest.skip(f"no `ray` command beside {sys.executable}")
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="rayh"))  # short: Ray's socket paths must fit in 107 bytes
    log_path = folder / "ray.log"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - a fixed argv
            [str(ray), "start", "--head", "--port", str(port), "--num-cpus", "1", "--num-gpus", "0",
             "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(folder / "t"), "--block"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=folder, env=env,
            start_new_session=True)
    try:
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while "Ray runtime started" not in log_path.read_text(errors="replace"):
            assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


@needs_ray
def test_a_real_one_node_head(ray_head: str) -> None:
    status = ray_status(sys.executable, ray_head)
    assert status.ok, (status.key, dict(status.params))
    assert len(status.nodes) == 1 and len(status.alive_nodes) == 1
    node = status.nodes[0]
    assert node.head and node.alive and node.node_id and node.ip
    assert (node.gpus_total, node.gpus_available, node.cpus_total, node.cpus_available) == (0.0, 0.0, 1.0, 1.0)
    assert (status.gpus_total, status.gpus_available, status.cpus_total) == (0.0, 0.0, 1.0)
    import ray

    assert status.ray_version == ray.__version__ == status.cluster_ray_version and status.notes == ()
    assert status.elapsed_s < 20
    one_gpu = recipe(head_host="127.0.0.1", nodes=1, gpus_per_node=1)
    assert [e.key for e in check_cluster_fits(one_gpu, status)] == ["ray.fit.gpus"]


@needs_ray
def test_nothing_listening_is_a_result_not_an_exception() -> None:
    status = ray_status(sys.executable, f"127.0.0.1:{free_port()}")
    assert status.state == "unreachable" and status.key == "ray.status.refused", (status.key, dict(status.params))
    assert status.params["address"].startswith("127.0.0.1:") and status.elapsed_s < 20
    assert check_cluster_fits(recipe(), status)[0].key == "ray.status.refused"


@needs_ray
def test_an_open_port_that_is_not_ray_times_out() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        status = ray_status(sys.executable, f"127.0.0.1:{port}", timeout_s=4)
    assert status.state == "timeout" and status.key == "ray.status.timeout"
    assert status.params["seconds"] == "4" and status.elapsed_s < 10
