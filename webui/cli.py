"""Command-line options -> Settings -> services -> the launched app."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from webui.settings import Settings, default_state_dir


class OptionError(Exception):
    """A launch option that cannot be honoured; the message names the option and the fix."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmdeploy-console",
        description="A browser console over LMDeploy: quantize, serve, chat, call tools, watch GPU memory.",
    )
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (default 127.0.0.1; anything else needs --auth)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                        help="port of the console (default 7860)")
    parser.add_argument("--auth", action="append", default=[], metavar="USER:PASS",
                        help="a login; repeat for several")
    parser.add_argument("--auth-file", type=Path, help="a file with one USER:PASS per line")
    parser.add_argument("--share", action="store_true",
                        help="a public Gradio share link for the guest app that demo links open; the console itself "
                             "is never shared")
    parser.add_argument("--share-server-address", default="", metavar="HOST:PORT",
                        help="a self-hosted share server (frp) for --share instead of Gradio's")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help=f"database, logs and outputs (default {default_state_dir()})")
    parser.add_argument("--model-root", type=Path, action="append", default=[], metavar="DIR",
                        help="a folder the console may read models from and write outputs to; repeatable "
                             "(default: the state folder)")
    parser.add_argument("--lmdeploy-python", default="",
                        help="the Python interpreter that has lmdeploy installed (default: this one)")
    parser.add_argument("--keep-servers", action="store_true",
                        help="leave api_servers running when the console exits (they are re-attached next time)")
    parser.add_argument("--demo-host", default="127.0.0.1",
                        help="address of the guest app that shared demos open (default 127.0.0.1; 0.0.0.0 lets the "
                             "LAN reach it: it is guest-only, so no --auth is needed)")
    parser.add_argument("--demo-port", type=int, default=0,
                        help="port of the guest app (default: the console's port + 1)")
    parser.add_argument("--gpu-sample-hz", type=float, default=2.0,
                        help="how often the Memory tab's one sampler reads NVML (0.1 to 20 per second; default 2)")
    return parser


def parse_auth(pairs: Sequence[str], auth_file: Path | None) -> tuple[tuple[str, str], ...]:
    lines = list(pairs)
    if auth_file is not None:
        try:
            text = auth_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise OptionError(f"--auth-file {auth_file}: cannot read it ({exc.strerror}).") from exc
        lines += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    out = []
    for line in lines:
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise OptionError("--auth expects USER:PASS with a non-empty user and password.")
        out.append((user, password))
    return tuple(out)


def settings_from_args(args: argparse.Namespace) -> Settings:
    if not 1 <= args.port <= 65535:
        raise OptionError(f"--port {args.port}: choose a port between 1 and 65535.")
    if not 0.1 <= args.gpu_sample_hz <= 20:
        raise OptionError(f"--gpu-sample-hz {args.gpu_sample_hz}: choose 0.1 to 20 readings a second (2 is plenty).")
    state_dir = (args.state_dir or default_state_dir()).expanduser().resolve()
    roots = []
    for root in args.model_root:
        path = root.expanduser().resolve()
        if not path.is_dir():
            raise OptionError(f"--model-root {root}: no such folder; create it or pass an existing one.")
        roots.append(path)
    settings = Settings(
        host=args.host,
        port=args.port,
        auth=parse_auth(args.auth, args.auth_file),
        share=args.share,
        state_dir=state_dir,
        model_roots=tuple(roots) or (state_dir,),
        lmdeploy_python=args.lmdeploy_python,
        keep_servers=args.keep_servers,
        gpu_sample_hz=args.gpu_sample_hz,
        demo_host=args.demo_host.strip().strip("[]"),  # [::1], as URLs write it, binds as ::1
        demo_port=args.demo_port,
        share_server_address=args.share_server_address,
    )
    if args.demo_port and not 1 <= args.demo_port <= 65535 or args.demo_port == args.port:
        raise OptionError(f"--demo-port {args.demo_port}: choose a free port other than --port {args.port}.")
    problem = settings.exposure_problem()
    if problem:
        raise OptionError(problem)
    return settings


def configure_logging(settings: Settings) -> None:
    """The console's own log (what its background threads hit, with tracebacks) on stderr and in
    `<state dir>/console.log` (rotated at 5 MB, 3 kept). API keys never reach it: nothing logs them."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [
        logging.StreamHandler(sys.stderr),
        logging.handlers.RotatingFileHandler(settings.state_dir / "console.log", maxBytes=5 << 20, backupCount=3,
                                             encoding="utf-8"),
    ]
    logger = logging.getLogger("webui")
    logger.setLevel(logging.INFO)
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except OptionError as exc:
        print(f"lmdeploy-console: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    # Imported late so `--help` and option errors answer instantly.
    from webui.app import build_app, prepare_to_serve
    from webui.guest_app import build_guest_app
    from webui.services.container import Services
    from webui.services.login_guard import LoginGuard

    services = Services.build(settings)
    demo, launch_kwargs = build_app(services)
    prepare_to_serve(demo)
    # The guest app first, on its own port: demo links, the LAN and a share link reach it, never the console.
    guest, guest_kwargs = build_guest_app(services.demos.gate())
    guest.queue(max_size=256, default_concurrency_limit=None)
    try:
        _, _, share_url = guest.launch(server_name=settings.demo_host, server_port=settings.guest_port,
                                       share=settings.share, share_server_address=settings.share_server_address or None,
                                       allowed_paths=[], prevent_thread_lock=True, quiet=True,
                                       **guest_kwargs)
    except OSError as exc:
        print(f"lmdeploy-console: the guest app cannot listen on {settings.demo_host}:{settings.guest_port} "
              f"({exc}); pass --demo-port with a free port.", file=sys.stderr)
        services.close()
        return 2
    if settings.share and not share_url:
        logging.getLogger("webui").warning("the share server could not be reached: guests can use %s on this "
                                           "machine or its network", settings.guest_url)
    services.store.set_pref("demo.share", "off" if not settings.share else (share_url or "unreachable"))

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        demo.launch(
            server_name=settings.host,
            server_port=settings.port,
            # Gradio's own auth has no rate limit or lockout; the guard adds both.
            auth=LoginGuard(settings.auth).check if settings.auth else None,
            share=False,  # --share is for the guest app: the console is never on a public link
            allowed_paths=[],
            footer_links=["api", "gradio", "settings"],
            **launch_kwargs,
        )
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short: it is what stops the servers.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        demo.close()  # no request reaches the services while they stop
        guest.close()
        services.close()
    return 0
