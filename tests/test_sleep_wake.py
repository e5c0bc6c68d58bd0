"""Sleep and wake a server through the ServerManager: real child processes (the stand-in api_server answers
LMDeploy's POST /sleep, /wakeup and GET /is_sleeping, and 503 to chat while asleep; llama.cpp's server has no
such routes), the state the monitor keeps, the events the Memory tab marks, and what Chat says meanwhile."""

from __future__ import annotations

import json
import time
import urllib.request
from types import SimpleNamespace

import pytest

from tests.conftest import MODEL_NAME
from webui.i18n.catalog import Catalog
from webui.services.chat import ChatError, SamplingParams
from webui.services.container import Services
from webui.services.serve import READY_RECHECK_S
from webui.services.serve_spec import ServerSpec
from webui.services.server_states import ServerState
from webui.settings import Settings
from webui.ui.chat_tab import ChatHandlers
from webui.ui.target_picker import OTHER_URL, TargetHandlers

READY, SLEEPING = ServerState.READY.value, ServerState.SLEEPING.value


def is_sleeping(base_url: str) -> bool:
    with urllib.request.urlopen(base_url + "/is_sleeping", timeout=5) as resp:  # noqa: S310 - loopback
        return bool(json.loads(resp.read())["is_sleeping"])


def start_ready(services: Services, settings: Settings) -> str:
    spec = ServerSpec(model_path=str(settings.model_roots[0] / MODEL_NAME), backend="pytorch",
                      port=services.servers.suggest_port(), api_keys=("sk-sleepy",))
    outcome = services.servers.start(spec)
    assert outcome.server is not None, outcome.errors
    return services.servers.wait_for(outcome.server.id, {READY, "FAILED"}, 60).id


def chat_once(services: Services, server_id: str, endpoint=None) -> str:
    endpoint = endpoint or services.chat.endpoint_for_server(server_id)
    text, _stats, _messages = services.chat.complete(endpoint, [{"role": "user", "content": "hi"}],
                                                     SamplingParams(max_tokens=8))
    return text


def test_sleep_then_wake(fake_services: Services, settings: Settings) -> None:
    servers = fake_services.servers
    server_id = start_ready(fake_services, settings)
    url = servers.get(server_id).base_url
    awake = fake_services.chat.endpoint_for_server(server_id)
    assert chat_once(fake_services, server_id, endpoint=awake)

    slept = servers.sleep(server_id)  # the key is sent: the stand-in, like LMDeploy, checks it on POST routes
    assert not slept.error and slept.server.state == SLEEPING and slept.seconds is not None
    assert is_sleeping(url)
    with pytest.raises(ChatError) as refused:  # the endpoint as Chat holds it from before the sleep
        chat_once(fake_services, server_id, endpoint=awake)
    assert refused.value.kind == "asleep"
    with pytest.raises(ChatError) as picked:  # picked in Chat while asleep
        fake_services.chat.endpoint_for_server(server_id)
    assert picked.value.kind == "asleep"
    time.sleep(READY_RECHECK_S + 1.0)  # the monitor sees /health 200 ("sleeping") and keeps the state
    assert servers.get(server_id).state == SLEEPING
    again = servers.sleep(server_id)
    assert again.error == "errors.server_state" and again.params["needs"] == READY

    woke = servers.wake(server_id)
    assert not woke.error and woke.server.state == READY and not is_sleeping(url)
    assert chat_once(fake_services, server_id)
    kinds = [e.kind for e in fake_services.store.events(server_id)]
    assert kinds.index("slept") < kinds.index("woke")  # the Memory tab's markers
    assert servers.wake(server_id).error == "errors.server_state"


def test_a_sleeping_server_stops_like_any_other(fake_services: Services, settings: Settings) -> None:
    servers = fake_services.servers
    server_id = start_ready(fake_services, settings)
    assert servers.sleep(server_id).server.state == SLEEPING
    servers.stop(server_id)
    assert servers.wait_for(server_id, {ServerState.STOPPED.value}, 30).state == ServerState.STOPPED.value
    assert servers.sleep(server_id).error == "errors.server_state"


def test_a_server_without_sleep_refuses_by_name(chat_server, bare_settings: Settings) -> None:
    services = Services.build(bare_settings)
    try:
        attached = services.servers.attach(chat_server.base_url, chat_server.api_key)
        services.servers.wait_for(attached.id, {READY}, 60)
        refused = services.servers.sleep(attached.id)  # llama.cpp's server has no /sleep: 404, nothing changes
        assert refused.error == "errors.server_control" and refused.params["status"] == 404
        assert services.servers.get(attached.id).state == READY
    finally:
        services.close()


def test_chat_offers_wake_for_an_asleep_server(fake_services: Services, settings: Settings) -> None:
    """The Chat tab's handlers: the send that met the 503 is followed by a Wake button, which wakes the server from
    there; no button for a server that is awake, for another URL, or for a server that is gone."""
    catalog = Catalog.load()
    handlers = ChatHandlers(fake_services.chat, TargetHandlers(fake_services.chat, fake_services.servers, catalog),
                            catalog)
    zh = SimpleNamespace(headers={"accept-language": "zh-CN,zh;q=0.9"})
    server_id = start_ready(fake_services, settings)
    assert handlers.offer_wake(server_id).visible is False
    assert handlers.offer_wake(OTHER_URL).visible is False and handlers.offer_wake("gone").visible is False
    fake_services.servers.sleep(server_id)
    assert handlers.offer_wake(server_id).visible is True
    text, button = handlers.wake_target(server_id, zh)  # type: ignore[arg-type]
    assert button.visible is False and server_id in text and "唤醒" in text, text
    assert fake_services.servers.get(server_id).state == READY and chat_once(fake_services, server_id)
    text, button = handlers.wake_target(server_id, zh)  # awake already: the refusal, in the page's words
    assert text.startswith("⚠") and button.visible is True and "errors.server_state" not in text
