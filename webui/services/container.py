"""Builds the app-wide services once from Settings, and closes them in order."""

from __future__ import annotations

from dataclasses import dataclass, field

from webui.services.chat import ChatService
from webui.services.compare import CompareManager
from webui.services.demos import DemoManager
from webui.services.downloads import DownloadArgv, DownloadManager
from webui.services.gpu import GpuProbe, GpuSampler
from webui.services.memory import MemoryService
from webui.services.models import ModelRoots
from webui.services.processes import ProcessSupervisor
from webui.services.proxy import ProxyManager
from webui.services.quantize import JobArgv, JobManager
from webui.services.secrets import SecretStore
from webui.services.serve import ArgvFactory, ServerManager
from webui.services.store import Store
from webui.services.tool_loop import ToolLoop
from webui.settings import Settings


@dataclass
class Services:
    """Everything the UI is given; one instance per console process."""

    settings: Settings
    store: Store
    secrets: SecretStore
    supervisor: ProcessSupervisor
    roots: ModelRoots
    gpu: GpuProbe
    servers: ServerManager
    jobs: JobManager
    downloads: DownloadManager
    demos: DemoManager
    chat: ChatService
    tool_loop: ToolLoop
    memory: MemoryService
    compare: CompareManager
    proxy: ProxyManager
    _closed: bool = field(default=False, init=False, repr=False)

    @classmethod
    def build(cls, settings: Settings, argv_factory: ArgvFactory | None = None,
              job_argv: JobArgv | None = None, download_argv: DownloadArgv | None = None) -> Services:
        for folder in (settings.state_dir, settings.log_dir, settings.output_dir, settings.upload_dir,
                       settings.jobs_dir, settings.models_dir):
            folder.mkdir(parents=True, exist_ok=True)
        store = Store(settings.db_path)
        secrets = SecretStore(settings.secrets_path)
        supervisor = ProcessSupervisor()
        gpu = GpuProbe(settings.cuda_visible_devices, settings.cuda_device_order)
        downloads = DownloadManager(store, supervisor, secrets, gpu, settings.models_dir, settings.hf_cache_dir,
                                    settings.jobs_dir, settings.hub_endpoint, settings.hub_mirror,
                                    download_argv=download_argv)
        # Outputs, uploads and downloads are always readable: a quantized or downloaded model must be servable,
        # an upload usable; so is the Hugging Face cache that LMDeploy itself downloads into.
        roots = ModelRoots((*(settings.model_roots or (settings.state_dir,)), settings.output_dir,
                            settings.upload_dir, settings.models_dir, settings.hf_cache_dir),
                           local_repo=downloads.local_path)
        python = settings.lmdeploy_interpreter
        servers = ServerManager(store, supervisor, roots, gpu, settings.log_dir, python=python,
                                secrets=secrets, argv_factory=argv_factory, child_env=downloads.child_env)
        jobs = JobManager(store, supervisor, roots, gpu, settings.output_dir, settings.jobs_dir, python=python,
                          job_argv=job_argv, child_env=downloads.child_env)
        chat = ChatService(servers)
        # One NVML reader for the whole app, however many browsers watch the Memory tab.
        sampler = GpuSampler(gpu, hz=settings.gpu_sample_hz)
        sampler.start()
        memory = MemoryService(sampler, store, supervisor, roots)
        demos = DemoManager(store, secrets, servers, chat)
        # The load worker is the console's own code: it runs with the console's interpreter, not LMDeploy's.
        compare = CompareManager(store, supervisor, servers, sampler, roots, settings.jobs_dir,
                                 owners_of=memory.owners_of,
                                 gpu_busy=lambda gpus: sorted(gpus & {j.gpu for j in jobs.snapshots() if
                                                                      j.state == "RUNNING" and j.gpu is not None}))
        proxy = ProxyManager(store, supervisor, secrets, servers, settings.state_dir, python)
        servers.claim_ports_with(proxy.claimed_ports)  # its port is never offered to a server
        return cls(settings, store, secrets, supervisor, roots, gpu, servers, jobs, downloads, demos, chat,
                   ToolLoop(chat), memory, compare, proxy)

    def close(self, keep_servers: bool | None = None) -> None:
        """Stop owned servers (unless kept), then release NVML and the database."""
        if self._closed:
            return
        self._closed = True
        keep = self.settings.keep_servers if keep_servers is None else keep_servers
        self.chat.close()
        self.compare.shutdown()
        self.proxy.shutdown(keep_running=keep)
        self.jobs.shutdown()
        self.downloads.shutdown()
        self.servers.shutdown(keep_running=keep)
        self.memory.sampler.stop()
        self.gpu.close()
        self.store.close()
