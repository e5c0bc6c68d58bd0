"""Frozen, validated settings for one console process."""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def default_state_dir() -> Path:
    """Per-user state folder: $LMDEPLOY_CONSOLE_STATE_DIR, else $XDG_STATE_HOME, else ~/.local/state."""
    explicit = os.environ.get("LMDEPLOY_CONSOLE_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser() / "lmdeploy-console"


def default_hf_cache_dir() -> Path:
    """The Hugging Face cache `lmdeploy` and `hf download` use: $HF_HUB_CACHE, else $HF_HOME/hub, else
    $XDG_CACHE_HOME/huggingface/hub (the client's own order)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                                            / "huggingface")
    return Path(home).expanduser() / "hub"


def default_hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def default_hub_mirror() -> str:
    return (os.environ.get("LMDEPLOY_CONSOLE_HF_MIRROR") or "https://hf-mirror.com").rstrip("/")


def lan_address() -> str:
    """This machine's address on its LAN (the one a route out would use); 127.0.0.1 when there is none."""
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent, the kernel only picks the interface
        return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def host_port(host: str, port: int) -> str:
    """HOST:PORT, with an IPv6 address in brackets as URLs (and Ray) want it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    """Everything the console needs to know at start; built once by the CLI and passed down."""

    host: str = "127.0.0.1"
    port: int = 7860
    auth: tuple[tuple[str, str], ...] = ()
    share: bool = False  # a public share link for the guest app (demo links); never for the console
    state_dir: Path = field(default_factory=default_state_dir)
    model_roots: tuple[Path, ...] = ()
    lmdeploy_python: str = ""
    keep_servers: bool = False
    gpu_sample_hz: float = 2.0
    demo_host: str = "127.0.0.1"  # the guest app's address (guests only: it may face the LAN without --auth)
    demo_port: int = 0  # 0 = the console's port + 1
    share_server_address: str = ""  # a self-hosted share server for --share
    hf_cache_dir: Path = field(default_factory=default_hf_cache_dir)
    hub_endpoint: str = field(default_factory=default_hub_endpoint)
    hub_mirror: str = field(default_factory=default_hub_mirror)
    # The console's own GPU limit, if it was started with one: placement must stay inside it.
    cuda_visible_devices: str | None = field(default_factory=lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    cuda_device_order: str = field(default_factory=lambda: os.environ.get("CUDA_DEVICE_ORDER", ""))

    @property
    def lmdeploy_interpreter(self) -> str:
        """The Python that runs LMDeploy (servers, jobs, the proxy, the Ray check): --lmdeploy-python, else ours."""
        return self.lmdeploy_python or sys.executable

    @property
    def db_path(self) -> Path:
        return self.state_dir / "console.sqlite3"

    @property
    def secrets_path(self) -> Path:
        """API keys and tokens: an owner-only file beside the database, never inside it."""
        return self.state_dir / "secrets.json"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def output_dir(self) -> Path:
        return self.state_dir / "outputs"

    @property
    def upload_dir(self) -> Path:
        return self.state_dir / "uploads"

    @property
    def guest_port(self) -> int:
        return self.demo_port or self.port + 1

    @property
    def guest_url(self) -> str:
        """How guests on this machine or the LAN reach the guest app (a share link, when made, is extra)."""
        host = self.demo_host.strip().strip("[]")
        if host in ("0.0.0.0", "::", ""):
            host = lan_address()
        return f"http://{host_port(host, self.guest_port)}"

    @property
    def models_dir(self) -> Path:
        """Where downloads land as plain model folders (always one of the model roots)."""
        return self.state_dir / "models"

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / "jobs"

    def exposure_problem(self) -> str | None:
        """Why this configuration must not start, or None: the console spawns processes, so no open door."""
        if self.auth:
            return None
        if not is_loopback(self.host):
            return (
                f"--host {self.host} lets other machines reach the console, which starts processes; "
                "add --auth user:pass or --auth-file FILE, or keep --host 127.0.0.1."
            )
        return None
