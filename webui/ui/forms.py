"""Forms bound by one value object.

A form's values are one frozen dataclass whose field names are the API's parameter names. `Form` gives an event
handler the signature those names make (Gradio reads it for the API's parameters and still injects `gr.Request`),
finds the page's components by field name, and turns raw values (as a script or the page sends them) into typed
ones in this one place. Events bound here take `RAW_INPUTS`: Gradio's own checks (minimum, maximum, choices) would
refuse a value with a message that names neither the field nor the fix, and a non-number would crash the event;
here every problem becomes a FieldError that `format_errors` shows in the page's language, and the services'
checks (ranges, choices, paths) see only typed values.
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import math
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeAlias, TypeVar

import gradio as gr

from webui.services.serve_spec import FieldError

V = TypeVar("V")
R = TypeVar("R")
# What a form's field can be shown with: each has a `change` event (Gradio declares events per component class,
# so `Component` itself has none).
FormInput: TypeAlias = gr.Dropdown | gr.Radio | gr.Slider | gr.Number | gr.Textbox | gr.Checkbox

# A form-bound event's setting: raw values reach Form.parse.
RAW_INPUTS: Mapping[str, Any] = MappingProxyType({"preprocess": False})
RULE = "form_rule"
PATH_MAX_BYTES = 4095  # Linux PATH_MAX less the final NUL
NAME_MAX_BYTES = 255  # one folder or file name
MAX_PATH_LINES = 256
SHOWN_CHARS = 40  # a refused value is echoed this far, so a huge one cannot flood the page
HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                       r"[A-Za-z0-9])?)*")
TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True)
class Rule:
    """How one raw value becomes a typed one: its kind, how long it may be, and the field its errors name."""

    kind: str  # text, numbers, path, paths, host, int, float, flag
    max_chars: int = 256  # text and host (paths are measured in bytes, per name and in all)
    required: bool = False  # the API parameter has no default (the dataclass still has one, for parsing)
    error_field: str = ""  # when the page labels the field under another name (calib_paths → calib_files)


def text(default: str = "", max_chars: int = 256) -> Any:
    return field(default=default, metadata={RULE: Rule("text", max_chars)})


def numbers(default: str = "", max_chars: int = 256) -> Any:
    """Text such as "0,1" that an API client may also send as a JSON list ([0, 1]): the list is read as its JSON
    text, for the field's own check to judge."""
    return field(default=default, metadata={RULE: Rule("numbers", max_chars)})


def key_list(text: str) -> tuple[str, ...]:
    """API keys as the forms take them: separated by spaces or commas."""
    return tuple(text.replace(",", " ").split())


def path(default: str = "", required: bool = False) -> Any:
    return field(default=default, metadata={RULE: Rule("path", PATH_MAX_BYTES, required)})


def paths(default: str = "", error_field: str = "") -> Any:
    """One path a line."""
    return field(default=default, metadata={RULE: Rule("paths", error_field=error_field)})


def host(default: str) -> Any:
    return field(default=default, metadata={RULE: Rule("host", 255)})


def whole(default: int) -> Any:
    return field(default=default, metadata={RULE: Rule("int")})


def number(default: float) -> Any:
    return field(default=default, metadata={RULE: Rule("float")})


def flag(default: bool) -> Any:
    return field(default=default, metadata={RULE: Rule("flag")})


@dataclass(frozen=True)
class Parsed(Generic[V]):
    """A form's values, typed; a refused field holds its default and has its FieldError in `errors`."""

    values: V
    errors: tuple[FieldError, ...] = ()


def merge_errors(first: Iterable[FieldError], later: Iterable[FieldError]) -> list[FieldError]:
    """The form's own errors, then the services' errors for the other fields (theirs judged a substituted default)."""
    first = list(first)
    refused = {e.field for e in first}
    return [*first, *(e for e in later if e.field not in refused)]


class Form(Generic[V]):
    """One values dataclass bound to handlers (their signature) and to the page's components (by field name)."""

    def __init__(self, values_type: type[V]) -> None:
        if not is_dataclass(values_type):
            raise TypeError(f"{values_type.__name__} is not a dataclass")
        self.values_type = values_type
        self.fields = tuple(fields(values_type))
        self.rules: Mapping[str, Rule] = {f.name: f.metadata[RULE] for f in self.fields}
        hints = typing.get_type_hints(values_type)
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        parameters = [
            # None stands for "the form's default", so view_api shows every optional parameter as optional.
            inspect.Parameter(f.name, kind, annotation=hints[f.name],
                              default=inspect.Parameter.empty if self.rules[f.name].required else None)
            for f in self.fields
        ]
        parameters.append(inspect.Parameter("request", kind, default=None, annotation=gr.Request))
        self.signature = inspect.Signature(parameters)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def inputs(self, holder: object) -> list[FormInput]:
        """The holder's components for the form's fields, taken by name; a missing or extra one fails at build."""
        held = {f.name for f in fields(holder)} if is_dataclass(holder) else set(vars(holder))
        if held != set(self.names):
            raise TypeError(f"{type(holder).__name__} must hold exactly the fields of {self.values_type.__name__}: "
                            f"missing {sorted(set(self.names) - held)}, extra {sorted(held - set(self.names))}")
        return [getattr(holder, name) for name in self.names]

    def bind(self, handler: Callable[[Parsed[V], gr.Request | None], R]) -> Callable[..., R]:
        """`handler(parsed, request)` as an event function whose parameters are the form's fields, then request."""

        def bound(*args: Any, **kwargs: Any) -> R:
            arguments = dict(self.signature.bind(*args, **kwargs).arguments)
            request = arguments.pop("request", None)
            return handler(self.parse(arguments), request)

        bound.__signature__ = self.signature  # type: ignore[attr-defined]
        # Gradio finds gr.Request by the annotation (typing.get_type_hints), not by the signature.
        bound.__annotations__ = {p.name: p.annotation for p in self.signature.parameters.values()}
        bound.__name__ = bound.__qualname__ = handler.__name__
        bound.__doc__ = handler.__doc__
        return bound

    def parse(self, raw: Mapping[str, Any]) -> Parsed[V]:
        """Typed values from raw ones; None (or a missing name) is the field's default."""
        values, errors = _convert_all((f.name, self.rules[f.name], raw.get(f.name), f.default) for f in self.fields)
        return Parsed(self.values_type(**values), tuple(errors))


