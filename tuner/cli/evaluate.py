"""evaluate verb: ``python -m tuner evaluate RUN_OR_MODEL TEST [--adapter DIR] [--metrics exact,rouge,bleu]``."""

from __future__ import annotations

import argparse
import sys

from tuner.cli.options import whole_number


def _metrics(text: str) -> list[str]:
    from tuner.export.metrics import parse_metrics

    try:
        return parse_metrics(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tuner.export.evaluate import evaluate

    def progress(side: str, done: int, total: int) -> None:
        print(f"\r{side.replace('_', '-')}: {done}/{total} answered", end="", file=sys.stderr, flush=True)
        if done == total:
            print(file=sys.stderr)

    result = evaluate(
        args.target,
        args.test,
        adapter=args.adapter,
        metrics=args.metrics,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        compare_base=not args.no_base,
        data_format=args.format,
        out_dir=args.out,
        bits=args.bits,
        progress=progress,
    )
    print(f"{result.samples} test samples")
    print(result.table())
    print(f"results: {result.results_path}\nanswers: {result.samples_path}")
    return 0


def register(subparsers) -> None:
    from tuner.export.metrics import METRICS

    parser = subparsers.add_parser(
        "evaluate",
        help="score a fine-tune on a test file: exact match, ROUGE-L, BLEU, base vs fine-tuned",
        description="Answers every question of TEST greedily with the run's chat template and system prompt, "
        "with the fine-tuned model and the base model side by side, and scores the answers against the "
        "references: exact match, ROUGE-L (mean F1) and corpus BLEU, 0-100; Chinese is compared per character. "
        "Writes <test>.json and <test>.samples.jsonl into the run's evaluation/ folder.",
    )
    parser.add_argument(
        "target",
        metavar="RUN_OR_MODEL",
        help="a run folder, checkpoint or adapter (its base model is the run's), or a model with --adapter",
    )
    parser.add_argument("test", metavar="TEST", help="chat test data: a file, a datasets folder or a Hub id")
    parser.add_argument("--adapter", help="adapter folder to evaluate on top of the model RUN_OR_MODEL")
    parser.add_argument(
        "--metrics",
        type=_metrics,
        default=list(METRICS),
        help=f"comma-separated, of {','.join(METRICS)} (all)",
    )
    parser.add_argument(
        "--max-new-tokens", type=whole_number(1), default=256, help="tokens per answer at most (256)"
    )
    parser.add_argument(
        "--batch-size", type=whole_number(1), default=8, help="questions answered together (8)"
    )
    parser.add_argument(
        "--no-base", action="store_true", help="score only the fine-tuned model (half the time)"
    )
    parser.add_argument("--format", default="auto", help="data format of TEST (auto)")
    parser.add_argument("--bits", type=int, choices=(4, 8), help="load the base 4/8-bit (CUDA)")
    parser.add_argument("--out", metavar="DIR", help="results folder (default: the run's evaluation/)")
    parser.set_defaults(func=cmd_evaluate)
