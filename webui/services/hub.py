"""The model hub as the console uses it: repo ids, sources, and what a repo holds before anything is fetched.

LMDeploy resolves a repo id through `huggingface_hub` (the same client is used here, so a mirror set with
`HF_ENDPOINT` and a login made with `hf auth login` behave the same); the console only ever asks the hub
when the user asks for a file list or a download, never at Start.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

SOURCES = ("huggingface", "mirror", "modelscope")
# What `lmdeploy` itself leaves out of a snapshot (its get_model: ignore_patterns=['*.pth']).
IGNORE_PATTERNS = ("*.pth",)
MAX_REPO_PART = 96
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,127}$")
LISTING_TIMEOUT_S = 10.0
HEX40 = re.compile(r"[0-9a-f]{40}")
HEX64 = re.compile(r"[0-9a-f]{64}")

SUGGESTED_REPOS = (
    "internlm/internlm2_5-7b-chat",
    "internlm/internlm2_5-1_8b-chat",
    "internlm/internlm2_5-7b-chat-4bit",
    "Qwen/Qwen2.5-7B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct-AWQ",
    "meta-llama/Meta-Llama-3-8B-Instruct",
)

ERROR_KEYS = MappingProxyType({
    "GatedRepoError": "hub.err.gated",
    "RepositoryNotFoundError": "hub.err.repo_not_found",
    "RevisionNotFoundError": "hub.err.revision_not_found",
    "EntryNotFoundError": "hub.err.file_not_found",
    "RemoteEntryNotFoundError": "hub.err.file_not_found",
    "DisabledRepoError": "hub.err.disabled",
    "OfflineModeIsEnabled": "hub.err.offline_mode",
})


@dataclass(frozen=True)
class HubProblem:
    """Why the hub could not answer, as a catalog key plus its parameters."""

    key: str
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HubFile:
    """One file of a repo at one commit: its size and the hashes the hub gives for it."""

    path: str
    size: int
    blob_id: str  # git blob sha1 of the content
    sha256: str = ""  # LFS files only

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RepoListing:
    """A repo at a resolved commit: what a download of it would fetch."""

    repo_id: str
    revision: str
    sha: str
    gated: bool
    files: tuple[HubFile, ...]
    source: str
    endpoint: str

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def repo_id_problem(text: str) -> HubProblem | None:
    """Why `text` is not a repo id the hub could hold, or None. Refuses `..`, `--`, shell characters, paths."""
    value = (text or "").strip()
    if not value:
        return HubProblem("hub.err.repo_required")
    if len(value) > 2 * MAX_REPO_PART + 1 or not REPO_ID.match(value) or ".." in value or "--" in value \
            or value.endswith((".", "-")) or any(part.endswith((".", "-")) for part in value.split("/")):
        return HubProblem("hub.err.repo_invalid", {"repo": value[:200]})
    return None


def revision_problem(text: str) -> HubProblem | None:
    value = (text or "").strip()
    if value and (not REVISION.match(value) or ".." in value):
        return HubProblem("hub.err.revision_invalid", {"revision": value[:200]})
    return None


def looks_like_repo_id(text: str) -> bool:
    """`org/name` and nothing a path would start with: a typo'd local path is never taken for a repo id."""
    value = (text or "").strip()
    return not value.startswith(("/", "~", ".")) and repo_id_problem(value) is None


def endpoint_of(source: str, hub_endpoint: str, mirror_endpoint: str) -> str:
    return mirror_endpoint if source == "mirror" else hub_endpoint


def folder_name(repo_id: str, revision: str) -> str:
    """The models-folder name of a download: `org/name`, with the revision appended unless it is main."""
    name = repo_id.split("/", 1)[1]
    rev = (revision or "main").strip()
    return name if rev == "main" else f"{name}@{re.sub(r'[^A-Za-z0-9_.-]', '-', rev)[:48]}"


def wanted(path: str) -> bool:
    return not any(fnmatch.fnmatch(path, pattern) for pattern in IGNORE_PATTERNS)


def safe_repo_path(path: str) -> bool:
    """Whether a file name from a hub's listing stays inside the folder it is written to: relative, no `..`,
    `.` or empty parts, no backslash or NUL (`.gitattributes` is fine). A hub (or a mirror) is not trusted
    with our disk."""
    if not path or len(path) > 1024 or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def problem_of(exc: BaseException, repo_id: str, endpoint: str) -> HubProblem:
    """The user's words for a hub client exception (its class, or its HTTP status), never a traceback."""
    for cls in type(exc).__mro__:
        if cls.__name__ in ERROR_KEYS:
            return HubProblem(ERROR_KEYS[cls.__name__], {"repo": repo_id, "endpoint": endpoint})
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status in (401, 403):
        return HubProblem("hub.err.unauthorized", {"repo": repo_id, "endpoint": endpoint})
    if status is not None:
        return HubProblem("hub.err.http", {"status": str(status), "endpoint": endpoint,
                                           "error": str(exc).splitlines()[0][:200]})
    names = {c.__name__ for c in type(exc).__mro__}
    if names & {"ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError", "TransportError",
                "ConnectionError", "gaierror"}:  # the network; a local OSError (disk, permissions) is not
        return HubProblem("hub.err.offline", {"endpoint": endpoint})
    return HubProblem("hub.err.other", {"error": f"{type(exc).__name__}: {str(exc)[:200]}", "endpoint": endpoint})


