"""The requests a Compare run sends: the built-in prompt set, a user's JSON Lines file in the common chat shapes
(ShareGPT, OpenAI messages, bare prompt or text), and a seeded pick, so that every server configuration under
comparison answers exactly the same requests in the same order.

Everything here is pure (no network, no UI): problems come back as `FieldError`s for the form to show.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from webui.services.serve_spec import FieldError

MAX_PROMPTS = 10_000
MAX_PROMPT_CHARS = 200_000
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_QUALITY_CHARS = 2_000_000
# A file of the wrong shape would otherwise give one error per line; the first few say what to fix.
MAX_ERRORS = 10
SAMPLE = "sample"
FIELD = "workload"
QUALITY_FIELD = "quality_text"

# The assets folder sits beside the webui package in the source tree.
ASSETS_DIR = Path(__file__).resolve().parent.parent.parent / "assets"
PROMPTS_FILE = ASSETS_DIR / "compare_prompts.jsonl"
QUALITY_FILE = ASSETS_DIR / "compare_quality.txt"

ROLES = frozenset({"system", "user", "assistant"})
OPENAI_ROLES: Mapping[str, str] = MappingProxyType({role: role for role in ROLES})
# ShareGPT's speaker names -> chat roles (some exports already use the OpenAI names).
SHAREGPT_ROLES: Mapping[str, str] = MappingProxyType({
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
    "bing": "assistant", "bard": "assistant", "system": "system",
})
# JSON's names for what json.loads returns, to tell the user what a line held instead of an object.
_JSON_TYPES: Mapping[type, str] = MappingProxyType({
    dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "true/false",
    type(None): "null",
})
# The line shapes, in the order they are tried: the first key a line has decides how it is read.
SHAPES = ("messages", "conversations", "prompt", "text")


@dataclass(frozen=True)
class Prompt:
    """One chat request; messages are (role, content) pairs so that the prompt is hashable and immutable."""

    id: str
    messages: tuple[tuple[str, str], ...]

    def as_messages(self) -> list[dict[str, str]]:
        """The OpenAI `messages` list to send (a fresh list each call, safe to modify)."""
        return [{"role": role, "content": content} for role, content in self.messages]

    @property
    def chars(self) -> int:
        """Characters of all turns together: a cheap measure of the prompt's length."""
        return sum(len(content) for _, content in self.messages)


class _LineProblem(Exception):
    """One line refused; carries the catalog key and parameters (the line number is added by the caller)."""

    def __init__(self, key: str, **params: object) -> None:
        super().__init__(key)
        self.key = key
        self.params = {k: str(v) for k, v in params.items()}


def _content_text(content: Any) -> str | None:
    """A turn's text: a string, or OpenAI's list of parts when every part is text; None for anything else."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        parts = [p.get("text") if isinstance(p, dict) and p.get("type") == "text" else None for p in content]
        if all(isinstance(p, str) for p in parts):
            return "\n".join(p for p in parts if isinstance(p, str))
    return None


def _turns(row: dict[str, Any], key: str, role_key: str, text_key: str,
           roles: Mapping[str, str]) -> list[tuple[str, str]]:
    """Read row[key], a list of turns, into (role, text) pairs cut after the last user turn (later turns are
    the recorded answer, not part of the request)."""
    items = row[key]
    if not isinstance(items, list):
        raise _LineProblem("compare.err.unknown_shape", keys=f"{key}: {_JSON_TYPES.get(type(items), '?')}")
    turns: list[tuple[str, str]] = []
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise _LineProblem("compare.err.bad_turn", turn=number)
        role = item.get(role_key)
        text = _content_text(item.get(text_key))
        if not isinstance(role, str) or text is None:
            raise _LineProblem("compare.err.bad_turn", turn=number)
        if role not in roles:
            raise _LineProblem("compare.err.bad_role", turn=number, role=role[:40])
        turns.append((roles[role], text))
    last_user = max((i for i, (role, _) in enumerate(turns) if role == "user"), default=-1)
    if last_user < 0 or not turns[last_user][1].strip():
        raise _LineProblem("compare.err.no_user_turn")
    return turns[: last_user + 1]


def _read_line(row: Any) -> list[tuple[str, str]]:
    """The request one JSON value stands for, or _LineProblem."""
    if not isinstance(row, dict):
        raise _LineProblem("compare.err.unknown_shape", keys=_JSON_TYPES.get(type(row), "?"))
    if "messages" in row:
        return _turns(row, "messages", "role", "content", OPENAI_ROLES)
    if "conversations" in row:
        return _turns(row, "conversations", "from", "value", SHAREGPT_ROLES)
    for key in ("prompt", "text"):
        if key in row:
            value = row[key]
            if not isinstance(value, str):
                raise _LineProblem("compare.err.unknown_shape", keys=f"{key}: {_JSON_TYPES.get(type(value), '?')}")
            if not value.strip():
                raise _LineProblem("compare.err.no_user_turn")
            return [("user", value)]
    keys = ", ".join(str(k)[:40] for k in list(row)[:6]) or "{}"
    raise _LineProblem("compare.err.unknown_shape", keys=keys)


def _line_id(row: Any, number: int) -> str:
    """The line's own id when it has one (ShareGPT and the built-in set do), else its line number."""
    value = row.get("id") if isinstance(row, dict) else None
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value).strip()[:200]
    return f"line-{number}"


