"""Streaming chat over the openai SDK against any OpenAI-compatible server, with the numbers a user tunes by.

Every reply reports time to first token, tokens per second and token counts. Stop closes the HTTP stream,
which is what makes LMDeploy (and llama.cpp) abort the request and free its slot. Errors become ChatError
with a kind the UI can explain; nothing from the server is executed.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import httpx2 as httpx  # the transport of openai 3; its errors surface from a stream
import openai

from webui.services.serve import ServerManager, ServerState, normalize_base_url
from webui.services.serve_spec import FieldError
from webui.services.tools import ToolCallAssembler

if TYPE_CHECKING:
    from openai import Stream
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

TOOL_PARSER_MESSAGE = "--tool-call-parser"
CLIENT_CACHE = 16
# Each has a catalog entry chat.errors.<kind> that explains it and shows the server's words.
ERROR_KINDS = ("connection", "auth", "not_ready", "needs_parser", "not_found", "bad_request", "server", "timeout",
               "cancelled", "no_server", "bad_url", "step_limit", "stream_broken", "not_openai", "too_long",
               "empty_reply", "asleep")
# A conversation longer than this (about 100,000 tokens) fits no context the console's servers take: it is
# refused with a message rather than sent (a 1 MB message used to come back as an empty reply).
MAX_CONVERSATION_CHARS = 400_000


@dataclass(frozen=True)
class Endpoint:
    """Where to send requests: a console server (server_id set) or any OpenAI-compatible base URL."""

    base_url: str
    api_key: str = ""
    model: str = ""
    lmdeploy: bool = False
    server_id: str = ""

    def masked(self) -> dict[str, Any]:
        """What may be shown or logged: the key is never included."""
        return {"base_url": self.base_url, "model": self.model, "lmdeploy": self.lmdeploy,
                "server_id": self.server_id, "has_api_key": bool(self.api_key)}


@dataclass(frozen=True)
class SamplingParams:
    """The knobs of one request; top_k and repetition_penalty are LMDeploy extras, sent only to LMDeploy."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def check(self) -> list[FieldError]:
        errors = []
        if not 0.0 <= self.temperature <= 2.0:
            errors.append(FieldError("temperature", "chat.errors.temperature", {"value": str(self.temperature)}))
        if not 0.0 < self.top_p <= 1.0:
            errors.append(FieldError("top_p", "chat.errors.top_p", {"value": str(self.top_p)}))
        if not 1 <= self.max_tokens <= 1_000_000:
            errors.append(FieldError("max_tokens", "chat.errors.max_tokens", {"value": str(self.max_tokens)}))
        if not 0 <= self.top_k <= 100_000:
            errors.append(FieldError("top_k", "chat.errors.top_k", {"value": str(self.top_k)}))
        if not 0.5 <= self.repetition_penalty <= 2.0:
            errors.append(FieldError("repetition_penalty", "chat.errors.repetition_penalty",
                                     {"value": str(self.repetition_penalty)}))
        return errors

    def request_kwargs(self, lmdeploy: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p,
                                  "max_tokens": self.max_tokens}
        if self.seed is not None:
            kwargs["seed"] = self.seed
        extra: dict[str, Any] = {}
        if lmdeploy:
            if self.top_k:
                extra["top_k"] = self.top_k
            if self.repetition_penalty != 1.0:
                extra["repetition_penalty"] = self.repetition_penalty
        if extra:
            kwargs["extra_body"] = extra
        return kwargs


class ChatError(Exception):
    """A failed request, classified: connection, auth, not_ready, needs_parser, not_found, bad_request,
    server, timeout, cancelled. `message` is the server's own words where it gave any."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.status = status


@dataclass(frozen=True)
class ReplyStats:
    """Numbers for one reply. `usage_reported` is False when the server sent no usage (tokens are counted
    from stream chunks then, one per chunk, and prompt tokens are unknown)."""

    ttft_s: float | None
    seconds: float
    completion_tokens: int
    prompt_tokens: int | None
    finish_reason: str
    usage_reported: bool
    cancelled: bool = False

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed: tokens after the first over the time after the first token."""
        if self.ttft_s is None or self.completion_tokens < 2 or self.seconds <= self.ttft_s:
            return None
        return (self.completion_tokens - 1) / (self.seconds - self.ttft_s)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["tokens_per_s"] = self.tokens_per_s
        return out


@dataclass
class StreamEvent:
    """One step of a streamed reply: new text (content or reasoning), or the end with stats and calls."""

    content: str = ""
    reasoning: str = ""
    stats: ReplyStats | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def incomplete(self) -> bool:
        """The stream ended without a finish reason and was not stopped: the server broke it off."""
        return self.stats is not None and not self.stats.finish_reason


