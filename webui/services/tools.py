"""Function calling without risk: tool-list checks that point at the mistake, safe built-in tools, and the
assembly of streamed tool-call deltas. Nothing a model writes is ever passed to eval.
"""

from __future__ import annotations

import ast
import json
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

JSON_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
# Python-ish or C-ish type names people write, and the JSON Schema name they meant.
TYPE_FIXES = MappingProxyType({
    "int": "integer", "float": "number", "double": "number", "str": "string", "bool": "boolean",
    "dict": "object", "list": "array", "none": "null", "long": "integer",
})
MAX_EXPRESSION = 200
MAX_EXPONENT = 64
MAX_MAGNITUDE = 1e300

BINARY: Mapping[type, Callable[[Any, Any], Any]] = MappingProxyType({
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
})
UNARY: Mapping[type, Callable[[Any], Any]] = MappingProxyType({ast.UAdd: operator.pos, ast.USub: operator.neg})


@dataclass(frozen=True)
class ToolProblem:
    """A mistake in the tools JSON: where it is (a JSON path), a catalog key, and the values for its message."""

    path: str
    key: str
    params: dict[str, str] = field(default_factory=dict)


def check_tools(text: str) -> list[dict[str, Any]] | list[ToolProblem]:
    """Parse and check an OpenAI `tools` list; problems name the JSON path and, where possible, the fix."""
    try:
        tools = json.loads(text)
    except json.JSONDecodeError as exc:
        return [ToolProblem(f"line {exc.lineno}, column {exc.colno}", "tools.errors.json", {"error": exc.msg})]
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not tools:
        return [ToolProblem("$", "tools.errors.not_a_list", {})]
    problems: list[ToolProblem] = []
    names: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"$[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            problems.append(ToolProblem(where, "tools.errors.not_function", {}))
            continue
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not name.replace("_", "a").replace("-", "a").isalnum() or len(name) > 64:
            problems.append(ToolProblem(f"{where}.function.name", "tools.errors.bad_name", {"name": str(name)}))
        elif name in names:
            problems.append(ToolProblem(f"{where}.function.name", "tools.errors.duplicate", {"name": name}))
        else:
            names.add(name)
        params = fn.get("parameters", {"type": "object", "properties": {}})
        problems += _check_schema(params, f"{where}.function.parameters", top=True)
    return problems or tools


def _check_schema(schema: Any, where: str, top: bool = False) -> list[ToolProblem]:
    if not isinstance(schema, dict):
        return [ToolProblem(where, "tools.errors.schema_not_object", {})]
    problems = []
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    for k in kinds:
        if k is None and not top:
            continue
        if k not in JSON_TYPES:
            fix = TYPE_FIXES.get(str(k).lower(), "")
            key = "tools.errors.type_fix" if fix else "tools.errors.type_unknown"
            problems.append(ToolProblem(f"{where}.type", key, {"type": str(k), "fix": fix}))
    if top and kind != "object":
        problems.append(ToolProblem(f"{where}.type", "tools.errors.parameters_object", {}))
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        problems.append(ToolProblem(f"{where}.properties", "tools.errors.schema_not_object", {}))
        props = {}
    for prop, sub in props.items():
        problems += _check_schema(sub, f"{where}.properties.{prop}")
    required = schema.get("required", [])
    for name in required if isinstance(required, list) else []:
        if name not in props:
            problems.append(ToolProblem(f"{where}.required", "tools.errors.required_unknown", {"name": str(name)}))
    if "items" in schema:
        problems += _check_schema(schema["items"], f"{where}.items")
    return problems


class UnsafeExpression(ValueError):
    """An expression the calculator refuses (names, calls, huge powers …)."""


def calculate(expression: str) -> float | int:
    """Evaluate + - * / // % ** and parentheses over numbers by walking the syntax tree; nothing else runs."""
    if len(expression) > MAX_EXPRESSION:
        raise UnsafeExpression(f"longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.replace("^", "**").replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError as exc:
        raise UnsafeExpression(f"not arithmetic: {exc.msg}") from exc
    return _number(_eval(tree.body))


def _eval(node: ast.AST) -> float | int:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise UnsafeExpression(f"exponent above {MAX_EXPONENT}")
        try:
            return _number(BINARY[type(node.op)](left, right))
        except ZeroDivisionError as exc:
            raise UnsafeExpression("division by zero") from exc
    raise UnsafeExpression(f"{type(node).__name__} is not allowed")


def _number(value: float | int) -> float | int:
    if isinstance(value, complex) or (isinstance(value, float) and not math.isfinite(value)):
        raise UnsafeExpression("result is not a finite real number")
    if abs(value) > MAX_MAGNITUDE:
        raise UnsafeExpression("result too large")
    return value


def _two_numbers(args: dict[str, Any]) -> tuple[float | int, float | int]:
    a, b = args.get("a"), args.get("b")
    for name, value in (("a", a), ("b", b)):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{name} must be a number, got {value!r}")
    return a, b  # type: ignore[return-value]


BUILTINS: Mapping[str, Callable[[dict[str, Any]], Any]] = MappingProxyType({
    "add": lambda args: _number(sum(_two_numbers(args))),
    "mul": lambda args: _number(math.prod(_two_numbers(args))),
    "calculate": lambda args: calculate(str(args.get("expression", ""))),
})


def run_builtin(name: str, arguments: str) -> tuple[bool, str]:
    """Run a safe built-in tool on the model's JSON arguments: (ok, text for the `role: tool` message)."""
    tool = BUILTINS.get(name)
    if tool is None:
        return False, f"unknown tool {name!r}"
    try:
        args = json.loads(arguments or "{}")
    except json.JSONDecodeError as exc:
        return False, f"arguments are not JSON: {exc.msg}"
    if not isinstance(args, dict):
        return False, "arguments must be a JSON object"
    try:
        return True, json.dumps(tool(args))
    except (ValueError, TypeError) as exc:
        return False, str(exc)


@dataclass
class ToolCallAssembler:
    """Folds streamed `delta.tool_calls` into whole calls, by index.

    Some servers repeat the function name in every delta and some send it once; arguments always arrive as
    pieces to concatenate.
    """

    calls: dict[int, dict[str, str]] = field(default_factory=dict)

    def add(self, deltas: list[dict[str, Any]] | None) -> None:
        for delta in deltas or []:
            index = int(delta.get("index") or 0)
            call = self.calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
            if delta.get("id"):
                call["id"] = str(delta["id"])
            fn = delta.get("function") or {}
            name = str(fn.get("name") or "")
            if name and not call["name"].endswith(name):
                # Repeated whole (or growing) names replace; pieces of a name are joined.
                call["name"] = name if name.startswith(call["name"]) else call["name"] + name
            if fn.get("arguments"):
                call["arguments"] += str(fn["arguments"])

    def result(self) -> list[dict[str, Any]]:
        """Calls in OpenAI message form, ready for the assistant message that precedes the tool results."""
        return [{"id": c["id"] or f"call_{i}", "type": "function",
                 "function": {"name": c["name"], "arguments": c["arguments"]}}
                for i, c in sorted(self.calls.items())]
