"""Prove that a model delivered by the console's download job serves READY through the Serve service.

Usage: python scripts/gpu_download_check.py OUTPUT_DIR [--python PYTHON] [--no-serve]

The GPU machine reaches no hub, so the hub is the local endpoint of the tests (tests/hub_endpoint.py), run
in this process and spoken to by the real `huggingface_hub` client and the real download worker:
1. builds the tiny Llama offline (tests/tiny_model.py) and serves it as `internlm/tiny-chat`;
2. previews it through the Download service (files, bytes, commit), submits, waits for SUCCEEDED and checks
   every file of the downloaded folder against the source by sha256;
3. checks that the repo id now resolves to that folder (Serve's pre-flight and command preview);
4. unless --no-serve: starts an api_server (pytorch backend) with `model_path="internlm/tiny-chat"`, waits
   for READY, chats once through the Chat service, stops it and waits for STOPPED.
Writes download_check.json (and the server's log) to OUTPUT_DIR, prints PASS/FAIL per check; exits 0 only if
every check passed. Imports only the console's services (no Gradio), so it runs where Gradio is missing;
with --no-serve it runs on a machine without a GPU or LMDeploy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.checks import Checks  # noqa: E402
from tests.hub_endpoint import HubEndpoint  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402
from webui.services.chat import ChatError, SamplingParams  # noqa: E402
from webui.services.container import Services  # noqa: E402
from webui.services.downloads import DownloadRequest  # noqa: E402
from webui.services.serve_spec import ServerSpec, suggest_port  # noqa: E402
from webui.settings import Settings  # noqa: E402

REPO_ID = "internlm/tiny-chat"
MIB = 1 << 20
DOWNLOAD_TIMEOUT_S = 300.0
READY_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 60.0
# huggingface_hub reads these once, at import; the download must not be offline nor use someone's token.
CLEARED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path (hidden hub metadata folders left out)."""
    hashes = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel.split("/", 1)[0] not in (".cache", ".git"):
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                while block := fh.read(MIB):
                    digest.update(block)
            hashes[rel] = digest.hexdigest()
    return hashes


def tree_sha256(hashes: dict[str, str]) -> str:
    """One digest for a folder: its paths and their files' sha256, in order."""
    return hashlib.sha256("".join(f"{p}\0{h}\n" for p, h in sorted(hashes.items())).encode()).hexdigest()


def download(services: Services, hub: HubEndpoint, source: Path, checks: Checks,
             report: dict[str, Any]) -> Path | None:
    """Preview, submit, wait, verify; returns the downloaded folder when every step passed."""
    preview = services.downloads.preview(DownloadRequest(REPO_ID))
    if isinstance(preview, list) or preview.problem is not None or preview.listing is None:
        checks.add("preview lists the repo", False, str(preview if isinstance(preview, list) else preview.problem))
        return None
    listing = preview.listing
    source_files = [p for p in source.rglob("*") if p.is_file()]
    source_bytes = sum(p.stat().st_size for p in source_files)
    report["preview"] = {"files": len(listing.files), "total_bytes": listing.total_bytes, "sha": listing.sha,
                         "free_bytes": preview.free_bytes, "gpu_verdict": preview.gpu_verdict}
    checks.add("preview lists the repo", listing.sha == hub.sha(REPO_ID) and len(listing.files) == len(source_files)
               and listing.total_bytes == source_bytes,
               f"{len(listing.files)} files, {listing.total_bytes:,} bytes, commit {listing.sha[:12]} (source: "
               f"{len(source_files)} files, {source_bytes:,} bytes, commit {hub.sha(REPO_ID)[:12]})")

    started = time.monotonic()
    outcome = services.downloads.submit(DownloadRequest(REPO_ID))
    if outcome.download is None:
        checks.add("download SUCCEEDED", False, f"refused: {outcome.errors}")
        return None
    done = services.downloads.wait_for(outcome.download.id, {"SUCCEEDED", "FAILED", "CANCELLED", "LOST"},
                                       DOWNLOAD_TIMEOUT_S)
    seconds = time.monotonic() - started
    rate = done.total_bytes / MIB / seconds if seconds > 0 else 0.0
    report["download"] = {**done.as_dict(), "seconds": seconds, "mib_per_s": rate,
                          "log": services.downloads.log(done.id, 40)}
    report["download"].pop("files", None)
    if not checks.add("download SUCCEEDED", done.state == "SUCCEEDED",
                      f"{done.state} in {seconds:.2f} s from submit, {done.total_bytes / MIB:.1f} MiB at "
                      f"{rate:.1f} MiB/s {done.error[-300:]}"):
        print("\n".join(services.downloads.log(done.id, 20)), flush=True)
        return None

    folder = Path(done.output_dir)
    want, got = file_hashes(source), file_hashes(folder)
    differ = sorted(p for p in set(want) | set(got) if want.get(p) != got.get(p))
    report["sha256"] = {"source": tree_sha256(want), "downloaded": tree_sha256(got), "differ": differ}
    checks.add("downloaded folder matches the source (sha256 of every file)", not differ and bool(got),
               f"{len(got)} files in {folder}; tree sha256 {tree_sha256(got)[:16]}… (source "
               f"{tree_sha256(want)[:16]}…){'; differ: ' + ', '.join(differ) if differ else ''}")

    resolved = services.roots.resolve(REPO_ID)
    checked = services.servers.check(ServerSpec(model_path=REPO_ID, port=services.servers.suggest_port()))
    command = services.servers.preview(ServerSpec(model_path=REPO_ID, port=23333))
    report["resolve"] = {"resolved": str(resolved), "check": "ok" if not isinstance(checked, list) else
                         [e.__dict__ for e in checked], "command": command}
    checks.add("the repo id resolves to the downloaded folder (Serve pre-flight and command)",
               resolved == folder and not isinstance(checked, list) and str(folder) in command,
               f"{REPO_ID} → {resolved}; pre-flight {'ok' if not isinstance(checked, list) else checked}")
    return None if differ else folder


