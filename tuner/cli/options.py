"""Options shared by verbs: ``--set KEY=VALUE`` for those that read a config; whole-number arguments."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_set_option(parser, example: str) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``, for tuner.config.load_config."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a setting (repeatable), e.g. {example}",
    )


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``, else a message saying which."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            need = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
            raise argparse.ArgumentTypeError(f"{need}: {value}")
        return value

    return parse
