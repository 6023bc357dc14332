"""Preset verbs: list-presets, copy-preset, validate-config."""

from __future__ import annotations

import argparse
import sys

from tuner.cli.options import add_set_option


def register(subparsers) -> None:
    """Add the preset verbs to the ``python -m tuner`` parser."""
    p = subparsers.add_parser(
        "list-presets",
        help="list the shipped presets and your workspace's presets/",
        description="List presets: name, method, model and the GPU memory each needs.",
    )
    p.add_argument("-p", "--pattern", help="only names containing PATTERN (case-insensitive; * and ? glob)")
    p.add_argument("-l", "--long", action="store_true", help="also show each preset's description and file")
    p.set_defaults(func=list_cmd)

    p = subparsers.add_parser(
        "copy-preset",
        help="copy a preset to DIR/NAME_copy.yaml for editing",
        description="Copy a preset to DIR/NAME_copy.yaml; an existing copy is never overwritten.",
    )
    p.add_argument("name", metavar="NAME", help="preset name (see list-presets) or a .yaml path")
    p.add_argument("dir", metavar="DIR", help="folder to write the copy into")
    p.set_defaults(func=copy_cmd)

    p = subparsers.add_parser(
        "validate-config",
        help="check a config or preset and print every problem",
        description="Check a config file (or preset name) and print all its problems; exit 1 if any.",
    )
    p.add_argument("file", metavar="FILE", help="a .yaml config file or a preset name")
    add_set_option(p, "--set lr=1e-4 --set max_length=1024")
    p.add_argument(
        "--no-check-files",
        dest="check_files",
        action="store_false",
        help="do not require the data files to exist (e.g. on another machine)",
    )
    p.set_defaults(func=validate_cmd)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def list_cmd(args: argparse.Namespace) -> int:
    """Print presets as a table; exit 1 when none matches the pattern."""
    from tuner.config.presets import list_presets

    presets = list_presets(args.pattern)
    if not presets:
        where = f" matching {args.pattern!r}" if args.pattern else ""
        print(f"no preset{where}; see all with: python -m tuner list-presets", file=sys.stderr)
        return 1
    rows = [["NAME", "METHOD", "MODEL", "GPU MEMORY"]]
    for info in presets:
        memory = info.gpu_memory.split(" (")[0].split(";")[0] or "?"
        name = info.name + (" *" if info.source == "workspace" else "")
        rows.append([name, info.method, info.model, f"(unreadable: {info.error})" if info.error else memory])
    print(_table(rows))
    if args.long:
        for info in presets:
            print(f"\n{info.name}\n  {info.description}\n  file: {info.path}")
            if info.command:
                print(f"  run:  {info.command}")
    notes = ["* = from your workspace's presets/"] if any(i.source == "workspace" for i in presets) else []
    notes.append("copy one to edit it: python -m tuner copy-preset NAME .")
    print("\n" + "\n".join(notes))
    return 0


def copy_cmd(args: argparse.Namespace) -> int:
    """Copy a preset; never overwrites (the error says what to do)."""
    from tuner.config.presets import copy_preset

    dest = copy_preset(args.name, args.dir)
    print(f"wrote {dest}")
    print(f"edit it, check it with: python -m tuner validate-config {dest}")
    print(f"then train with:        python -m tuner train {dest}")
    return 0


def validate_cmd(args: argparse.Namespace) -> int:
    """Print every problem of a config (exit 1), or a one-line summary (exit 0)."""
    from tuner.config.files import load_config
    from tuner.config.presets import find_preset
    from tuner.core.errors import ConfigError

    path = find_preset(args.file)
    try:
        config = load_config(path, overrides=args.overrides, check_files=args.check_files)
    except ConfigError as exc:
        where = f"{exc.source}: " if exc.source else ""
        count = len(exc.problems)
        print(f"{where}{count} problem{'s' if count != 1 else ''}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(
        f"ok: {path}: {config.name}: {config.method} on {config.model}, "
        f"{config.task}, data {config.data_path}, max_length {config.max_length}"
    )
    return 0
