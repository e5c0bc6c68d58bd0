"""The hub token, given once in the browser, reaches only the owner-only secret file and children's environments:
never the database, a log, the state folder, the page's config or any API response."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from gradio_client import Client

from tests.conftest import fake_argv_factory, launched_console, place_model
from tests.hub_endpoint import HubEndpoint
from tests.test_browser import TIMEOUT_MS, browser  # noqa: F401 - the shared Chromium fixture
from webui.settings import Settings

pytestmark = pytest.mark.browser

GATED = "meta-llama/tiny-gated"
TOKEN = "hf_SecretTokenSeenOnlyByTheHub0042"


def wait_for(read, done, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value):
            return value
        assert time.monotonic() < deadline, value
        time.sleep(0.2)


def test_the_token_never_leaves_the_secret_file(browser, tmp_path: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    from playwright.sync_api import expect

    source = place_model(tiny_model_dir, tmp_path / "hub-files", "tiny")
    with HubEndpoint() as hub:
        hub.add_repo(GATED, source, gated=True, tokens=frozenset({TOKEN}))
        settings = Settings(state_dir=tmp_path / "state", hub_endpoint=hub.url, hf_cache_dir=tmp_path / "hf-cache")
        with launched_console(settings, argv_factory=fake_argv_factory()) as console:
            # Given once in the page: the box empties, only a masked hint stays.
            page = browser.new_page(locale="en-US", viewport={"width": 1400, "height": 1200})
            page.goto(console.url)
            page.get_by_text("Hub token (for gated or private repos)").click()
            box = page.locator("#models-token input")
            box.fill(TOKEN)
            page.locator("#models-token-save").click()
            status = page.locator("#models-token-status")
            expect(status).to_contain_text("hf_…0042", timeout=TIMEOUT_MS)
            expect(box).to_have_value("", timeout=TIMEOUT_MS)
            secrets = settings.secrets_path
            assert json.loads(secrets.read_text())["hub/token"] == TOKEN
            assert secrets.stat().st_mode & 0o777 == 0o600
            html = page.content()
            page.close()

            api = Client(console.url + "/", verbose=False)
            responses: list[object] = [html]
            try:
                listing = api.predict(repo_id=GATED, api_name="/model_files")
                responses.append(listing)
                assert listing["gated"] and not listing["needs_token"]
                message, download_id = api.predict(repo_id=GATED, api_name="/download_model")
                responses.append(message)
                assert download_id, message
                done = wait_for(lambda: api.predict(download_id=download_id, api_name="/download_progress"),
                                lambda d: d["state"] in ("SUCCEEDED", "FAILED"))
                assert done["state"] == "SUCCEEDED", done
                assert TOKEN in hub.bearer_tokens_seen()

                # LMDeploy's child gets it as HF_TOKEN in its environment, never on its command line.
                started = api.predict(model_path=GATED, api_name="/start_server")
                responses.append(started)
                server_id = started[1]
                assert server_id, started[0]
                ready = wait_for(lambda: api.predict(api_name="/list_servers"),
                                 lambda servers: any(s["id"] == server_id and s["state"] == "READY" for s in servers))
                pid = next(s["pid"] for s in ready if s["id"] == server_id)
                child = psutil.Process(pid)
                assert child.environ().get("HF_TOKEN") == TOKEN
                assert not any(TOKEN in part for part in child.cmdline())

                # Every API name that needs no argument, and those that take the ids above.
                endpoints = api.view_api(print_info=False, return_format="dict")["named_endpoints"]
                for name, info in endpoints.items():
                    if not any(not p["parameter_has_default"] for p in info["parameters"]):
                        responses.append(api.predict(api_name=name))
                responses.append(api.predict(server_id=server_id, api_name="/server_log"))
                responses.append(api.predict(download_id=download_id, api_name="/download_progress"))
                responses.append(api.predict(model_path=GATED, api_name="/preview_command"))
                with urllib.request.urlopen(console.url + "/config") as reply:  # noqa: S310 - loopback test server
                    responses.append(reply.read().decode())
            finally:
                api.close()
            assert len(responses) >= 14  # the page, the config and every public name that can be called bare
            for response in responses:
                assert TOKEN not in json.dumps(response, default=str)
            console.services.store.checkpoint()
            # Nothing in the state folder holds it but the secret file: database, logs, job files, progress.
            for path in settings.state_dir.rglob("*"):
                if path.is_file() and path != secrets:
                    assert TOKEN.encode() not in path.read_bytes(), path
    assert os.environ.get("HF_TOKEN") != TOKEN  # the console's own environment was never changed
