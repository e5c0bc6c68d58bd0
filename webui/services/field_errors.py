"""A refused form field, shared by every spec check (servers, jobs, placement, the proxy)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One refused field: the form field's name, a catalog key and the values the message needs."""

    field: str
    key: str
    params: dict[str, str] = dataclasses.field(default_factory=dict)
