"""Serving one model over several machines with Ray, as LMDeploy 0.18 documents it.

LMDeploy's guide (docs/en/advance/pytorch_multinodes.md) has three steps: `ray start --head --port P` on the head
node, `ray start --address HEAD:P` on every other node, then on the head `lmdeploy serve api_server MODEL --backend
pytorch --tp N`, N being every GPU of every node, with the model at the same path on each node. The PyTorch engine
joins the running cluster by itself (`ray.init` finds the local head, lmdeploy/pytorch/ray.py) and places one rank
per GPU. The recipe adds `--distributed-executor-backend ray`, the guide's way to make sure the engine uses that
cluster. The `--nnodes` and `--node-rank` options are not part of it: the PyTorch engine reads them only with
`--dp` > 1. NCCL and Gloo choose a network interface themselves; where they choose the wrong one, a named interface
goes in `NCCL_SOCKET_IFNAME` and `GLOO_SOCKET_IFNAME`, set when Ray starts on each node, because Ray's workers
inherit Ray's environment and not the api_server's.

The cluster is read from LMDeploy's interpreter (its `ray` may differ from the console's, or be absent) in a child
process with a deadline: `ray.init` in the console would make the console a Ray driver. The child reads the node
table from the head's GCS, the way `ray status` does, so it works from a machine that is not part of the cluster.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import shlex
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from webui.services.field_errors import FieldError
from webui.settings import host_port, is_loopback

DEFAULT_RAY_PORT = 6379
DEFAULT_API_PORT = 23333
MAX_NODES = 64
MAX_GPUS_PER_NODE = 8
MAX_MODEL_PATH = 4096
MAX_MODEL_NAME = 256
MAX_HOST = 253
HEAD_NODE = "head node"
OTHER_NODES = "every other node"
STATUS_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 3.0
INSTALL_PACKAGE = "ray"
SOCKET_ENV = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")
HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")  # a Linux interface name (IFNAMSIZ is 16 with its NUL)
ADDRESS = re.compile(r"^(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*))(?::(?P<port>[^:]*))?$")
PROBE_MARK = "LMDEPLOY_CONSOLE_RAY_PROBE "
# Run in LMDeploy's interpreter: argv is host, port, connect timeout. Prints one marked JSON line.
PROBE_SCRIPT = r"""
import json, os, socket, sys
sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]
host, port, connect_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def out(**fields):
    sys.stdout.write("\n" + MARK + json.dumps(fields) + "\n")
    sys.stdout.flush()
    sys.exit(0)
try:
    import ray
except Exception as exc:
    out(state="no_ray", reason=f"{type(exc).__name__}: {exc}"[:300])
version = str(getattr(ray, "__version__", ""))
try:
    socket.create_connection((host, port), timeout=connect_s).close()
except socket.gaierror as exc:
    out(state="unreachable", key="ray.status.unresolved", reason=str(exc)[:300], ray_version=version)
except ConnectionRefusedError as exc:
    out(state="unreachable", key="ray.status.refused", reason=str(exc)[:300], ray_version=version)
except OSError as exc:
    out(state="unreachable", key="ray.status.no_answer", reason=str(exc)[:300], ray_version=version)
address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
try:
    import ray._private.state as state
    from ray._raylet import GcsClientOptions
    options = GcsClientOptions.create(address, None, allow_cluster_id_nil=True, fetch_cluster_id_if_nil=False)
    state.state._initialize_global_state(options)
    table = state.state.node_table()
    available = state.state.available_resources_per_node()
except Exception as exc:
    out(state="error", reason=f"{type(exc).__name__}: {exc}"[:300], ray_version=version)
cluster_version = ""
try:
    from ray._raylet import GcsClient
    try:
        from ray._common.usage import usage_lib
    except ImportError:
        from ray._private.usage import usage_lib
    metadata = usage_lib.get_cluster_metadata(GcsClient(address=address)) or {}
    cluster_version = str(metadata.get("ray_version", ""))
except Exception:
    pass
nodes = [{"node_id": str(n.get("NodeID", "")), "ip": str(n.get("NodeManagerAddress", "")),
          "hostname": str(n.get("NodeManagerHostname", "")), "alive": bool(n.get("Alive")),
          "total": dict(n.get("Resources") or {}), "available": available.get(n.get("NodeID"))}
         for n in table]