class ChatService:
    """Talks to servers; app-scoped and thread-safe. Keeps one openai client per (URL, key) so that a
    request pays no connection-pool set-up, and the open streams by request id so Stop can close them."""

    def __init__(self, servers: ServerManager | None = None, timeout_s: float = 600.0,
                 connect_timeout_s: float = 5.0) -> None:
        self._servers = servers
        self._timeout = openai.Timeout(timeout_s, connect=connect_timeout_s)
        self._clients: dict[tuple[str, str], openai.OpenAI] = {}
        self._open: dict[str, Any] = {}
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()

    # endpoints -----------------------------------------------------------------------------------
    def endpoint_for_server(self, server_id: str = "") -> Endpoint:
        """The console server's endpoint (the active one when no id): READY required."""
        if self._servers is None:
            raise ChatError("no_server", "this chat service knows no console servers; give a base URL")
        snap = self._servers.get(server_id) if server_id else self._servers.active()
        if snap is None:
            raise ChatError("no_server", "no active server: start one on the Serve tab or enter a URL")
        if snap.state == ServerState.SLEEPING:  # Chat says how to wake it
            raise ChatError("asleep", f"server {snap.id} is asleep")
        if snap.state != ServerState.READY:
            raise ChatError("not_ready", f"server {snap.id} is {snap.state}, not READY")
        key = self._servers.api_key(snap.id)
        lmdeploy = snap.owned or self._is_lmdeploy(snap.base_url, key)
        model = snap.model_id
        if not model:  # a proxy lists no model until its first node is added: ask now, not at its READY
            ids = self.models(Endpoint(snap.base_url, key))
            if not ids:
                raise ChatError("not_found", f"server {snap.id} lists no models yet")
            model = ids[0]
        return Endpoint(snap.base_url, key, model, lmdeploy, snap.id)

    def endpoint_for_url(self, base_url: str, api_key: str = "", model: str = "") -> Endpoint:
        """Any OpenAI-compatible server; the model defaults to the first one it lists."""
        url = normalize_base_url(base_url)
        ids = self.models(Endpoint(url, api_key))
        if model and model not in ids:
            raise ChatError("not_found", f"the server does not list model {model!r}; it lists {', '.join(ids)}")
        if not ids:
            raise ChatError("not_found", "the server lists no models")
        return Endpoint(url, api_key, model or ids[0], self._is_lmdeploy(url, api_key))

    def models(self, endpoint: Endpoint) -> list[str]:
        return [m["id"] for m in self._model_list(endpoint.base_url, endpoint.api_key)]

    def _model_list(self, base_url: str, api_key: str) -> list[dict[str, Any]]:
        """GET /v1/models. A server without it (404, or a page that is not the API's JSON) is not an
        OpenAI-compatible server at all, e.g. this console's own address: said so, not "model not found"."""
        try:
            page = self._client(base_url, api_key).models.list()
            return [m.model_dump() for m in page.data]
        except openai.NotFoundError as exc:
            raise ChatError("not_openai", f"{base_url}/v1/models answered 404", 404) from exc
        except (openai.APIResponseValidationError, AttributeError, TypeError, ValueError) as exc:
            raise ChatError("not_openai", f"{base_url}/v1/models did not answer with a model list") from exc
        except openai.OpenAIError as exc:
            raise classify(exc, base_url) from exc

    def _is_lmdeploy(self, base_url: str, api_key: str) -> bool:
        try:
            return any(m.get("owned_by") == "lmdeploy" for m in self._model_list(base_url, api_key))
        except ChatError:
            return False

    # requests ------------------------------------------------------------------------------------
    def new_request_id(self) -> str:
        return uuid.uuid4().hex

    def cancel(self, request_id: str) -> bool:
        """Close the request's HTTP stream now (from any thread); the server aborts the generation."""
        with self._lock:
            self._cancelled.add(request_id)
            stream = self._open.get(request_id)
        if stream is None:
            return False
        try:
            stream.close()
        except Exception:  # noqa: BLE001 - closing a half-read socket may raise; it is closed either way
            pass
        return True

    def stream(
        self,
        endpoint: Endpoint,
        messages: list[dict[str, Any]],
        params: SamplingParams,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        request_id: str = "",
    ) -> Iterator[StreamEvent]:
        """Stream one reply. Yields text as it comes, then one final event with stats and tool calls.

        Closing the generator (or `cancel(request_id)`) closes the HTTP stream; the final event then has
        `cancelled=True`.
        """
        request_id = request_id or self.new_request_id()
        check_length(messages)
        kwargs = _kwargs(endpoint, params, tools, tool_choice)
        if endpoint.lmdeploy:
            kwargs["stream_options"] = {"include_usage": True}
        started = time.perf_counter()
        first: float | None = None
        chunks = 0
        usage = None
        finish = ""
        calls = ToolCallAssembler()
        cancelled = False
        stream = None
        streaming = False
        try:
            with self._lock:
                if request_id in self._cancelled:
                    raise ChatError("cancelled", "stopped before it started")
            stream = cast("Stream[ChatCompletionChunk]", self._client(endpoint.base_url, endpoint.api_key)
                          .chat.completions.create(model=endpoint.model, messages=cast(Any, messages), stream=True,
                                                   **kwargs))
            with self._lock:
                self._open[request_id] = stream
                cancelled = request_id in self._cancelled
            if cancelled:
                stream.close()
            streaming = True
            for chunk in () if cancelled else stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                delta = choice.delta
                text = delta.content or ""
                # NOTE: an extra field, read from model_extra: getattr on a missing pydantic field raises inside,
                # which costs more per chunk than everything else here.
                reasoning = (delta.model_extra or {}).get("reasoning_content") or ""
                if delta.tool_calls:
                    calls.add([c.model_dump() for c in delta.tool_calls])
                if text or reasoning or delta.tool_calls:
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - started
                if choice.finish_reason:
                    finish = choice.finish_reason
                if text or reasoning:
                    yield StreamEvent(content=text, reasoning=reasoning)
        except GeneratorExit:
            cancelled = True
            raise
        except (openai.OpenAIError, httpx.HTTPError) as exc:
            with self._lock:
                was_cancelled = request_id in self._cancelled
            if not was_cancelled:
                if (streaming and not isinstance(exc, openai.APIStatusError)) or _broken_off(exc):
                    raise ChatError("stream_broken", f"{endpoint.base_url} broke off the stream: {exc}") from exc
                raise classify(exc, endpoint.base_url) from exc
            cancelled = True
        finally:
            if stream is not None:
                stream.close()
            with self._lock:
                self._open.pop(request_id, None)
                cancelled = cancelled or request_id in self._cancelled
                self._cancelled.discard(request_id)
        if not cancelled and chunks == 0 and not finish and not calls.result():
            raise ChatError("empty_reply", f"{endpoint.base_url} ended the reply without text, tool calls or a "
                                           "finish reason")
        stats = ReplyStats(
            ttft_s=first,
            seconds=time.perf_counter() - started,
            completion_tokens=usage.completion_tokens if usage is not None else chunks,
            prompt_tokens=usage.prompt_tokens if usage is not None else None,
            finish_reason=finish or ("cancelled" if cancelled else ""),
            usage_reported=usage is not None,
            cancelled=cancelled,
        )
        yield StreamEvent(stats=stats, tool_calls=calls.result())

    def request_once(
        self,
        endpoint: Endpoint,
        messages: list[dict[str, Any]],
        params: SamplingParams,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
    ) -> StreamEvent:
        """One request without streaming, for servers that cannot stream a case (llama.cpp cannot stream
        tool_choice auto). Returns the same final event; time to first token is the whole request."""
        check_length(messages)
        kwargs = _kwargs(endpoint, params, tools, tool_choice)
        started = time.perf_counter()
        # One retry: a connection that a server broke off just before may still sit in the pool.
        client = self._client(endpoint.base_url, endpoint.api_key).with_options(max_retries=1)
        try:
            reply = cast("ChatCompletion", client.chat.completions.create(
                model=endpoint.model, messages=cast(Any, messages), stream=False, **kwargs))
        except (openai.OpenAIError, httpx.HTTPError) as exc:
            raise classify(exc, endpoint.base_url) from exc
        seconds = time.perf_counter() - started
        choice = reply.choices[0] if reply.choices else None
        message = choice.message if choice else None
        calls = [c.model_dump() for c in (message.tool_calls or [])] if message else []
        usage = reply.usage
        stats = ReplyStats(ttft_s=seconds, seconds=seconds,
                           completion_tokens=usage.completion_tokens if usage else 0,
                           prompt_tokens=usage.prompt_tokens if usage else None,
                           finish_reason=(choice.finish_reason if choice else "") or "",
                           usage_reported=usage is not None)
        calls = [{"id": c.get("id") or f"call_{i}", "type": "function",
                  "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"] or ""}}
                 for i, c in enumerate(calls)]
        return StreamEvent(content=(message.content or "") if message else "", stats=stats, tool_calls=calls)

    def complete(self, endpoint: Endpoint, messages: list[dict[str, Any]], params: SamplingParams,
                 **kwargs: Any) -> tuple[str, ReplyStats, list[dict[str, Any]]]:
        """The whole reply at once (built on the stream, so the same stats and errors apply)."""
        text: list[str] = []
        for event in self.stream(endpoint, messages, params, **kwargs):
            text.append(event.content)
            if event.stats is not None:
                return "".join(text), event.stats, event.tool_calls
        raise ChatError("server", "the stream ended without a final event")

    def _client(self, base_url: str, api_key: str) -> openai.OpenAI:
        key = (base_url, api_key)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                if len(self._clients) >= CLIENT_CACHE:
                    self._clients.pop(next(iter(self._clients))).close()
                client = openai.OpenAI(base_url=base_url.rstrip("/") + "/v1", api_key=api_key or "none",
                                       max_retries=0, timeout=self._timeout)
                self._clients[key] = client
            return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


