"""Tool-list checks, the safe calculator and built-ins, and streamed tool-call assembly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from webui.services.tools import ToolCallAssembler, ToolProblem, UnsafeExpression, calculate, check_tools, run_builtin

# The InternLM tutorial's tools, verbatim: "type": "int" is not JSON Schema.
TUTORIAL_TOOLS = """[
  {"type": "function", "function": {"name": "add", "description": "Compute the sum of two numbers",
    "parameters": {"type": "object", "properties": {"a": {"type": "int", "description": "A number"},
                                                     "b": {"type": "int", "description": "A number"}},
                   "required": ["a", "b"]}}},
  {"type": "function", "function": {"name": "mul", "description": "Calculate the product of two numbers",
    "parameters": {"type": "object", "properties": {"a": {"type": "int", "description": "A number"},
                                                     "b": {"type": "int", "description": "A number"}},
                   "required": ["a", "b"]}}}
]"""


def test_the_tutorials_int_type_is_caught_with_its_fix() -> None:
    problems = check_tools(TUTORIAL_TOOLS)
    assert all(isinstance(p, ToolProblem) for p in problems)
    assert [(p.path, p.key, p.params["fix"]) for p in problems][:2] == [
        ("$[0].function.parameters.properties.a.type", "tools.errors.type_fix", "integer"),
        ("$[0].function.parameters.properties.b.type", "tools.errors.type_fix", "integer"),
    ]
    fixed = check_tools(TUTORIAL_TOOLS.replace('"int"', '"integer"'))
    assert [t["function"]["name"] for t in fixed] == ["add", "mul"]


@pytest.mark.parametrize(
    ("text", "path", "key"),
    [
        ('[{"type": "function",', "line 1, column 22", "tools.errors.json"),
        ("[]", "$", "tools.errors.not_a_list"),
        ('[{"name": "add"}]', "$[0]", "tools.errors.not_function"),
        ('[{"type": "function", "function": {"name": "a b"}}]', "$[0].function.name", "tools.errors.bad_name"),
        ('[{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]',
         "$[1].function.name", "tools.errors.duplicate"),
        ('[{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]',
         "$[0].function.parameters.type", "tools.errors.parameters_object"),
        ('[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {},'
         ' "required": ["x"]}}}]', "$[0].function.parameters.required", "tools.errors.required_unknown"),
        ('[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties":'
         ' {"x": {"type": "decimal"}}}}}]', "$[0].function.parameters.properties.x.type", "tools.errors.type_unknown"),
    ],
)
def test_mistakes_are_pointed_at(text: str, path: str, key: str) -> None:
    problems = check_tools(text)
    assert (problems[0].path, problems[0].key) == (path, key)


def test_a_single_tool_object_is_accepted_as_a_list() -> None:
    assert check_tools('{"type": "function", "function": {"name": "now"}}')[0]["function"]["name"] == "now"


@pytest.mark.parametrize(("expression", "value"), [("(3+5)*2", 16), ("2**10", 1024), ("7 // 2", 3), ("-1.5 + 4", 2.5),
                                                    ("2^3", 8), ("6 ÷ 4", 1.5)])
def test_calculator(expression: str, value: float) -> None:
    assert calculate(expression) == value


@pytest.mark.parametrize("expression", ["__import__('os').system('touch pwned')", "open('/etc/passwd')",
                                        "9**9**9", "1/0", "x + 1", "[1, 2]", "True + 1", "1e308 * 10", "1" * 300])
def test_calculator_refuses_everything_else(expression: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeExpression):
        calculate(expression)
    assert not (tmp_path / "pwned").exists()


def test_builtins_take_the_models_json() -> None:
    assert run_builtin("add", '{"a": 3, "b": 5}') == (True, "8")
    assert run_builtin("mul", '{"a": 8, "b": 2}') == (True, "16")
    assert run_builtin("calculate", json.dumps({"expression": "(3+5)*2"})) == (True, "16")
    assert run_builtin("add", '{"a": "3", "b": 5}') == (False, "a must be a number, got '3'")
    assert run_builtin("add", "{not json")[0] is False
    assert run_builtin("rm", "{}") == (False, "unknown tool 'rm'")
    assert run_builtin("calculate", '{"expression": "__import__(\\"os\\")"}')[0] is False


def test_streamed_deltas_with_names_repeated_or_sent_once() -> None:
    once = ToolCallAssembler()
    once.add([{"index": 0, "id": "call-1", "function": {"name": "add", "arguments": ""}}])
    once.add([{"index": 0, "function": {"arguments": '{"a": 3, '}}])
    once.add([{"index": 0, "function": {"arguments": '"b": 5}'}}])
    repeated = ToolCallAssembler()  # some servers repeat the name in every delta
    for piece in ('{"a": 3, ', '"b": 5}'):
        repeated.add([{"index": 0, "id": "call-1", "function": {"name": "add", "arguments": piece}}])
    expected = [{"id": "call-1", "type": "function", "function": {"name": "add", "arguments": '{"a": 3, "b": 5}'}}]
    assert once.result() == repeated.result() == expected
    two = ToolCallAssembler()
    two.add([{"index": 1, "function": {"name": "mul", "arguments": "{}"}},
             {"index": 0, "function": {"name": "add", "arguments": "{}"}}])
    assert [c["function"]["name"] for c in two.result()] == ["add", "mul"]
    assert [c["id"] for c in two.result()] == ["call_0", "call_1"]
