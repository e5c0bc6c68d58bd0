"""The Compare workload: the shipped prompt set, the JSONL shapes users bring, their errors, and the seeded pick."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from webui.i18n.catalog import Catalog
from webui.services import workload
from webui.services.serve_spec import FieldError
from webui.services.workload import (
    MAX_PROMPT_CHARS,
    MAX_PROMPTS,
    Prompt,
    builtin_prompts,
    parse_jsonl,
    pick,
    quality_text,
    read_workload_file,
)

CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def write_lines(tmp_path: Path, rows: Sequence[object], name: str = "load.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                    encoding="utf-8")
    return path


def prompts_of(result: list[Prompt] | list[FieldError]) -> list[Prompt]:
    assert result and all(isinstance(p, Prompt) for p in result), result
    return [p for p in result if isinstance(p, Prompt)]


def only_error(result: list[Prompt] | list[FieldError]) -> FieldError:
    assert len(result) == 1 and isinstance(result[0], FieldError), result
    return result[0]


def errors_of(result: list[Prompt] | list[FieldError]) -> list[FieldError]:
    assert result and all(isinstance(e, FieldError) for e in result), result
    return [e for e in result if isinstance(e, FieldError)]


def check_message(error: FieldError, catalog: Catalog, *must_contain: str) -> None:
    """Both locales render the error with every placeholder filled, naming what the user must find."""
    assert error.key in catalog.keys("en"), error.key
    for locale in ("en", "zh"):
        text = catalog.text(error.key, locale, **error.params)
        assert not re.search(r"\{\w+\}", text), text
        for part in must_contain:
            assert part in text, (locale, text)


# Accepted shapes ---------------------------------------------------------------------------------------------

def test_sharegpt_keeps_turns_up_to_the_last_human(tmp_path: Path) -> None:
    row = {"id": "sg-1", "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello!"},
        {"from": "human", "value": "Name a prime."},
        {"from": "gpt", "value": "7"},  # the recorded answer: not sent
    ]}
    [prompt] = prompts_of(read_workload_file(write_lines(tmp_path, [row])))
    assert prompt.id == "sg-1"
    assert prompt.as_messages() == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a prime."}]


def test_openai_messages_cut_after_the_last_user_turn(tmp_path: Path) -> None:
    row = {"messages": [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
        {"role": "user", "content": [{"type": "text", "text": "And 3+3?"}]},
        {"role": "assistant", "content": "6"}]}
    [prompt] = prompts_of(read_workload_file(write_lines(tmp_path, [row])))
    assert prompt.id == "line-1"
    assert prompt.messages == (("user", "2+2?"), ("assistant", "4"), ("user", "And 3+3?"))
    assert prompt.as_messages()[-1] == {"role": "user", "content": "And 3+3?"}


def test_prompt_and_text_lines_become_one_user_message_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [{"prompt": "Explain KV cache."}, "", "   ", {"text": "解释一下量化。", "id": 7}])
    first, second = prompts_of(read_workload_file(path))
    assert first.as_messages() == [{"role": "user", "content": "Explain KV cache."}]
    assert (second.id, second.messages) == ("7", (("user", "解释一下量化。"),))
    assert first.id == "line-1"


def test_byte_order_mark_and_crlf_line_ends_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "a"}\r\n\r\n{"prompt": "b"}\r\n')
    assert [p.messages[0][1] for p in prompts_of(read_workload_file(path))] == ["a", "b"]


def test_a_line_separator_inside_a_string_does_not_split_the_line() -> None:
    [prompt] = prompts_of(parse_jsonl('{"prompt": "one\u2028two"}'))
    assert prompt.messages == (("user", "one\u2028two"),)


def test_prompts_are_hashable_and_as_messages_returns_a_fresh_list() -> None:
    [prompt] = prompts_of(parse_jsonl('{"prompt": "x"}'))
    assert len({prompt, prompt}) == 1
    prompt.as_messages()[0]["content"] = "changed"
    assert prompt.as_messages()[0]["content"] == "x"
    assert prompt.chars == 1


# Errors --------------------------------------------------------------------------------------------------

def test_invalid_json_names_the_line(tmp_path: Path, catalog: Catalog) -> None:
    path = write_lines(tmp_path, [{"prompt": "ok"}, "", '{"prompt": "unterminated}'])
    error = only_error(read_workload_file(path))
    assert (error.field, error.key, error.params["line"]) == ("workload", "compare.err.invalid_json", "3")
    check_message(error, catalog, "3")


def test_a_line_without_a_user_turn_is_refused(tmp_path: Path, catalog: Catalog) -> None:
    rows = [{"prompt": "fine"},
            {"conversations": [{"from": "system", "value": "s"}, {"from": "gpt", "value": "hi"}]},
            {"messages": []},
            {"prompt": "   "}]
    errors = errors_of(read_workload_file(write_lines(tmp_path, rows)))
    assert [(e.key, e.params["line"]) for e in errors] == [
        ("compare.err.no_user_turn", "2"), ("compare.err.no_user_turn", "3"), ("compare.err.no_user_turn", "4")]
    check_message(errors[0], catalog, "2")


def test_unknown_shapes_are_refused_with_what_was_found(tmp_path: Path, catalog: Catalog) -> None:
    rows = [{"question": "why?", "answer": "because"}, [1, 2], {"prompt": 5}, {"messages": "hi"}]
    errors = errors_of(read_workload_file(write_lines(tmp_path, rows)))
    assert [(e.key, e.params["line"], e.params["keys"]) for e in errors] == [
        ("compare.err.unknown_shape", "1", "question, answer"),
        ("compare.err.unknown_shape", "2", "array"),
        ("compare.err.unknown_shape", "3", "prompt: number"),
        ("compare.err.unknown_shape", "4", "messages: string")]
    check_message(errors[0], catalog, "1", "question, answer", "prompt", "conversations")


def test_bad_turns_and_roles_name_the_line_and_the_turn(tmp_path: Path, catalog: Catalog) -> None:
    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "user"}]},
            {"messages": [{"role": "tool", "content": "{}"}, {"role": "user", "content": "b"}]},
            {"conversations": [{"from": "observation", "value": "x"}]}]
    errors = errors_of(read_workload_file(write_lines(tmp_path, rows)))
    assert [(e.key, e.params["line"], e.params["turn"]) for e in errors] == [
        ("compare.err.bad_turn", "1", "2"), ("compare.err.bad_role", "2", "1"), ("compare.err.bad_role", "3", "1")]
    assert errors[1].params["role"] == "tool"
    check_message(errors[1], catalog, "2", "tool")


def test_an_empty_file_is_refused(tmp_path: Path, catalog: Catalog) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n\n", encoding="utf-8")
    error = only_error(read_workload_file(path))
    assert (error.field, error.key) == ("workload", "compare.err.empty")
    check_message(error, catalog)


def test_more_than_max_prompts_lines_is_refused(tmp_path: Path, catalog: Catalog) -> None:
    path = write_lines(tmp_path, ['{"prompt": "p"}'] * (MAX_PROMPTS + 1))
    error = only_error(read_workload_file(path))
    assert (error.key, error.params) == ("compare.err.too_many", {"count": str(MAX_PROMPTS + 1), "max": "10000"})
    check_message(error, catalog, "10001", "10000")
    assert len(prompts_of(parse_jsonl('{"prompt": "p"}\n' * MAX_PROMPTS))) == MAX_PROMPTS


def test_a_prompt_over_max_chars_is_refused(tmp_path: Path, catalog: Catalog) -> None:
    rows = [{"prompt": "x" * MAX_PROMPT_CHARS},
            {"messages": [{"role": "system", "content": "s" * MAX_PROMPT_CHARS}, {"role": "user", "content": "q"}]}]
    error = only_error(read_workload_file(write_lines(tmp_path, rows)))
    assert (error.key, error.params["line"], error.params["chars"]) == (
        "compare.err.too_long", "2", str(MAX_PROMPT_CHARS + 1))
    check_message(error, catalog, "2", str(MAX_PROMPT_CHARS))


def test_a_json_array_file_gets_its_own_hint(tmp_path: Path, catalog: Catalog) -> None:
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps([{"conversations": [{"from": "human", "value": "hi"}]}], indent=1), encoding="utf-8")
    error = only_error(read_workload_file(path))
    assert error.key == "compare.err.json_array"
    check_message(error, catalog, "jq")


def test_errors_stop_after_a_few_lines() -> None:
    errors = errors_of(parse_jsonl("not json\n" * 50))
    assert len(errors) == workload.MAX_ERRORS + 1
    assert errors[-1].key == "compare.err.more_errors"
    assert errors[-1].params == {"line": str(workload.MAX_ERRORS + 1)}


def test_file_problems_are_field_errors(tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = only_error(read_workload_file(tmp_path / "nope.jsonl"))
    assert (missing.key, missing.params["path"]) == ("compare.err.file_missing", str(tmp_path / "nope.jsonl"))
    check_message(missing, catalog, "nope.jsonl")
    folder = only_error(read_workload_file(tmp_path))
    assert folder.key == "compare.err.file_is_dir"
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    bad = only_error(read_workload_file(latin))
    assert (bad.key, bad.params["line"]) == ("compare.err.not_utf8", "2")
    check_message(bad, catalog, "latin1.jsonl", "2")
    monkeypatch.setattr(workload, "MAX_FILE_BYTES", 1024)
    big = write_lines(tmp_path, [{"prompt": "y" * 2000}], "big.jsonl")
    too_big = only_error(read_workload_file(big))
    assert too_big.key == "compare.err.file_too_big"
    check_message(too_big, catalog, "big.jsonl")


# Selection -----------------------------------------------------------------------------------------------

def _numbered(n: int) -> list[Prompt]:
    return [Prompt(f"p{i}", (("user", f"question {i}"),)) for i in range(n)]


def test_pick_is_deterministic_for_a_seed() -> None:
    prompts = _numbered(30)
    assert pick(prompts, 20, seed=1) == pick(list(prompts), 20, seed=1)
    assert pick(prompts, 20, seed=1) != pick(prompts, 20, seed=2)
    assert pick(prompts, 20, seed=1) != prompts[:20]  # shuffled, not the file order
    assert pick(prompts, 10, seed=1) == pick(prompts, 20, seed=1)[:10]  # a longer run starts the same way
    assert pick(prompts, 0, seed=1) == []


def test_pick_cycles_using_every_prompt_before_repeating() -> None:
    prompts = _numbered(7)
    chosen = pick(prompts, 23, seed=5)
    assert len(chosen) == 23
    for start in range(0, 21, 7):
        assert set(chosen[start:start + 7]) == set(prompts)  # each round is a full permutation
    assert {p.id: chosen.count(p) for p in prompts} == {p.id: 3 + (p in chosen[21:]) for p in prompts}
    with pytest.raises(ValueError):
        pick([], 1, seed=0)
    with pytest.raises(ValueError):
        pick(prompts, -1, seed=0)


# Shipped assets ------------------------------------------------------------------------------------------

def test_the_builtin_set_has_both_languages_and_both_kinds() -> None:
    prompts = builtin_prompts()
    assert 40 <= len(prompts) <= 60
    assert len({p.id for p in prompts}) == len(prompts)
    rows = [json.loads(line) for line in workload.PROMPTS_FILE.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [p.id for p in prompts]
    meta = {r["id"]: (r["lang"], r["kind"]) for r in rows}
    assert {lang for lang, _ in meta.values()} == {"en", "zh"}
    assert {kind for _, kind in meta.values()} == {"short", "long"}
    for prompt in prompts:
        lang, kind = meta[prompt.id]
        assert prompt.messages[-1][0] == "user", prompt.id
        assert {role for role, _ in prompt.messages} <= {"system", "user", "assistant"}
        user_text = prompt.messages[-1][1]
        assert bool(CJK.search(user_text)) == (lang == "zh"), prompt.id
        assert (prompt.chars < 300) if kind == "short" else (prompt.chars > 700), (prompt.id, prompt.chars)
    assert any(p.messages[0][0] == "system" for p in prompts)
    assert any(len(p.messages) >= 3 and p.messages[1][0] == "assistant" for p in prompts)


def test_quality_text_sample_is_mixed_and_user_text_is_stripped() -> None:
    sample = quality_text("sample")
    assert isinstance(sample, str) and 8000 <= len(sample) <= 12000
    assert len(CJK.findall(sample)) > 1500 and len(re.findall(r"[A-Za-z]+", sample)) > 800
    assert quality_text("  my own text\n") == "my own text"
    for empty in ("", "   \n"):
        error = quality_text(empty)
        assert isinstance(error, FieldError) and (error.field, error.key) == ("quality_text",
                                                                               "compare.err.quality_empty")
