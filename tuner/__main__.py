"""Command line: ``python -m tuner VERB ...``. Each verb lives in its own module under tuner/cli/."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from tuner.core.errors import TunerError, storage_error

# Modules under tuner.cli that each define register(subparsers). Order = order in --help.
VERB_MODULES = ["data", "check", "presets", "estimate", "train", "export", "evaluate", "chat", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tuner",
        description="Fine-tune a large language model: data, presets, training, export and chat.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        importlib.import_module(f"tuner.cli.{name}").register(sub)
    # The web app's verb: tuner.ui.launch reads its options without importing gradio (only `app` does).
    from tuner.ui import launch

    launch.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m tuner`` and the ``tuner`` command (pyproject.toml's script entry point)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    # bitsandbytes warns on every CPU import that an optional kernel package is missing; nothing to act on.
    logging.getLogger("bitsandbytes.backends.cpu").setLevel(logging.ERROR)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TunerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`tuner list-presets | head`): nothing left to say, and no traceback
        # when Python flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        # A full or read-only disk is the user's to fix, whichever library hit it: say so, no traceback.
        refused = storage_error(exc)
        if refused is None:
            raise
        print(f"error: {refused}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