def _kwargs(endpoint: Endpoint, params: SamplingParams, tools: list[dict[str, Any]] | None,
            tool_choice: str | dict[str, Any] | None) -> dict[str, Any]:
    kwargs = params.request_kwargs(endpoint.lmdeploy)
    if tools:
        kwargs["tools"] = tools
        if tool_choice:
            kwargs["tool_choice"] = tool_choice
    return kwargs


def check_length(messages: list[dict[str, Any]]) -> None:
    """Refuse a conversation no server could take, before anything is sent."""
    total = sum(len(str(m.get("content") or "")) for m in messages)
    if total > MAX_CONVERSATION_CHARS:
        raise ChatError("too_long", f"{total:,} characters; at most {MAX_CONVERSATION_CHARS:,} are sent")


def classify(exc: BaseException, base_url: str) -> ChatError:
    """Turn an SDK or transport error into a ChatError whose message a user can act on."""
    if isinstance(exc, openai.APITimeoutError) or isinstance(exc, httpx.TimeoutException):
        return ChatError("timeout", f"{base_url} did not answer in time")
    if isinstance(exc, openai.APIConnectionError) or isinstance(exc, httpx.TransportError):
        return ChatError("connection", f"cannot connect to {base_url}: is the server running?")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = error_message(exc.response)
        if status == 401:
            return ChatError("auth", message or "the API key was refused", status)
        if status == 503 and "sleeping" in message.lower():  # LMDeploy after POST /sleep, until POST /wakeup
            return ChatError("asleep", message, status)
        if status == 503:
            return ChatError("not_ready", message or "the server is not ready yet", status)
        if status == 404:
            return ChatError("not_found", message, status)
        if status == 400 and TOOL_PARSER_MESSAGE in message:
            return ChatError("needs_parser", message, status)
        if 400 <= status < 500:
            return ChatError("bad_request", message, status)
        return ChatError("server", message or f"HTTP {status}", status)
    return ChatError("server", str(exc))