out(state="ok", ray_version=version, cluster_ray_version=cluster_version, nodes=nodes)
""".replace("MARK", repr(PROBE_MARK))

STATES = ("ok", "invalid", "no_ray", "unreachable", "timeout", "error")


def _no_params() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class RayClusterSpec:
    """What a user tells about the cluster, as plain values; `build_recipe` checks them."""

    head_host: str
    nodes: int
    gpus_per_node: int
    model_path: str
    ray_port: int = DEFAULT_RAY_PORT
    api_port: int = DEFAULT_API_PORT
    model_name: str = ""  # `--model-name`: the id clients send (LMDeploy's default is the model path)
    socket_ifname: str = ""  # NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME on every node, e.g. eth0 ("" leaves it)

    @property
    def tp(self) -> int:
        """Every GPU of every node (0 while either count is not a whole number)."""
        if not (_whole(self.nodes) and _whole(self.gpus_per_node)):
            return 0
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class RecipeStep:
    """One command a user runs: where, its argv, the environment it needs and the line to copy."""

    where: str  # HEAD_NODE or OTHER_NODES
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    line: str  # what to paste in a shell: the environment, then shlex.join(argv)
    note_key: str  # catalog key that explains the step
    note_params: Mapping[str, str] = field(default_factory=_no_params)


@dataclass(frozen=True)
class RayRecipe:
    """The ordered steps for a checked spec; the address the other nodes join and the server clients use."""

    spec: RayClusterSpec
    tp: int
    ray_address: str  # HOST:PORT as `ray start --address` takes it
    base_url: str  # the api_server's OpenAI base URL, http://HOST:PORT/v1
    steps: tuple[RecipeStep, ...]

    @property
    def script(self) -> str:
        """Every line in order, each under a comment saying where it runs."""
        return "\n".join(f"# {step.where}\n{step.line}" for step in self.steps)


@dataclass(frozen=True)
class RayNode:
    """One node of the cluster as the head's GCS lists it (a node that left stays listed, not alive)."""

    node_id: str
    ip: str
    hostname: str
    alive: bool
    head: bool
    gpus_total: float
    gpus_available: float | None  # None: not reported (a node that left)
    cpus_total: float
    cpus_available: float | None


@dataclass(frozen=True)
class RayStatus:
    """What `ray_status` found; `state` is one of STATES and never an exception.

    ok: `nodes` and the totals are filled; invalid: `errors` says which field; no_ray: `install_argv`/`install_line`
    install ray into that interpreter; unreachable / timeout / error: `key` and `params` say why."""

    state: str
    address: str  # as given
    python: str
    key: str = ""  # catalog key of the message; "" when there is nothing to say
    params: Mapping[str, str] = field(default_factory=_no_params)
    errors: tuple[FieldError, ...] = ()
    install_argv: tuple[str, ...] = ()
    install_line: str = ""
    ray_version: str = ""  # of `ray` in `python`
    cluster_ray_version: str = ""  # of the cluster, as its head recorded it ("" when unknown)
    nodes: tuple[RayNode, ...] = ()
    gpus_total: float = 0.0  # alive nodes only
    gpus_available: float = 0.0
    cpus_total: float = 0.0
    cpus_available: float = 0.0
    elapsed_s: float = 0.0
    notes: tuple[tuple[str, Mapping[str, str]], ...] = ()  # (key, params) worth showing when ok

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    @property
    def alive_nodes(self) -> tuple[RayNode, ...]:
        return tuple(node for node in self.nodes if node.alive)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_host(host: object, field_name: str = "head_host") -> FieldError | None:
    """A host name (RFC 1123 labels) or an IPv4/IPv6 address that other machines can connect to."""
    text = host if isinstance(host, str) else ""
    if not text or len(text) > MAX_HOST:
        return FieldError(field_name, "ray.err.host", {"value": str(host)[:100]})
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        labels = text.rstrip(".").split(".") if text != "." else [""]
        if all(HOST_LABEL.match(label) for label in labels) and not labels[-1].isdigit():
            return None
        return FieldError(field_name, "ray.err.host", {"value": text[:100]})
    if ip.is_unspecified:
        return FieldError(field_name, "ray.err.host_unspecified", {"value": text})
    return None


def _port_error(value: object, field_name: str) -> FieldError | None:
    if not _whole(value) or not 1024 <= value <= 65535:  # type: ignore[operator]
        return FieldError(field_name, "errors.port_range", {"value": str(value)[:40]})
    return None


