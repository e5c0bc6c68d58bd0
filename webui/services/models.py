"""Model folders: where the console may read them, how they are found, and what their config says."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from webui.services.hub import looks_like_repo_id

SKIP_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", ".git", "logs"})
MAX_SCAN_DEPTH = 3
MAX_SCAN_DIRS = 4000

LLAMA3_MIN_VOCAB = 128_000  # Llama 3's tokenizer; Llama 2 has 32,000
# Tool-call parser that fits an architecture (LMDeploy 0.18 `--tool-call-parser` names).
PARSER_BY_ARCHITECTURE = MappingProxyType({
    "InternLM2ForCausalLM": "internlm",
    "InternLM3ForCausalLM": "internlm",
    "InternS1ForConditionalGeneration": "intern-s1",
    "QWenLMHeadModel": "qwen",
    "Qwen2ForCausalLM": "qwen2d5",
    "Qwen2MoeForCausalLM": "qwen2d5",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3",
    "LlamaForCausalLM": "llama3",
    "Glm4MoeForCausalLM": "glm47",
    "DeepseekV32ForCausalLM": "deepseek-v32",
    "KimiK2ForCausalLM": "kimi_k2",
})


@dataclass(frozen=True)
class PathProblem:
    """Why a path cannot be used, as a catalog key plus its parameters."""

    key: str
    params: dict[str, str]


@dataclass(frozen=True)
class ModelInfo:
    """What the console reads from a model folder's config.json."""

    path: Path
    architecture: str
    model_type: str
    quant_method: str
    config: dict[str, Any]

    @property
    def suggested_parser(self) -> str:
        if self.model_type.startswith("qwen3") and "coder" in self.path.name.lower():
            return "qwen3coder"
        if self.architecture == "LlamaForCausalLM" and int(self.config.get("vocab_size") or 0) < LLAMA3_MIN_VOCAB:
            return ""  # Llama 2 and other Llama-shaped models have no tool-call format LMDeploy can parse
        return PARSER_BY_ARCHITECTURE.get(self.architecture, "")


class ModelRoots:
    """The folders the console may read models from and write outputs to; app-scoped and immutable."""

    def __init__(self, roots: Sequence[Path], local_repo: Callable[[str], Path | None] | None = None) -> None:
        self.roots = tuple(Path(os.path.realpath(Path(r).expanduser())) for r in roots)
        self._local_repo = local_repo

    def resolve(self, raw: str) -> Path | PathProblem:
        """The real folder that `raw` names, or why it is refused (also through `..` and symlinks).

        `org/name` that is not a folder here is a hub repo id: its download (or the Hugging Face cache's copy)
        is used, and one not on disk yet is refused with the way to download it; nothing is fetched here.
        """
        text = (raw or "").strip()
        if not text:
            return PathProblem("errors.model_required", {})
        if "\x00" in text:
            return PathProblem("errors.path_invalid", {"path": text.replace("\x00", "\\0")})
        if self._local_repo is not None and looks_like_repo_id(text) and not os.path.exists(text):
            local = self._local_repo(text)
            if local is None:
                return PathProblem("errors.repo_not_downloaded", {"repo": text})
            text = str(local)
        path = Path(os.path.realpath(Path(text).expanduser()))
        if not self.contains(path):
            return PathProblem(
                "errors.path_outside_roots",
                {"path": text, "roots": ", ".join(str(r) for r in self.roots) or "-"},
            )
        if not path.exists():
            return PathProblem("errors.model_missing", {"path": text})
        if not path.is_dir():
            return PathProblem("errors.model_not_folder", {"path": text})
        if not (path / "config.json").is_file():
            return PathProblem("errors.model_no_config", {"path": text})
        return path

    def contains(self, real_path: Path) -> bool:
        return any(real_path == root or root in real_path.parents for root in self.roots)

    def discover(self) -> list[Path]:
        """Model folders (those with config.json) under the roots, breadth-first, bounded in depth and count."""
        found: list[Path] = []
        seen = 0
        for root in self.roots:
            frontier: list[tuple[Path, int]] = [(root, 0)]
            while frontier and seen < MAX_SCAN_DIRS:
                folder, depth = frontier.pop(0)
                seen += 1
                if (folder / "config.json").is_file() and _has_weights(folder):
                    found.append(folder)
                    continue
                if depth >= MAX_SCAN_DEPTH:
                    continue
                frontier.extend((child, depth + 1) for child in _subdirs(folder))
        return sorted(set(found))


def _subdirs(folder: Path) -> Iterable[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    return [
        Path(e.path)
        for e in entries
        if e.is_dir(follow_symlinks=False) and not e.name.startswith(".") and e.name not in SKIP_DIRS
    ]


def _has_weights(folder: Path) -> bool:
    try:
        return any(
            name.endswith((".safetensors", ".bin", ".pt", ".gguf")) or name.endswith(".index.json")
            for name in os.listdir(folder)
        )
    except OSError:
        return False


def read_model_info(folder: Path) -> ModelInfo | PathProblem:
    """Parse config.json; a broken one is a problem with a message, not an exception."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return PathProblem("errors.model_bad_config", {"path": str(folder), "error": str(exc)[:200]})
    if not isinstance(config, dict):
        return PathProblem("errors.model_bad_config", {"path": str(folder), "error": "not a JSON object"})
    architectures = config.get("architectures") or [""]
    quant = config.get("quantization_config") or {}
    return ModelInfo(
        path=folder,
        architecture=str(architectures[0]),
        model_type=str(config.get("model_type", "")),
        quant_method=str(quant.get("quant_method", "")) if isinstance(quant, dict) else "",
        config=config,
    )