def parse_jsonl(text: str) -> list[Prompt] | list[FieldError]:
    """Read one request per line; blank lines are skipped. Either every line is good (the prompts, in file order)
    or the errors of the first MAX_ERRORS bad lines come back, each naming its line and the fix."""
    text = text.removeprefix("\ufeff")
    # Split on newlines only: JSON strings may hold U+2028 and other characters str.splitlines() breaks at.
    lines = [(number, line.strip()) for number, line in enumerate(text.split("\n"), 1)]
    lines = [(number, line) for number, line in lines if line]
    if not lines:
        return [FieldError(FIELD, "compare.err.empty", {})]
    if len(lines) > MAX_PROMPTS:
        return [FieldError(FIELD, "compare.err.too_many", {"count": str(len(lines)), "max": str(MAX_PROMPTS)})]
    if lines[0][1].startswith("["):
        return [FieldError(FIELD, "compare.err.json_array", {})]
    prompts: list[Prompt] = []
    errors: list[FieldError] = []
    for number, line in lines:
        if len(errors) >= MAX_ERRORS:
            errors.append(FieldError(FIELD, "compare.err.more_errors", {"line": str(number)}))
            break
        try:
            row = json.loads(line)
        except ValueError as exc:
            error = getattr(exc, "msg", str(exc))
            errors.append(FieldError(FIELD, "compare.err.invalid_json", {"line": str(number), "error": error}))
            continue
        try:
            turns = _read_line(row)
        except _LineProblem as problem:
            errors.append(FieldError(FIELD, problem.key, {"line": str(number), **problem.params}))
            continue
        chars = sum(len(content) for _, content in turns)
        if chars > MAX_PROMPT_CHARS:
            errors.append(FieldError(FIELD, "compare.err.too_long",
                                     {"line": str(number), "chars": str(chars), "max": str(MAX_PROMPT_CHARS)}))
            continue
        prompts.append(Prompt(_line_id(row, number), tuple(turns)))
    return errors or prompts


def read_workload_file(path: str | Path) -> list[Prompt] | list[FieldError]:
    """parse_jsonl over a file, refusing a missing path, a folder, a file over MAX_FILE_BYTES or one not UTF-8."""
    path = Path(path).expanduser()
    shown = str(path)
    if not path.exists():
        return [FieldError(FIELD, "compare.err.file_missing", {"path": shown})]
    if path.is_dir():
        return [FieldError(FIELD, "compare.err.file_is_dir", {"path": shown})]
    if not path.is_file():  # a FIFO or a device would block the read (and the page's worker with it)
        return [FieldError(FIELD, "compare.err.file_unreadable", {"path": shown, "error": "not a regular file"})]
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return [FieldError(FIELD, "compare.err.file_too_big", {
                "path": shown, "size": f"{size / 2**20:.0f}", "max": str(MAX_FILE_BYTES // 2**20)})]
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)  # the file may grow between stat and read
    except OSError as exc:
        return [FieldError(FIELD, "compare.err.file_unreadable", {"path": shown, "error": exc.strerror or str(exc)})]
    if len(raw) > MAX_FILE_BYTES:
        return [FieldError(FIELD, "compare.err.file_too_big", {
            "path": shown, "size": f"{len(raw) / 2**20:.0f}", "max": str(MAX_FILE_BYTES // 2**20)})]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return [FieldError(FIELD, "compare.err.not_utf8", {"path": shown, "line": str(line)})]
    return parse_jsonl(text)


def builtin_prompts() -> list[Prompt]:
    """The shipped set (English and Chinese, short questions and long passages); a broken asset is a bug."""
    result = parse_jsonl(PROMPTS_FILE.read_text(encoding="utf-8"))
    if not result or isinstance(result[0], FieldError):
        raise RuntimeError(f"{PROMPTS_FILE} is malformed: {result[:3]}")
    return [p for p in result if isinstance(p, Prompt)]


def pick(prompts: list[Prompt], count: int, seed: int) -> list[Prompt]:
    """`count` requests in a seeded random order; past the end a fresh shuffle follows, so every prompt is used
    once before any is used twice. Same inputs, same list; a longer run starts with a shorter run's requests."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count and not prompts:
        raise ValueError("no prompts to pick from")
    rng = random.Random(seed)
    chosen: list[Prompt] = []
    while len(chosen) < count:
        order = list(prompts)
        rng.shuffle(order)
        chosen.extend(order[: count - len(chosen)])
    return chosen


def quality_text(source: str) -> str | FieldError:
    """The text perplexity is measured on: SAMPLE gives the shipped mixed English/Chinese passage, anything
    else is the user's own text (stripped)."""
    if source == SAMPLE:
        return QUALITY_FILE.read_text(encoding="utf-8").strip()
    text = (source or "").strip()
    if not text:
        return FieldError(QUALITY_FIELD, "compare.err.quality_empty", {})
    if len(text) > MAX_QUALITY_CHARS:
        return FieldError(QUALITY_FIELD, "compare.err.quality_too_long",
                          {"chars": str(len(text)), "max": str(MAX_QUALITY_CHARS)})
    return text