def _count_error(value: object, field_name: str, most: int) -> FieldError | None:
    if not _whole(value):
        return FieldError(field_name, "errors.not_whole_number", {"value": str(value)[:40], "example": "2"})
    if not 1 <= value <= most:  # type: ignore[operator]
        return FieldError(field_name, "ray.err.count_range", {"value": str(value), "min": "1", "max": str(most)})
    return None


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _text_errors(value: object, field_name: str, most: int, required: bool) -> FieldError | None:
    if not isinstance(value, str):
        return FieldError(field_name, "errors.not_text", {"kind": type(value).__name__})
    if not value:
        return FieldError(field_name, "errors.model_required", {}) if required else None
    if len(value) > most:
        return FieldError(field_name, "errors.too_long", {"length": f"{len(value):,}", "max": f"{most:,}"})
    if "\0" in value:
        return FieldError(field_name, "errors.nul_character", {})
    if value != value.strip() or any(c in value for c in "\r\n"):
        return FieldError(field_name, "errors.model_name_space", {})
    return None


def check_cluster_spec(spec: RayClusterSpec) -> list[FieldError]:
    """Every reason the recipe cannot be built, one per field at most; [] when it can."""
    errors: list[FieldError] = []
    host_error = check_host(spec.head_host)
    if host_error is not None:
        errors.append(host_error)
    nodes_error = _count_error(spec.nodes, "nodes", MAX_NODES)
    gpus_error = _count_error(spec.gpus_per_node, "gpus_per_node", MAX_GPUS_PER_NODE)
    if host_error is None and nodes_error is None and spec.nodes > 1 and is_loopback(spec.head_host.rstrip(".")):
        errors.append(FieldError("head_host", "ray.err.host_loopback", {"value": spec.head_host}))
    if gpus_error is None and not _power_of_two(spec.gpus_per_node):
        gpus_error = FieldError("gpus_per_node", "ray.err.tp_power_of_two", {
            "nodes": "1", "gpus": str(spec.gpus_per_node), "tp": str(spec.gpus_per_node)})
    if nodes_error is None and gpus_error is None and not _power_of_two(spec.tp):
        nodes_error = FieldError("nodes", "ray.err.tp_power_of_two", {
            "nodes": str(spec.nodes), "gpus": str(spec.gpus_per_node), "tp": str(spec.tp)})
    errors += [e for e in (nodes_error, gpus_error) if e is not None]
    ray_port_error = _port_error(spec.ray_port, "ray_port")
    api_port_error = _port_error(spec.api_port, "api_port")
    errors += [e for e in (ray_port_error, api_port_error) if e is not None]
    if ray_port_error is None and api_port_error is None and spec.ray_port == spec.api_port:
        errors.append(FieldError("api_port", "ray.err.same_port", {"port": str(spec.api_port)}))
    path_error = _text_errors(spec.model_path, "model_path", MAX_MODEL_PATH, required=True)
    if path_error is None and spec.model_path.startswith("-"):
        path_error = FieldError("model_path", "errors.path_invalid", {"path": spec.model_path[:200]})
    name_error = _text_errors(spec.model_name, "model_name", MAX_MODEL_NAME, required=False)
    errors += [e for e in (path_error, name_error) if e is not None]
    if not isinstance(spec.socket_ifname, str) or (spec.socket_ifname and not IFNAME.match(spec.socket_ifname)):
        errors.append(FieldError("socket_ifname", "ray.err.ifname", {"value": str(spec.socket_ifname)[:40]}))
    return errors


def _step(where: str, argv: list[str], env: tuple[tuple[str, str], ...], note_key: str,
          note_params: dict[str, str]) -> RecipeStep:
    prefix = "".join(f"{name}={shlex.quote(value)} " for name, value in env)
    return RecipeStep(where, tuple(argv), env, prefix + shlex.join(argv), note_key, MappingProxyType(note_params))