def convert_numbers(raw: Mapping[str, tuple[Any, int | float]]) -> tuple[dict[str, Any], list[FieldError]]:
    """The numbers of a JSON endpoint (name → (raw value, default); the default's type says whole or not)."""
    return _convert_all(
        (name, Rule("int" if isinstance(default, int) and not isinstance(default, bool) else "float"), value, default)
        for name, (value, default) in raw.items()
    )


def _convert_all(items: Iterable[tuple[str, Rule, Any, Any]]) -> tuple[dict[str, Any], list[FieldError]]:
    """(name, rule, raw value, default) → the typed values (a refused one as its default) and the errors."""
    values: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name, rule, value, default in items:
        converted = default if value is None else convert(rule, name, value, default)
        if isinstance(converted, FieldError):
            errors.append(converted)
            converted = default
        values[name] = converted
    return values, errors


def convert(rule: Rule, name: str, value: Any, default: Any) -> Any:
    """One raw value as the rule's type, or the FieldError that names the field and says what to enter."""
    field_name = rule.error_field or name
    shown = _shown(value)
    if rule.kind in ("int", "float") and value == "":
        return default  # a cleared number box
    if rule.kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number_value = _number(value)
        if number_value is None or not number_value.is_integer():
            return FieldError(field_name, "errors.not_whole_number", {"value": shown, "example": str(default)})
        return int(number_value)
    if rule.kind == "float":
        number_value = _number(value)
        if number_value is None:
            return FieldError(field_name, "errors.not_a_number", {"value": shown, "example": f"{default:g}"})
        return number_value
    if rule.kind == "flag":
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower() if isinstance(value, (str, int)) else None
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        if word == "":
            return default
        return FieldError(field_name, "errors.not_true_false", {"value": shown})
    if rule.kind == "numbers" and isinstance(value, (list, tuple)):
        value = json.dumps(list(value))[:rule.max_chars + 1]  # anything but a list of numbers is refused as such
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return FieldError(field_name, "errors.not_text", {"kind": type(value).__name__})
    text_value = str(value)
    if "\x00" in text_value:
        return FieldError(field_name, "errors.nul_character", {})
    if rule.kind in ("path", "paths"):
        lines = text_value.splitlines() if rule.kind == "paths" else [text_value]
        if len(lines) > MAX_PATH_LINES:
            return FieldError(field_name, "errors.too_many_paths", {"count": str(len(lines)),
                                                                    "max": str(MAX_PATH_LINES)})
        for line in lines:
            if _path_too_long(line.strip()):
                return FieldError(field_name, "errors.path_too_long", {
                    "path": _shown(line.strip()), "max": str(PATH_MAX_BYTES), "name_max": str(NAME_MAX_BYTES)})
        return text_value
    if len(text_value) > rule.max_chars:
        return FieldError(field_name, "errors.too_long", {"length": f"{len(text_value):,}",
                                                          "max": f"{rule.max_chars:,}"})
    if rule.kind == "host":
        stripped = text_value.strip()
        if not stripped:
            return default
        if not (_is_ip(stripped) or HOST_NAME.fullmatch(stripped)):
            return FieldError(field_name, "errors.bad_host", {"value": shown})
        return stripped
    return text_value


def _number(value: Any) -> float | None:
    """A finite number from a number or its text; None for anything else (True and False are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        result = float(value.strip()) if isinstance(value, str) else float(value)
    except (ValueError, OverflowError):
        return None
    return result if math.isfinite(result) else None


def _path_too_long(text_value: str) -> bool:
    encoded = text_value.encode("utf-8", errors="surrogatepass")
    return len(encoded) > PATH_MAX_BYTES or any(len(part) > NAME_MAX_BYTES for part in encoded.split(b"/"))


def _is_ip(text_value: str) -> bool:
    try:
        ipaddress.ip_address(text_value.strip("[]"))
    except ValueError:
        return False
    return True


def _shown(value: Any) -> str:
    text_value = str(value)
    return text_value if len(text_value) <= SHOWN_CHARS else text_value[:SHOWN_CHARS] + "…"
