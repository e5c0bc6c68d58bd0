"""Shared demos: a READY server offered to guests through a link, with the owner's limits, expiry and revoke.

A demo's link carries a random token; the database keeps only its sha256 (a copied database opens no demo)
and the owner's copy lives in the secret store. Guests reach only `DemoGate` (what the guest app is built on):
it admits a request or refuses it with a reason, streams the reply through the console's Chat service with
the owner's settings, and writes one audit row a request. Revoking closes the demo's open streams at once.
"""

from __future__ import annotations

import hashlib
import json
import secrets as token_source
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from webui.services.chat import ChatError, ChatService, SamplingParams
from webui.services.secrets import SecretStore
from webui.services.serve import ServerManager
from webui.services.serve_spec import FieldError
from webui.services.server_states import ServerState
from webui.services.store import Store, json_object

MAX_TITLE_CHARS = 120
MAX_TEXT_CHARS = 4000
MAX_MESSAGE_CHARS = 8000
MAX_HISTORY_TURNS = 20
MAX_EXPIRY_MINUTES = 7 * 24 * 60
GUEST_IDLE_S = 300.0  # a guest counts as "now" for this long after their last request
RATE_WINDOW_S = 60.0
MAX_GUESTS_PER_ADDRESS = 8  # guests (browser sessions) one outside address may hold at once
# Refusals of a link that opens nothing now are not audited: a revoked link hammered would grow the table.
UNAUDITED = frozenset({"ended", "back_soon", "unknown"})
# Outcomes of a guest request, as audited (each has a catalog entry demo.outcome.<name>).
OUTCOMES = ("ok", "rate", "tokens", "busy", "guests", "too_long", "ended", "back_soon", "error", "stopped",
            "unknown")


@dataclass(frozen=True)
class DemoSpec:
    """What the owner publishes: which server, the guests' words and settings, and the limits."""

    server_id: str
    title: str = ""
    welcome: str = ""
    system_prompt: str = ""
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    rate_per_minute: int = 10
    max_concurrent: int = 4
    max_guests: int = 50
    expires_minutes: int = 24 * 60
    transcripts: bool = False

    def problems(self) -> list[FieldError]:
        errors = []
        texts: tuple[tuple[str, str, int], ...] = (
            ("title", self.title, MAX_TITLE_CHARS), ("welcome", self.welcome, MAX_TEXT_CHARS),
            ("system_prompt", self.system_prompt, MAX_TEXT_CHARS))
        for name, text, limit in texts:
            if len(text) > limit:
                errors.append(FieldError(name, "errors.too_long", {"length": str(len(text)), "max": str(limit)}))
        ranges: tuple[tuple[str, int, int, int], ...] = (
            ("max_new_tokens", self.max_new_tokens, 1, 8192), ("rate_per_minute", self.rate_per_minute, 1, 600),
            ("max_concurrent", self.max_concurrent, 1, 256), ("max_guests", self.max_guests, 1, 10_000),
            ("expires_minutes", self.expires_minutes, 1, MAX_EXPIRY_MINUTES))
        for name, value, low, high in ranges:
            if not low <= value <= high:
                errors.append(FieldError(name, "errors.int_range", {"min": str(low), "max": str(high)}))
        errors += SamplingParams(temperature=self.temperature, top_p=self.top_p).check()
        return errors


@dataclass(frozen=True)
class DemoSnapshot:
    """The owner's view of one demo (the token only as its link path, for the owner)."""

    id: str
    server_id: str
    state: str  # live, expired, revoked, back_soon
    spec: dict[str, Any]
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    link_path: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GuestView:
    """What a guest page shows: the owner's words and the model's name, or why the demo is not open."""

    open: bool
    reason: str = ""  # ended, back_soon, unknown
    title: str = ""
    welcome: str = ""
    model: str = ""
    max_new_tokens: int = 0


@dataclass(frozen=True)
class GuestEvent:
    """One piece of a guest's reply (text), or its end (done, with the refusal or error kind if any)."""

    text: str = ""
    done: bool = False
    refused: str = ""  # an OUTCOMES name other than ok


