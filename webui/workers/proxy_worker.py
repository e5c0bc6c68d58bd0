"""Child process of the console's proxy: LMDeploy's own `lmdeploy serve proxy`, with its node file in the state folder.

Usage: python -m webui.workers.proxy_worker NODE_FILE serve proxy [options of `lmdeploy serve proxy`]

LMDeploy 0.18.0 keeps the proxy's node list ("cache status") in `proxy_config.json` beside its own source file in
site-packages, with no option to move it, and reads that file when the module is imported, even under
`--disable-cache-status`: every proxy of one install would share (and be seeded with) the same nodes. This worker
imports the module, points its node manager at NODE_FILE instead (an empty NODE_FILE: no file, no nodes carried
over), then hands the arguments to LMDeploy's own CLI unchanged.

It also closes a race of LMDeploy 0.18.0's proxy (see `tolerate_removal`): a node removed with `/nodes/remove`
while a request was being routed to it answered that request with 500 (KeyError) instead of serving it; and its
heartbeat keeps OpenAI-compatible nodes that have no `/health` route (see `heartbeat_for_any_server`).

API keys come in the environment variable LMDEPLOY_CONSOLE_PROXY_KEYS (a JSON list; a process's environment is
readable by its own user only), never in argv, which any user of the machine can read with `ps`; they are appended
to the CLI's arguments inside this process only. With keys, the `/nodes/*` routes need one too (see
`guard_node_routes`).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

KEYS_ENV = "LMDEPLOY_CONSOLE_PROXY_KEYS"
# One node's check (connect, read). LMDeploy's own has none, so one hung node stalled the heartbeat; its /health may
# take twice LMDEPLOY_HEALTH_PROBE_TIMEOUT (10 s) to answer when it probes its engine, so the read gets 60 s.
HEARTBEAT_TIMEOUT_S = (5.0, 60.0)


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1:3] != ["serve", "proxy"]:
        sys.exit("usage: python -m webui.workers.proxy_worker NODE_FILE serve proxy [options]")
    node_file, cli_args = argv[0], argv[1:]
    keys = [str(k) for k in json.loads(os.environ.pop(KEYS_ENV, "") or "[]") if k]

    # Importing it starts the heartbeat thread (its period is read here). NOTE: `import lmdeploy.serve.proxy.proxy
    # as m` fails in 0.18.0 ("cannot import name 'proxy' from 'serve'"); import_module does not.
    proxy_module = importlib.import_module("lmdeploy.serve.proxy.proxy")

    manager = proxy_module.node_manager
    manager.nodes = {}  # whatever the import read from site-packages belongs to no proxy of this console
    if node_file:
        manager.config_path = node_file
        path = Path(node_file)
        if path.is_file() and path.stat().st_size > 0 and "--disable-cache-status" not in cli_args:
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
                manager.nodes = {url: proxy_module.Status.model_validate_json(status) for url, status in saved.items()}
                print(f"console: {len(manager.nodes)} node(s) read from {node_file}", flush=True)
            except (OSError, ValueError, AttributeError) as exc:  # a damaged file: start empty, say so
                manager.nodes = {}
                print(f"console: {node_file} could not be read ({exc}); the proxy starts with no nodes", flush=True)
    else:
        manager.config_path = os.devnull

    tolerate_removal(manager)
    heartbeat_for_any_server(manager)
    if keys:
        guard_node_routes(proxy_module.app, keys)

    from lmdeploy.cli.entrypoint import run

    sys.argv = ["lmdeploy", *cli_args, *(["--api-keys", *keys] if keys else [])]
    run()


def guard_node_routes(app: Any, keys: list[str]) -> None:
    """LMDeploy's key check skips `/nodes/*` (add, remove, terminate), so anyone who reaches a proxy with keys could
    still register a node of their own under a served model name and receive the users' prompts, and their keys,
    which the proxy hands on. With keys, this proxy asks for one on every route but /health and the docs, with
    LMDeploy's own middleware (the console sends its key on its /nodes calls)."""
    from lmdeploy.serve.utils.server_utils import AuthenticationMiddleware

    class KeyOnNodeRoutes(AuthenticationMiddleware):
        def __init__(self, inner: Any, tokens: list[str]) -> None:
            super().__init__(inner, tokens)
            kept: list[str] = [prefix for prefix in self.skip_prefixes if prefix != "/nodes"]  # type: ignore[has-type]
            self.skip_prefixes = kept

    app.add_middleware(KeyOnNodeRoutes, tokens=keys)


def tolerate_removal(manager: Any) -> None:
    """`/nodes/remove` runs in a worker thread and pops the node while the event loop may be between picking that
    node and counting the request on it (`pre_call`: `self.nodes[url].unfinished += 1`), or inside the pick itself
    (min_expected_latency reads `get_nodes(role)[url]` again per candidate): a KeyError and a 500 for a request
    the removed node, still running, could serve. Measured: 2 of 3,000 requests with removals under load.
    Here a request already routed to a node being removed is still sent there, and a pick that lost a node is made
    again; nothing else of LMDeploy's routing changes."""
    pick = manager.get_node_url

    def pre_call(node_url: str) -> float:
        status = manager.nodes.get(node_url)
        if status is not None:
            status.unfinished += 1
        return time.time()

    def get_node_url(*args: Any, **kwargs: Any) -> Any:
        for _ in range(3):
            try:
                return pick(*args, **kwargs)
            except KeyError:  # a node removed while it was being picked: pick among those left
                continue
        return pick(*args, **kwargs)

    manager.pre_call = pre_call
    manager.get_node_url = get_node_url


def heartbeat_for_any_server(manager: Any) -> None:
    """LMDeploy's heartbeat drops every node whose `GET /health` is not 200, so a node that is not an LMDeploy
    api_server and has no such route (llama-cpp-python's server answers 404) was dropped at the first beat while it
    served well; and it waits with no timeout on a node that accepts but never answers. Here a node whose /health
    answers 404 is kept too: it is up, and it served models when it was added. (Asking its /v1/models instead
    would take llama-cpp-python's model lock, which cuts a streamed reply short or waits for it.) Every other
    node is dropped as LMDeploy drops it, each check bounded by HEARTBEAT_TIMEOUT_S, and a node re-added while
    the beat ran is not removed by it."""
    import requests

    def alive(url: str) -> bool:
        try:
            status = requests.get(f"{url}/health", headers={"accept": "application/json"},
                                  timeout=HEARTBEAT_TIMEOUT_S).status_code
        except Exception:  # noqa: BLE001 - as LMDeploy's own check: whatever fails, the node did not answer
            return False
        return status in (200, 404)

    def remove_stale_nodes_by_expiration() -> None:
        for url, status in list(manager.nodes.items()):
            if not alive(url) and manager.nodes.get(url) is status:
                manager.remove(url)
                print(f"console: removed node {url}: it did not answer the heartbeat", flush=True)

    manager.remove_stale_nodes_by_expiration = remove_stale_nodes_by_expiration


if __name__ == "__main__":
    main(sys.argv[1:])