def build_recipe(spec: RayClusterSpec) -> RayRecipe | list[FieldError]:
    """The steps of LMDeploy's multi-node guide for `spec`, in order, or the field errors that stop it.

    With one node there is nobody to join: the steps are the head's two."""
    errors = check_cluster_spec(spec)
    if errors:
        return errors
    tp = spec.tp
    address = host_port(spec.head_host, spec.ray_port)
    base_url = f"http://{host_port(spec.head_host, spec.api_port)}/v1"
    env = tuple((name, spec.socket_ifname) for name in SOCKET_ENV) if spec.socket_ifname else ()
    steps = [_step(HEAD_NODE, ["ray", "start", "--head", "--port", str(spec.ray_port)], env, "ray.step.head",
                   {"host": spec.head_host, "port": str(spec.ray_port)})]
    if spec.nodes > 1:
        steps.append(_step(OTHER_NODES, ["ray", "start", "--address", address], env, "ray.step.join",
                           {"others": str(spec.nodes - 1), "model": spec.model_path, "address": address}))
    serve = ["lmdeploy", "serve", "api_server", spec.model_path, "--backend", "pytorch", "--tp", str(tp),
             "--distributed-executor-backend", "ray", "--server-port", str(spec.api_port)]
    if spec.model_name:
        serve += ["--model-name", spec.model_name]
    steps.append(_step(HEAD_NODE, serve, env, "ray.step.serve",
                       {"nodes": str(spec.nodes), "tp": str(tp), "url": base_url}))
    return RayRecipe(spec, tp, address, base_url, tuple(steps))


def parse_address(address: object, field_name: str = "address") -> tuple[str, int] | FieldError:
    """"HOST:PORT", "[IPv6]:PORT" or "HOST" (Ray's default port 6379) → (host, port), checked like the recipe's."""
    text = address if isinstance(address, str) else ""
    match = ADDRESS.match(text) if text and len(text) <= MAX_HOST + 10 else None
    if match is None:
        return FieldError(field_name, "ray.err.address", {"value": str(address)[:100]})
    host = match.group("v6") if match.group("v6") is not None else match.group("host")
    if match.group("v6") is not None and ":" not in host:
        return FieldError(field_name, "ray.err.address", {"value": text[:100]})
    host_error = check_host(host, field_name)
    if host_error is not None:
        return host_error
    port_text = match.group("port")
    if port_text is None:
        return host, DEFAULT_RAY_PORT
    port = int(port_text) if port_text.isdigit() and len(port_text) <= 5 else -1
    port_error = _port_error(port, field_name)
    if port_error is not None:
        return FieldError(field_name, "errors.port_range", {"value": port_text[:40]})
    return host, port


def install_argv(python: str) -> tuple[str, ...]:
    """The command that installs ray into LMDeploy's interpreter (the one that runs the api_server)."""
    return (python, "-m", "pip", "install", INSTALL_PACKAGE)


def _float(value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _nodes(raw: object) -> tuple[RayNode, ...]:
    nodes: list[RayNode] = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict):
            continue
        raw_total, raw_available = item.get("total"), item.get("available")
        total: dict[str, object] = raw_total if isinstance(raw_total, dict) else {}
        available: dict[str, object] | None = raw_available if isinstance(raw_available, dict) else None
        alive = bool(item.get("alive"))
        nodes.append(RayNode(
            node_id=str(item.get("node_id", "")), ip=str(item.get("ip", "")), hostname=str(item.get("hostname", "")),
            alive=alive, head="node:__internal_head__" in total,
            gpus_total=_float(total.get("GPU", 0)),
            gpus_available=_float(available.get("GPU", 0)) if alive and available is not None else None,
            cpus_total=_float(total.get("CPU", 0)),
            cpus_available=_float(available.get("CPU", 0)) if alive and available is not None else None))
    return tuple(sorted(nodes, key=lambda n: (not n.alive, not n.head, n.ip, n.node_id)))


