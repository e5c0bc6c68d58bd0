"""One catalog of every label and message, in English and Chinese, read from the TOML files beside it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CATALOG_DIR = Path(__file__).parent
LOCALES = ("en", "zh")
DEFAULT_LOCALE = "en"


def _flatten(prefix: str, table: dict[str, Any], out: dict[str, str]) -> None:
    for key, value in table.items():
        full = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            _flatten(full, value, out)
        else:
            out[full] = str(value)


class _SafeFormat(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class Catalog:
    """Immutable after load; shared by the whole app. Keys look like `serve.start_button`."""

    def __init__(self, messages: dict[str, dict[str, str]]) -> None:
        self.messages = messages

    @classmethod
    def load(cls, folder: Path = CATALOG_DIR) -> Catalog:
        messages: dict[str, dict[str, str]] = {}
        for locale in LOCALES:
            flat: dict[str, str] = {}
            with open(folder / f"{locale}.toml", "rb") as handle:
                _flatten("", tomllib.load(handle), flat)
            messages[locale] = flat
        return cls(messages)

    def keys(self, locale: str = DEFAULT_LOCALE) -> set[str]:
        return set(self.messages[locale])

    def text(self, key: str, locale: str = DEFAULT_LOCALE, **params: object) -> str:
        """The message for key in locale (falling back to English, then to the key itself)."""
        table = self.messages.get(locale) or self.messages[DEFAULT_LOCALE]
        template = table.get(key) or self.messages[DEFAULT_LOCALE].get(key) or key
        return template.format_map(_SafeFormat({k: str(v) for k, v in params.items()}))

    @staticmethod
    def locale_from_header(accept_language: str | None) -> str:
        """Pick en or zh from an Accept-Language header ('zh-CN,zh;q=0.9,en;q=0.8' -> 'zh')."""
        best, best_q = DEFAULT_LOCALE, -1.0
        for part in (accept_language or "").split(","):
            pieces = part.strip().split(";")
            tag = pieces[0].strip().lower()
            q = 1.0
            for param in pieces[1:]:
                if param.strip().startswith("q="):
                    try:
                        q = float(param.strip()[2:])
                    except ValueError:
                        q = 0.0
            lang = tag.split("-")[0]
            if lang in LOCALES and q > best_q:
                best, best_q = lang, q
        return best
