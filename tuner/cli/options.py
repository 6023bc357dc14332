"""Options shared by the verbs that read a config: ``--set KEY=VALUE``."""

from __future__ import annotations


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