def ray_status(python: str, address: str, timeout_s: float = STATUS_TIMEOUT_S) -> RayStatus:
    """Whether `ray` imports in `python`, and if so what the cluster at `address` holds; never raises.

    One child process of `python` does both (about 1 s here): it connects to the head's port first, so an address
    where nothing listens answers at once; an open port that is not a Ray head is given up after `timeout_s`."""
    started = time.monotonic()
    parsed = parse_address(address)
    if isinstance(parsed, FieldError):
        return RayStatus("invalid", str(address), python, parsed.key, MappingProxyType(parsed.params), (parsed,))
    if not isinstance(python, str) or not python or "\0" in python:
        error = FieldError("python", "errors.path_invalid", {"path": str(python)[:200]})
        return RayStatus("invalid", address, str(python), error.key, MappingProxyType(error.params), (error,))
    host, port = parsed
    shown = host_port(host, port)
    deadline = max(1.0, _float(timeout_s))
    argv = [python, "-c", PROBE_SCRIPT, host, str(port), str(min(CONNECT_TIMEOUT_S, deadline))]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=deadline, check=False,  # noqa: S603
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return RayStatus("timeout", address, python, "ray.status.timeout",
                         MappingProxyType({"address": shown, "seconds": f"{deadline:g}"}),
                         elapsed_s=time.monotonic() - started)
    except OSError as exc:
        return RayStatus("error", address, python, "ray.status.no_python",
                         MappingProxyType({"python": python, "reason": str(exc)[:300]}),
                         elapsed_s=time.monotonic() - started)
    elapsed = time.monotonic() - started
    report = _last_report(done.stdout)
    if report is None:
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-3:]
        why = " / ".join(tail)[:300] or f"exit {done.returncode}"
        return RayStatus("error", address, python, "ray.status.failed",
                         MappingProxyType({"address": shown, "reason": why}), elapsed_s=elapsed)
    return _status_from_report(report, address, shown, python, elapsed)


def _last_report(stdout: str) -> dict[str, object] | None:
    for line in reversed((stdout or "").splitlines()):
        if line.startswith(PROBE_MARK):
            try:
                value = json.loads(line[len(PROBE_MARK):])
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def _status_from_report(report: Mapping[str, object], address: str, shown: str, python: str,
                        elapsed: float) -> RayStatus:
    state = str(report.get("state", ""))
    version = str(report.get("ray_version", ""))
    reason = str(report.get("reason", ""))[:300]
    if state == "no_ray":
        argv = install_argv(python)
        return RayStatus("no_ray", address, python, "ray.status.no_ray",
                         MappingProxyType({"python": python, "command": shlex.join(argv)}),
                         install_argv=argv, install_line=shlex.join(argv), elapsed_s=elapsed)
    if state == "unreachable":
        key = str(report.get("key", "ray.status.no_answer"))
        if key not in ("ray.status.unresolved", "ray.status.refused", "ray.status.no_answer"):
            key = "ray.status.no_answer"
        return RayStatus("unreachable", address, python, key,
                         MappingProxyType({"address": shown, "reason": reason}), ray_version=version,
                         elapsed_s=elapsed)
    if state != "ok":
        return RayStatus("error", address, python, "ray.status.failed",
                         MappingProxyType({"address": shown, "reason": reason or state}), ray_version=version,
                         elapsed_s=elapsed)
    nodes = _nodes(report.get("nodes"))
    alive = [n for n in nodes if n.alive]
    cluster_version = str(report.get("cluster_ray_version", ""))
    notes: list[tuple[str, Mapping[str, str]]] = []
    if cluster_version and version and cluster_version != version:
        notes.append(("ray.status.version_mismatch",
                      MappingProxyType({"cluster": cluster_version, "local": version, "python": python})))
    return RayStatus(
        "ok", address, python, ray_version=version, cluster_ray_version=cluster_version, nodes=nodes,
        gpus_total=sum(n.gpus_total for n in alive), gpus_available=sum(n.gpus_available or 0.0 for n in alive),
        cpus_total=sum(n.cpus_total for n in alive), cpus_available=sum(n.cpus_available or 0.0 for n in alive),
        elapsed_s=elapsed, notes=tuple(notes))


def check_cluster_fits(recipe: RayRecipe, status: RayStatus) -> list[FieldError]:
    """What the cluster still lacks before the recipe's api_server can start; [] when it has enough.

    LMDeploy places one rank per GPU and waits (up to 30 minutes) for GPUs it cannot get, so check first."""
    if not status.ok:
        return [FieldError("cluster", status.key or "ray.status.failed", dict(status.params))]
    errors: list[FieldError] = []
    alive = len(status.alive_nodes)
    if alive < recipe.spec.nodes:
        errors.append(FieldError("cluster", "ray.fit.nodes", {"alive": str(alive), "nodes": str(recipe.spec.nodes)}))
    if status.gpus_available < recipe.tp:
        errors.append(FieldError("cluster", "ray.fit.gpus", {
            "available": f"{status.gpus_available:g}", "total": f"{status.gpus_total:g}", "tp": str(recipe.tp)}))
    return errors
