"""Start the web app: ``tuner app`` (or ``python app.py``) ``[--host 127.0.0.1] [--port 7860] [--lang en|zh]``.

It listens on 127.0.0.1 only, unless ``--listen`` (all interfaces), which needs ``--auth USER:PASS``
or an explicit ``--no-auth``: training and file access must not be open to the network by accident.
The options are checked before gradio is imported, so a refused combination fails at once.
"""

from __future__ import annotations

import argparse
import os

from tuner.ui.common import MAX_UPLOAD_BYTES

DESCRIPTION = (
    "tuner web app: data, presets, training, export and chat. The folder it is started in is the "
    "workspace (data, runs and models live there)."
)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--lang", choices=["en", "zh"], default="en", help="interface language (default en)")
    p.add_argument(
        "--listen", action="store_true", help="bind 0.0.0.0 (every interface); needs --auth or --no-auth"
    )
    p.add_argument("--auth", metavar="USER:PASS", help="require this login")
    p.add_argument("--no-auth", action="store_true", help="with --listen: really serve without a login")
    p.add_argument(
        "--share", action="store_true", help="a public gradio.live link (off by default; needs --auth)"
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python app.py``."""
    return add_arguments(argparse.ArgumentParser(prog="app.py", description=DESCRIPTION))


def register(sub) -> None:
    """The ``app`` verb of ``python -m tuner`` / ``tuner``."""
    parser = sub.add_parser("app", help="start the web app (http://127.0.0.1:7860)", description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(func=run)


def launch_options(args: argparse.Namespace) -> dict:
    """The demo.launch() keywords for parsed ``args``; SystemExit with a message for unsafe combinations.

    >>> launch_options(build_parser().parse_args([]))["server_name"]
    '127.0.0.1'
    """
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            raise SystemExit("error: --auth must look like USER:PASS")
        auth = (user, password)
    exposed = args.listen or args.share or args.host not in ("127.0.0.1", "localhost", "::1")
    if exposed and auth is None and not args.no_auth:
        raise SystemExit(
            "error: --listen/--share/--host expose the app to other machines; add --auth USER:PASS "
            "(or --no-auth if you really want it open)"
        )
    return {
        "server_name": "0.0.0.0" if args.listen else args.host,
        "server_port": args.port,
        "auth": auth,
        "share": bool(args.share),
        "inbrowser": False,
        "max_file_size": MAX_UPLOAD_BYTES,  # larger uploads are refused before they are stored
    }


def run(args: argparse.Namespace) -> int:
    options = launch_options(args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tuner.ui.app import CSS, build_app

    demo = build_app(args.lang)
    demo.queue(default_concurrency_limit=4)
    demo.launch(css=CSS, **options)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python app.py``."""
    return run(build_parser().parse_args(argv))