def serve(services: Services, folder: Path, checks: Checks, report: dict[str, Any]) -> None:
    """Start by repo id, wait READY, chat once, stop and wait STOPPED."""
    spec = ServerSpec(model_path=REPO_ID, backend="pytorch", cache_max_entry_count=0.4, port=suggest_port(23933))
    started = time.monotonic()
    outcome = services.servers.start(spec)
    if outcome.server is None:
        checks.add("server READY", False, f"refused: {outcome.errors}")
        return
    server_id = outcome.server.id
    report["server"] = {"id": server_id}
    ready = False
    try:
        snap = services.servers.wait_for(server_id, {"READY", "FAILED", "LOST"}, READY_TIMEOUT_S)
        waited = time.monotonic() - started
        # The snapshot's command shows the spec (the repo id); the "start" event records what was run.
        ran = next((e.detail for e in services.store.events(server_id) if e.kind == "start"), "")
        report["server"].update(state=snap.state, ready_seconds=snap.ready_seconds, waited_s=waited,
                                shown_command=snap.command, started_command=ran, model_id=snap.model_id,
                                hint=snap.hint, hint_line=snap.hint_line)
        ready = checks.add("server READY", snap.state == "READY",
                           f"{snap.state} after {snap.ready_seconds or waited:.1f} s {snap.hint} "
                           f"{snap.hint_line}".strip())
        first = ran.splitlines()[0].rstrip(" \\") if ran else "no start event"
        checks.add("the server was started on the downloaded folder", str(folder) in first,
                   f"{first}; model id {snap.model_id}")
        if ready:
            try:
                endpoint = services.chat.endpoint_for_server(server_id)
                text, stats, _ = services.chat.complete(endpoint, [{"role": "user", "content": "Hello!"}],
                                                        SamplingParams(temperature=0.7, max_tokens=32))
                report["chat"] = {"reply": text[:200], "stats": stats.as_dict()}
                checks.add("chat completion through the Chat service", stats.completion_tokens > 0,
                           f"reply of {len(text)} characters, {stats.completion_tokens} tokens, TTFT "
                           f"{(stats.ttft_s or 0) * 1000:.0f} ms")
            except ChatError as exc:
                checks.add("chat completion through the Chat service", False, f"{exc.kind}: {exc.message}")
    finally:
        now = services.servers.get(server_id)
        if now is not None and now.state in ("STARTING", "READY", "UNREACHABLE", "STOPPING"):
            t0 = time.monotonic()
            services.servers.stop(server_id)
            stopped = services.servers.wait_for(server_id, {"STOPPED", "FAILED", "LOST"}, STOP_TIMEOUT_S)
            took = time.monotonic() - t0
            report["server"]["stop"] = {"state": stopped.state, "seconds": took}
            if ready:
                checks.add("server STOPPED", stopped.state == "STOPPED", f"{stopped.state} {took:.2f} s after stop")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--python", default=sys.executable, help="interpreter with lmdeploy")
    parser.add_argument("--no-serve", action="store_true", help="stop after the download (no GPU or LMDeploy here)")
    args = parser.parse_args()
    out: Path = args.output_dir.resolve()
    cleared = {name: os.environ.pop(name) for name in CLEARED_ENV if name in os.environ}
    work, state, cache = out / "work", out / "state", out / "hf-cache"
    for folder in (work, state, cache):  # this script's own folders: a second run starts clean
        shutil.rmtree(folder, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    checks = Checks()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
                              "repo_id": REPO_ID, "serve": not args.no_serve,
                              "cleared_env": sorted(cleared)}
    try:
        import huggingface_hub

        report["huggingface_hub"] = huggingface_hub.__version__
    except ImportError:
        report["huggingface_hub"] = "not importable here"

    t0 = time.monotonic()
    source = build_tiny_model(work / "tiny-chat")
    report["build_seconds"] = time.monotonic() - t0
    print(f"built the tiny model in {report['build_seconds']:.1f} s at {source}", flush=True)
    services = None
    try:
        with HubEndpoint() as hub:
            hub.add_repo(REPO_ID, source)
            report["endpoint"] = hub.url
            services = Services.build(Settings(state_dir=state, hub_endpoint=hub.url, hf_cache_dir=cache,
                                               lmdeploy_python=args.python))
            folder = download(services, hub, source, checks, report)
        # the endpoint is gone from here on: serving must not need the hub
        if folder is not None and not args.no_serve:
            serve(services, folder, checks, report)
    except Exception as exc:  # noqa: BLE001 - a crash is one more failed check, and the report is still written
        checks.add("the check ran to its end", False, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if services is not None:
            services.close()
            for log in sorted(services.settings.log_dir.glob("server-*.log")):
                shutil.copy(log, out / log.name)
        report["checks"] = checks.rows
        report["seconds"] = time.time() - started
        report["passed"] = not checks.failed
        (out / "download_check.json").write_text(json.dumps(report, indent=2, default=str))
        passed = sum(1 for r in checks.rows if r["ok"])
        print(f"\n{passed} of {len(checks.rows)} checks passed ({report['seconds']:.0f} s); "
              f"{'PASS' if not checks.failed else 'FAIL'}; report at {out / 'download_check.json'}", flush=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