class HubClient:
    """Asks one hub endpoint about one repo; a token, when given, is used for this call only."""

    def __init__(self, endpoint: str, token: str | None = None, timeout_s: float = LISTING_TIMEOUT_S) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._token = token or None
        self._timeout_s = timeout_s

    def listing(self, repo_id: str, revision: str = "main", source: str = "huggingface") -> RepoListing | HubProblem:
        """The repo's files (sizes, hashes) at the commit `revision` resolves to, and whether it is gated."""
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, token=self._token)
        try:
            info = api.model_info(repo_id, revision=revision or "main", files_metadata=True,
                                  timeout=self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - the client raises many kinds; each is put in words
            return problem_of(exc, repo_id, self.endpoint)
        files = []
        for sibling in info.siblings or []:
            if not safe_repo_path(sibling.rfilename):
                return HubProblem("hub.err.unsafe_file", {"repo": repo_id, "file": sibling.rfilename[:200]})
            if not wanted(sibling.rfilename):
                continue
            lfs = sibling.lfs
            file = HubFile(path=sibling.rfilename, size=int(sibling.size or (lfs.size if lfs else 0) or 0),
                           blob_id=sibling.blob_id or "", sha256=lfs.sha256 if lfs else "")
            # The hashes name cache blobs on disk: only hex is taken.
            if not HEX40.fullmatch(file.blob_id or "0" * 40) or not HEX64.fullmatch(file.sha256 or "0" * 64):
                return HubProblem("hub.err.unsafe_file", {"repo": repo_id, "file": sibling.rfilename[:200]})
            files.append(file)
        if not HEX40.fullmatch(info.sha or ""):
            return HubProblem("hub.err.no_commit", {"repo": repo_id, "endpoint": self.endpoint})
        return RepoListing(repo_id=repo_id, revision=revision or "main", sha=info.sha or "",
                           gated=bool(info.gated), files=tuple(files), source=source, endpoint=self.endpoint)

    def config(self, listing: RepoListing, folder: Path) -> dict[str, Any] | HubProblem:
        """The repo's config.json alone (a few KB), for the memory planner before the weights are fetched."""
        from huggingface_hub import hf_hub_download

        if not any(f.path == "config.json" for f in listing.files):
            return HubProblem("hub.err.no_config", {"repo": listing.repo_id})
        try:
            path = hf_hub_download(listing.repo_id, "config.json", revision=listing.sha, local_dir=folder,
                                   endpoint=self.endpoint, token=self._token, etag_timeout=self._timeout_s)
            config = json.loads(Path(str(path)).read_text(encoding="utf-8"))
        except ValueError as exc:
            return HubProblem("hub.err.bad_config", {"repo": listing.repo_id, "error": str(exc)[:200]})
        except Exception as exc:  # noqa: BLE001
            return problem_of(exc, listing.repo_id, self.endpoint)
        if not isinstance(config, dict):
            return HubProblem("hub.err.bad_config", {"repo": listing.repo_id, "error": "not a JSON object"})
        return config


def cached_snapshot(cache_dir: Path, repo_id: str, revision: str = "main") -> Path | None:
    """A complete-looking snapshot of the repo in a Hugging Face cache (as `lmdeploy` or `hf download` leave
    it), or None. Read from the cache's own layout; nothing is fetched."""
    repo_dir = cache_dir / f"models--{repo_id.replace('/', '--')}"
    rev = (revision or "main").strip()
    sha = rev
    ref = repo_dir / "refs" / rev
    if ref.is_file():
        try:
            sha = ref.read_text(encoding="utf-8").strip()
        except OSError:
            return None
    snapshot = repo_dir / "snapshots" / sha
    if not (snapshot / "config.json").is_file() or not weights_complete(snapshot):
        return None  # a download of it is under way or was broken off
    return snapshot


def weights_complete(folder: Path) -> bool:
    """Weights are there: every shard a `*.index.json` names, else at least one weights file (links resolved)."""
    indexes = list(folder.glob("*.index.json"))
    for index in indexes:
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            return False
        if not shards or not all((folder / str(shard)).is_file() for shard in shards):
            return False
    return bool(indexes) or any(p.is_file() for p in folder.glob("*.safetensors")) or \
        any(p.is_file() for p in folder.glob("*.bin"))
