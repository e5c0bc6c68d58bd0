"""Builds the app-wide services once from Settings, and closes them in order."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from webui.services.gpu import GpuProbe
from webui.services.models import ModelRoots
from webui.services.processes import ProcessSupervisor
from webui.services.serve import ArgvFactory, ServerManager
from webui.services.store import Store
from webui.settings import Settings


@dataclass
class Services:
    """Everything the UI is given; one instance per console process."""

    settings: Settings
    store: Store
    supervisor: ProcessSupervisor
    roots: ModelRoots
    gpu: GpuProbe
    servers: ServerManager

    @classmethod
    def build(cls, settings: Settings, argv_factory: ArgvFactory | None = None) -> Services:
        for folder in (settings.state_dir, settings.log_dir, settings.output_dir):
            folder.mkdir(parents=True, exist_ok=True)
        store = Store(settings.db_path)
        supervisor = ProcessSupervisor()
        roots = ModelRoots(settings.model_roots or (settings.state_dir,))
        gpu = GpuProbe()
        servers = ServerManager(
            store, supervisor, roots, gpu, settings.log_dir,
            python=settings.lmdeploy_python or sys.executable, argv_factory=argv_factory,
        )
        return cls(settings, store, supervisor, roots, gpu, servers)

    def close(self, keep_servers: bool | None = None) -> None:
        """Stop owned servers (unless kept), then release NVML and the database."""
        keep = self.settings.keep_servers if keep_servers is None else keep_servers
        self.servers.shutdown(keep_running=keep)
        self.gpu.close()
        self.store.close()