@dataclass
class _Live:
    """In-memory counters of one demo (rate windows, open streams, guests seen); rebuilt empty on restart."""

    windows: dict[str, deque[float]] = field(default_factory=dict)
    last_seen: dict[str, float] = field(default_factory=dict)
    address: dict[str, str] = field(default_factory=dict)  # guest -> the address it came from
    open: dict[str, str] = field(default_factory=dict)  # request id -> guest
    revoked: bool = False

    def forget_idle(self, now: float) -> None:
        """Drop guests idle past GUEST_IDLE_S and rate windows, so the counters stay as small as the crowd."""
        for guest in [g for g, seen in self.last_seen.items() if now - seen > max(GUEST_IDLE_S, RATE_WINDOW_S)]:
            if guest not in self.open.values():
                self.last_seen.pop(guest, None)
                self.windows.pop(guest, None)
                self.address.pop(guest, None)


def spec_of(row: dict[str, Any]) -> DemoSpec | None:
    """The stored spec, reading only the fields this version knows (a newer row's extra keys are left out)."""
    data = json_object(row.get("spec_json", ""))
    known = {k: v for k, v in data.items() if k in DemoSpec.__dataclass_fields__}
    try:
        return DemoSpec(**known)
    except TypeError:
        return None


def text_of(content: Any) -> str | None:
    """A turn's text: a string, or Gradio's list of blocks ([{"type": "text", "text": …}, …])."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [str(b["text"]) for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)]
        return "".join(parts) if parts else None
    if isinstance(content, dict) and isinstance(content.get("text"), str):
        return content["text"]
    return None


def history_messages(history: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The last turns of a guest's conversation as chat messages (user and assistant text only, each cut)."""
    messages = []
    for turn in history[-MAX_HISTORY_TURNS:]:
        role, text = turn.get("role"), text_of(turn.get("content"))
        if role in ("user", "assistant") and text:
            messages.append({"role": str(role), "content": text[:MAX_MESSAGE_CHARS]})
    return messages


def is_outside(address: str) -> bool:
    """An address other than this machine's (behind a share tunnel every guest comes from loopback)."""
    return bool(address) and not address.startswith(("127.", "::1", "localhost"))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def guest_id(client: str, session: str) -> str:
    """A guest: the browser session (or API client) from one address, as a short stable id (no raw IP kept)."""
    return hashlib.sha256(f"{client}|{session}".encode()).hexdigest()[:10]


