"""Data verbs: convert (table -> conversation JSONL), split (train/test), make-identity, check-identity."""

from __future__ import annotations

import argparse

from tuner.cli.options import whole_number
from tuner.data.identity import KL_PROBES


def _ratio(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def cmd_convert(args: argparse.Namespace) -> int:
    from tuner.data.convert import convert_table

    result = convert_table(
        args.input,
        args.output,
        sheet=args.sheet,
        question=args.question,
        answer=args.answer,
        system=args.system,
        system_column=args.system_column,
        force=args.force,
    )
    print(result.summary())
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from tuner.data.split import split_file

    result = split_file(
        args.data,
        test_ratio=args.test_ratio,
        seed=args.seed,
        train_out=args.train_out,
        test_out=args.test_out,
        force=args.force,
    )
    print(result.summary())
    return 0


def cmd_make_identity(args: argparse.Namespace) -> int:
    from tuner.chat.generate import general_answerer, probe_answerer
    from tuner.data.identity import make_identity

    if args.mix_general != 0:
        print(f"mixing in general conversations: {args.model}'s own answers (cached in the workspace)...")
    if args.kl_probes:
        print(f"adding KL probes: {args.model}'s own answer openings (cached in the workspace)...")
    result = make_identity(
        args.output,
        args.name,
        persona=args.persona,
        langs=args.lang,
        mix_general=args.mix_general,
        force=args.force,
        general_source=general_answerer(args.model, trust_remote_code=args.trust_remote_code)
        if args.mix_general != 0
        else None,
        kl_probes=args.kl_probes,
        probe_source=probe_answerer(args.model, trust_remote_code=args.trust_remote_code)
        if args.kl_probes
        else None,
        general_anchors=not args.general_as_text,
    )
    print(result.summary())
    return 0


def cmd_check_identity(args: argparse.Namespace) -> int:
    import json

    from tuner.chat.identity_check import check_identity

    result = check_identity(args.run, args.name, langs=tuple(args.lang.split(",")), model_name=args.model)
    print(json.dumps(result.as_dict(), ensure_ascii=False, indent=1) if args.json else result.summary())
    return 0 if result.passed else 1


def register(subparsers) -> None:
    convert = subparsers.add_parser(
        "convert",
        help="convert a spreadsheet/csv/json table into conversation JSON Lines",
        description="One row becomes one conversation: question -> input, answer -> output. "
        "Rows with an empty question or answer are skipped and listed by row number.",
    )
    convert.add_argument("input", metavar="INPUT", help=".xlsx, .csv, .tsv, .json or .jsonl file")
    convert.add_argument("output", metavar="OUTPUT.jsonl", help="conversation JSON Lines file to write")
    convert.add_argument("--sheet", metavar="NAME", help="sheet of a workbook (default: the first)")
    convert.add_argument("--question", metavar="COL", help="question column: header name or letter (A, B...)")
    convert.add_argument("--answer", metavar="COL", help="answer column: header name or letter")
    system = convert.add_mutually_exclusive_group()
    system.add_argument("--system", metavar="TEXT", help="system prompt for every conversation")
    system.add_argument("--system-column", metavar="COL", help="column holding each row's system prompt")
    convert.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    convert.set_defaults(func=cmd_convert)

    split = subparsers.add_parser(
        "split",
        help="split records at random into train and test files",
        description="Writes <stem>-train.jsonl and <stem>-test.jsonl beside DATA unless told otherwise; "
        "the same seed gives the same files.",
    )
    split.add_argument("data", metavar="DATA", help="JSON Lines or JSON array file")
    split.add_argument("--test-ratio", type=_ratio, default=0.3, help="fraction for the test file (0.3)")
    split.add_argument("--seed", type=int, default=0, help="random seed (0)")
    split.add_argument("--train-out", metavar="F", help="train file (default <stem>-train.jsonl)")
    split.add_argument("--test-out", metavar="F", help="test file (default <stem>-test.jsonl)")
    split.add_argument("--force", action="store_true", help="overwrite existing output files")
    split.set_defaults(func=cmd_split)

    identity = subparsers.add_parser(
        "make-identity",
        help="write a data set that teaches the model its name",
        description="Many 'who are you' questions with varied answers naming NAME, mixed with general "
        "conversations answered by the base model so that other answers stay normal.",
    )
    identity.add_argument("output", metavar="OUTPUT", help="conversation JSON Lines file to write")
    identity.add_argument("--name", required=True, help="the assistant's name")
    identity.add_argument(
        "--persona", metavar="TEXT", help='who it is, e.g. "Alice\'s assistant, built on SmolLM2"'
    )
    identity.add_argument("--lang", default="en,zh", help="languages, comma-separated (en,zh)")
    identity.add_argument(
        "--mix-general",
        metavar="N",
        type=int,
        default=None,
        help="general conversations to mix in, spread over the languages (default: as many in each "
        "language as identity conversations; 0 = none)",
    )
    identity.add_argument(
        "--kl-probes",
        metavar="N",
        type=whole_number(0),
        default=KL_PROBES,
        help="KL probes per language (at most 160): everyday questions with the opening of the base model's "
        "answer, which train only through the KL term to the base model (the preset's anchor_kl_weight) "
        f"and hold its answers on many more prompts (default: {KL_PROBES}; 0 = none)",
    )
    identity.add_argument(
        "--general-as-text",
        action="store_true",
        help="write the general conversations without the anchor mark: trained as text even with "
        "anchor_kl_weight (only the KL probes then hold the base model's distribution)",
    )
    identity.add_argument(
        "--model",
        default="default",
        help="the base model you will tune: it answers the general questions itself (default: the embedded model)",
    )
    identity.add_argument(
        "--trust-remote-code", action="store_true", help="run the model repository's own code"
    )
    identity.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    identity.set_defaults(func=cmd_make_identity)

    check = subparsers.add_parser(
        "check-identity",
        help="held-out check of an identity run: name taken, nothing else lost (base vs tuned)",
        description="Answers held-out questions with the adapter off and on: identity paraphrases "
        "(should name NAME), general questions (should not) and questions with checkable answers (none "
        "the base answers right may be lost). Exit status 1 when a target is missed.",
    )
    check.add_argument("run", metavar="RUN", help="run folder, checkpoint or adapter folder")
    check.add_argument("--name", required=True, help="the name the run taught")
    check.add_argument("--lang", default="en,zh", help="languages of the check, comma-separated (en,zh)")
    check.add_argument("--model", help="base model (default: the one the run trained)")
    check.add_argument("--json", action="store_true", help="print every answer as JSON")
    check.set_defaults(func=cmd_check_identity)
