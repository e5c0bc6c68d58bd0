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


MUTABLE_CALLS = frozenset({"dict", "list", "set", "defaultdict", "OrderedDict", "deque", "Counter"})


def mutable_module_values(root: Path) -> list[str]:
    """Module-level assignments of a list, dict or set (literal, comprehension or call) under root."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                value = node.value
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
                literal = isinstance(value, (ast.List, ast.Set, ast.Dict, ast.ListComp, ast.SetComp, ast.DictComp))
                call = (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                        and value.func.id in MUTABLE_CALLS)
                if literal or call:
                    found.append(f"{path.relative_to(root)}: {names}")
    return found


def test_no_module_level_mutable_state() -> None:
    """Module globals are frozen constants (tuples, frozensets, MappingProxyType): no list, dict or set that code
    could mutate per request, whatever its name."""
    found = mutable_module_values(WEBUI)
    assert not found, "module-level mutable values: " + "; ".join(found)


def test_the_module_state_check_catches_what_it_must(tmp_path: Path) -> None:
    """The check above finds a dict in capitals (the old rule let `TABLE = {}` through), a list from a call and a
    comprehension, and lets frozen values through."""
    (tmp_path / "bad.py").write_text("TABLE = {'a': 1}\nNAMES: list[str] = list()\n"
                                     "SQUARES = {i: i * i for i in range(3)}\n")
    (tmp_path / "good.py").write_text("from types import MappingProxyType\nOK = MappingProxyType({'a': 1})\n"
                                      "NAMES = ('a', 'b')\nSEEN = frozenset({1})\n")
    assert mutable_module_values(tmp_path) == ["bad.py: ['TABLE']", "bad.py: ['NAMES']", "bad.py: ['SQUARES']"]