class DemoManager:
    """Owns every demo of this console; app-scoped and thread-safe. The admin side publishes, lists, revokes
    and reads usage; `gate()` is the narrow face the guest app is given."""

    def __init__(self, store: Store, secrets: SecretStore, servers: ServerManager, chat: ChatService,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._secrets = secrets
        self._servers = servers
        self._chat = chat
        self._clock = clock
        self._lock = threading.Lock()
        self._live: dict[str, _Live] = {}

    # owner -----------------------------------------------------------------------------------------
    def publish(self, spec: DemoSpec) -> tuple[DemoSnapshot | None, str, tuple[FieldError, ...]]:
        """A new demo of a READY server: (its snapshot, the guest token, no errors), or the field errors."""
        errors = spec.problems()
        server = self._servers.get(spec.server_id) if spec.server_id else None
        if server is None:
            errors.insert(0, FieldError("server_id", "demo.err.no_server", {"id": spec.server_id or "-"}))
        elif server.state != ServerState.READY:
            errors.insert(0, FieldError("server_id", "demo.err.not_ready", {"id": server.id, "state": server.state}))
        if errors:
            return None, "", tuple(errors)
        token = token_source.token_urlsafe(24)
        demo_id = uuid.uuid4().hex[:8]
        now = self._clock()
        self._secrets.set(f"demo/{demo_id}/token", token)
        self._store.insert_demo({"id": demo_id, "server_id": spec.server_id, "token_hash": token_hash(token),
                                 "spec_json": json.dumps(asdict(spec)), "created_at": now,
                                 "expires_at": now + spec.expires_minutes * 60, "revoked_at": None})
        self._store.add_event(demo_id, "demo published", spec.server_id)
        snap = self.get(demo_id)
        assert snap is not None
        return snap, token, ()

    def get(self, demo_id: str) -> DemoSnapshot | None:
        row = self._store.get_demo(demo_id=demo_id)
        return self._snapshot(row) if row else None

    def snapshots(self) -> list[DemoSnapshot]:
        return [self._snapshot(row) for row in self._store.list_demos()]

    def revoke(self, demo_id: str) -> DemoSnapshot:
        """End the demo now: its link stops working and its guests' open replies are closed."""
        if self._store.get_demo(demo_id=demo_id) is None:
            raise KeyError(demo_id)
        with self._lock:  # first, so a request admitted from now on is refused
            live = self._live.setdefault(demo_id, _Live())
            live.revoked = True
            requests = list(live.open)
        self._store.revoke_demo(demo_id, self._clock())
        self._store.add_event(demo_id, "demo revoked")
        for request_id in requests:
            self._chat.cancel(request_id)
        self._secrets.delete(f"demo/{demo_id}/token")
        snap = self.get(demo_id)
        assert snap is not None
        return snap

    def usage(self, demo_id: str, audit_rows: int = 50) -> dict[str, Any]:
        """Guests now, requests, tokens generated, refusals by limit, errors, and the latest audit rows."""
        if self._store.get_demo(demo_id=demo_id) is None:
            raise KeyError(demo_id)
        totals = self._store.demo_totals(demo_id)
        by = totals["by_outcome"]
        now = self._clock()
        with self._lock:
            live = self._live.get(demo_id, _Live())
            guests_now = sum(1 for seen in live.last_seen.values() if now - seen <= GUEST_IDLE_S)
            streams = len(live.open)
        return {
            "demo_id": demo_id, "guests_now": guests_now, "guests_total": totals["guests"], "open_streams": streams,
            "requests": sum(v["requests"] for v in by.values()),
            "tokens": sum(v["tokens"] for v in by.values()),
            "refusals": {k: v["requests"] for k, v in by.items() if k not in ("ok", "error", "stopped")},
            "errors": by.get("error", {}).get("requests", 0),
            "audit": [{k: r[k] for k in ("at", "guest", "outcome", "prompt_tokens", "completion_tokens", "ttft_ms",
                                          "text")} for r in self._store.demo_requests(demo_id, audit_rows)],
        }

    def _snapshot(self, row: dict[str, Any]) -> DemoSnapshot:
        token = str(self._secrets.get(f"demo/{row['id']}/token", "") or "")
        return DemoSnapshot(id=row["id"], server_id=row["server_id"], state=self._state(row),
                            spec=json_object(row["spec_json"]), created_at=row["created_at"],
                            expires_at=row["expires_at"], revoked_at=row["revoked_at"],
                            link_path=f"/?demo={token}" if token and row["revoked_at"] is None else "")

    def _state(self, row: dict[str, Any]) -> str:
        if row["revoked_at"] is not None:
            return "revoked"
        if row["expires_at"] is not None and self._clock() >= row["expires_at"]:
            return "expired"
        server = self._servers.get(row["server_id"])
        return "live" if server is not None and server.state == ServerState.READY else "back_soon"

    # guests ----------------------------------------------------------------------------------------
    def gate(self) -> DemoGate:
        return DemoGate(self)

    def _find(self, token: str) -> dict[str, Any] | None:
        if not token or len(token) > 200:
            return None
        return self._store.get_demo(token_hash=token_hash(token))

    def _view(self, token: str) -> GuestView:
        return self._view_of(self._find(token))

    def _view_of(self, row: dict[str, Any] | None) -> GuestView:
        if row is None:
            return GuestView(open=False, reason="unknown")
        state = self._state(row)
        if state in ("revoked", "expired"):
            return GuestView(open=False, reason="ended")
        spec = spec_of(row)
        if spec is None:
            return GuestView(open=False, reason="unknown")
        server = self._servers.get(spec.server_id)
        model = (server.model_id if server else "") or ""
        if state == "back_soon":
            return GuestView(open=False, reason="back_soon", title=spec.title, welcome=spec.welcome)
        return GuestView(open=True, title=spec.title, welcome=spec.welcome, model=model.rsplit("/", 1)[-1],
                         max_new_tokens=spec.max_new_tokens)

    def _admit(self, row: dict[str, Any], spec: DemoSpec, guest: str, message: str, max_tokens: int | None,
               request_id: str, address: str = "") -> str:
        """The refusal reason ("" = admitted, and counted as an open stream). A guest holds one reply at a time,
        and one outside address at most MAX_GUESTS_PER_ADDRESS guests (a session id is the client's to choose)."""
        now = self._clock()
        if len(message) > MAX_MESSAGE_CHARS:
            return "too_long"
        if max_tokens is not None and max_tokens > spec.max_new_tokens:
            return "tokens"
        with self._lock:
            live = self._live.setdefault(row["id"], _Live())
            if live.revoked:
                return "ended"
            live.forget_idle(now)
            active = {g for g, seen in live.last_seen.items() if now - seen <= GUEST_IDLE_S}
            if guest not in active:
                if len(active) >= spec.max_guests:
                    return "guests"
                if is_outside(address) and sum(1 for g in active if live.address.get(g) == address) \
                        >= MAX_GUESTS_PER_ADDRESS:
                    return "guests"
            window = live.windows.setdefault(guest, deque())
            while window and now - window[0] > RATE_WINDOW_S:
                window.popleft()
            if len(window) >= spec.rate_per_minute:
                return "rate"
            if len(live.open) >= spec.max_concurrent or guest in live.open.values():
                return "busy"
            window.append(now)
            live.last_seen[guest] = now  # only an admitted request keeps a guest's place
            live.address[guest] = address
            live.open[request_id] = guest
        return ""

    def _release(self, demo_id: str, request_id: str) -> None:
        with self._lock:
            self._live.get(demo_id, _Live()).open.pop(request_id, None)

    def _chat_stream(self, token: str, guest: str, message: str, history: list[dict[str, Any]],
                     max_tokens: int | None, address: str = "") -> Iterator[GuestEvent]:
        row = self._find(token)
        view = self._view_of(row)  # one lookup of the token a message
        spec = spec_of(row) if row is not None else None
        if row is None or spec is None or not view.open:
            yield GuestEvent(done=True, refused=view.reason or "ended")  # not audited: see UNAUDITED
            return
        request_id = self._chat.new_request_id()
        refused = self._admit(row, spec, guest, message, max_tokens, request_id, address)
        if refused:
            if refused not in UNAUDITED:
                self._store.add_demo_request(row["id"], self._clock(), guest, refused)
            yield GuestEvent(done=True, refused=refused)
            return
        messages: list[dict[str, Any]] = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt \
            else []
        messages += history_messages(history)
        messages.append({"role": "user", "content": message})
        params = SamplingParams(temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_new_tokens)
        outcome, reply, stats = "error", [], None
        try:
            endpoint = self._chat.endpoint_for_server(spec.server_id)
            for event in self._chat.stream(endpoint, messages, params, request_id=request_id):
                if event.stats is not None:
                    stats = event.stats
                elif event.content:
                    reply.append(event.content)
                    yield GuestEvent(text=event.content)
            outcome = "ok"
            if stats is not None and stats.cancelled:
                outcome = "ended" if self._view(token).reason == "ended" else "stopped"
        except GeneratorExit:
            outcome = "stopped"  # the guest left: the stream is closed with the generator
            raise
        except ChatError as exc:
            outcome = {"cancelled": "ended" if self._view(token).reason == "ended" else "stopped",
                       "too_long": "too_long", "not_ready": "back_soon", "no_server": "back_soon",
                       "connection": "back_soon", "stream_broken": "back_soon"}.get(exc.kind, "error")
        finally:
            self._release(row["id"], request_id)
            done = int(getattr(stats, "completion_tokens", 0) or 0) or len(reply)
            self._store.add_demo_request(
                row["id"], self._clock(), guest, outcome,
                prompt_tokens=int(getattr(stats, "prompt_tokens", 0) or 0), completion_tokens=done,
                ttft_ms=(stats.ttft_s * 1000 if stats is not None and stats.ttft_s is not None else None),
                text=(f"{message}\n---\n{''.join(reply)}"[:MAX_TEXT_CHARS * 4] if spec.transcripts else ""))
        yield GuestEvent(done=True, refused="" if outcome == "ok" else outcome)


class DemoGate:
    """All a guest can do: see a demo's page and chat within its limits. Nothing else of the console."""

    def __init__(self, manager: DemoManager) -> None:
        self._manager = manager

    def view(self, token: str) -> GuestView:
        return self._manager._view(token)

    def chat(self, token: str, guest: str, message: str, history: list[dict[str, Any]],
             max_tokens: int | None = None, address: str = "") -> Iterator[GuestEvent]:
        return self._manager._chat_stream(token, guest, message, history, max_tokens, address)
