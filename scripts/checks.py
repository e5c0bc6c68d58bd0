"""Named pass/fail checks with the numbers behind them, as the GPU scripts print and save them."""

from __future__ import annotations


class Checks:
    """Each check is printed as it is made (PASS/FAIL, name, value) and kept for the script's JSON report."""

    def __init__(self) -> None:
        self.rows: list[dict[str, object]] = []

    def add(self, name: str, ok: bool, value: str) -> bool:
        self.rows.append({"check": name, "ok": bool(ok), "value": value})
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {value}", flush=True)
        return bool(ok)

    @property
    def failed(self) -> bool:
        return not self.rows or any(not r["ok"] for r in self.rows)
