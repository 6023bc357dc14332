"""check-data verb: ``python -m tuner check-data DATA [--json] ...``.

Exit status: 0 when the data is usable as is, 1 when it has problems (all listed), 2 when it cannot
be checked at all (missing file, unknown template or model: printed as ``error: ...``).
"""

from __future__ import annotations

import argparse
import json
import sys

from tuner.cli.options import whole_number


def cmd_check_data(args: argparse.Namespace) -> int:
    from tuner.data.check import check_data

    report = check_data(
        args.data,
        args.format,
        model=args.model,
        template=args.template,
        max_length=args.max_length,
        show=args.show,
        system=args.system,
    )
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        print(report.format_text())
    return 0 if report.ok else 1


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "check-data",
        help="check a data file: problems with line numbers, token lengths, rendered samples",
        description="Reads DATA the way training will: lists every bad record (file:line: field), counts, "
        "token lengths against --max-length, the chat template, and --show samples with the supervised "
        "text (what the loss is computed on) marked [[...]]. Exits 1 when the data has problems.",
    )
    parser.add_argument(
        "data",
        metavar="DATA",
        help="data file (.jsonl, .json, .txt, .parquet, .arrow), a datasets folder or a Hub id "
        "(owner/name?split=train&columns=q:instruction)",
    )
    parser.add_argument("--format", default="auto", help="data format (auto)")
    parser.add_argument(
        "--model", default="default", help="model folder whose tokenizer to use (default: embedded)"
    )
    parser.add_argument("--template", help="named chat template (default: the tokenizer's own)")
    parser.add_argument(
        "--max-length", type=whole_number(0), default=2048, help="sample limit in tokens (2048)"
    )
    parser.add_argument("--show", type=whole_number(0), default=3, metavar="K", help="samples to render (3)")
    parser.add_argument("--system", metavar="TEXT", help="system prompt for samples that have none")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (with input_ids and labels)"
    )
    parser.set_defaults(func=cmd_check_data)


def main(argv: list[str] | None = None) -> int:
    """Run check-data on its own (the same as ``python -m tuner check-data``)."""
    from tuner.core.errors import TunerError

    parser = argparse.ArgumentParser(prog="python -m tuner")
    register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["check-data", *(sys.argv[1:] if argv is None else argv)])
    try:
        return cmd_check_data(args)
    except TunerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