def _broken_off(exc: BaseException) -> bool:
    """The server accepted the connection and closed it without a (whole) response: it is up, but it
    could not serve this request (unlike a refused connection, which means it is down)."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, (httpx.RemoteProtocolError, httpx.ReadError)):
            return True
        current = current.__cause__
    return False


def error_message(response: httpx.Response) -> str:
    """The message of an error body: LMDeploy's flat `{"message": …}`, OpenAI's `{"error": {"message"}}`,
    FastAPI's `{"detail": …}`, or the text itself."""
    try:
        body = response.json()
    except (json.JSONDecodeError, httpx.ResponseNotRead, UnicodeDecodeError):
        try:
            return response.text.strip()[:500]
        except httpx.ResponseNotRead:
            return ""
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        for key in ("message", "detail", "error"):
            if body.get(key):
                value = body[key]
                return value if isinstance(value, str) else json.dumps(value)
    return json.dumps(body)[:500]


def with_system(messages: list[dict[str, Any]], system_prompt: str) -> list[dict[str, Any]]:
    """The messages to send: the system prompt first (when any), never duplicated."""
    rest = [m for m in messages if m.get("role") != "system"]
    return ([{"role": "system", "content": system_prompt}] if system_prompt.strip() else []) + rest


def export_json(messages: list[dict[str, Any]], endpoint: Endpoint | None, params: SamplingParams,
                stats: list[dict[str, Any]]) -> str:
    """A conversation as JSON that can be replayed: messages, settings and per-reply numbers (no key)."""
    return json.dumps({"endpoint": endpoint.masked() if endpoint else None, "params": params.__dict__,
                       "messages": messages, "replies": stats}, ensure_ascii=False, indent=2)


def export_markdown(messages: list[dict[str, Any]], notes: Sequence[str]) -> str:
    """A conversation as Markdown for a demo write-up; each assistant turn carries its note, in order.

    The notes are the replies' numbers as the UI words them (in the page's language): this layer only knows
    the numbers (ReplyStats.as_dict).
    """
    lines: list[str] = []
    replies = iter(notes)
    for message in messages:
        role = message.get("role", "")
        lines.append(f"**{role}**")
        lines.append("")
        lines.append(str(message.get("content") or ""))
        if role == "assistant":
            note = next(replies, None)
            if note:
                lines.append("")
                lines.append(f"*{note}*")
        lines.append("")
    return "\n".join(lines).strip() + "\n"
