"""The layers of the design hold: services never import gradio; the UI never spawns, calls NVML or openai."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

WEBUI = Path(__file__).resolve().parent.parent / "webui"

FORBIDDEN = {
    "services": {"gradio"},
    "ui": {"subprocess", "psutil", "pynvml", "openai", "lmdeploy", "torch"},
    "i18n": {"gradio", "subprocess"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports(layer: str) -> None:
    files = sorted((WEBUI / layer).rglob("*.py"))
    assert files
    for path in files:
        bad = imported_modules(path) & FORBIDDEN[layer]
        assert not bad, f"{path.relative_to(WEBUI)} imports {sorted(bad)}"


def test_no_shell_and_no_eval_anywhere() -> None:
    for path in WEBUI.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "shell":
                assert not (isinstance(node.value, ast.Constant) and node.value.value), f"shell=True in {path}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in {"eval", "exec"}, f"{node.func.id}() in {path}"


def test_no_module_level_mutable_state() -> None:
    """Module globals are constants: no module-level list/dict/set that code could mutate per request."""
    for path in WEBUI.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                value = node.value
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
                if isinstance(value, (ast.List, ast.Set, ast.ListComp, ast.SetComp)):
                    raise AssertionError(f"{path.name}: module-level mutable {names}")
                if isinstance(value, (ast.Dict, ast.DictComp)):
                    assert all(n.isupper() for n in names), f"{path.name}: module-level dict {names}"
