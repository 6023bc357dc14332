"""The command line: options, the driver that runs each configuration in a child process of its own,
and the entry points (``--suite``, ``--report``, ``--settings-table``, ``--prepare``).

One configuration (shape, method, seq, tool, variant) runs per process: with several, this process is
a driver that runs each as a child in turn (memory isolation: a fresh CUDA allocator, no leftovers),
and each child appends its row to the ``--out`` JSON list (atomically, under a lock).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench.train_speed import report as reports
from bench.train_speed.measure import ARGV_ENV, COMMIT_ENV, REPO, commit, measure, measure_matmul_peak, slug
from bench.train_speed.shapes import COMPLETE_MARK, DEFAULT_MODELS_DIR, REAL_SHAPES, SHAPES, ensure_model
from bench.train_speed.spec import DEFAULT_SEQS, LORA, METHODS, Spec, parse_variant
from bench.train_speed.tools import TOOLS

ALL_TOOLS = ("tuner", "plain")  # --all: the peer needs its own site folder (bench/README.md)
COMMAND = [sys.executable, "-m", "bench.train_speed"]


def _csv(text: str, allowed=None, cast=str) -> list:
    values = [cast(v.strip()) for v in str(text).split(",") if v.strip()]
    if allowed is not None:
        bad = [v for v in values if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{', '.join(map(str, bad))}: choose from {', '.join(allowed)}")
    return values


def specs_from(opts) -> list[Spec]:
    if opts.all:
        shapes, methods, seqs, tools = REAL_SHAPES, METHODS, DEFAULT_SEQS, ALL_TOOLS
    else:
        shapes, methods, seqs, tools = opts.shape, opts.method, opts.seq, opts.tool
    variants = [name for name, _ in opts.variants] or [None]
    specs = []
    for shape, method, seq, tool in itertools.product(shapes, methods, seqs, tools):
        if TOOLS[tool].variants:
            specs += [Spec(shape, method, seq, tool, opts.sample_len, variant) for variant in variants]
        else:
            specs.append(Spec(shape, method, seq, tool, opts.sample_len if TOOLS[tool].packs else None))
    return specs


def default_out(folder: Path) -> Path:
    try:
        name = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        name = "cpu"
    return folder / f"{_dt.date.today().isoformat()}-{slug(name)}.json"


def child_argv(spec: Spec, opts, out: Path) -> list[str]:
    argv = [
        *COMMAND,
        "--shape", spec.shape,
        "--method", spec.method,
        "--seq", str(spec.seq),
        "--tool", spec.tool,
        "--steps", str(opts.steps),
        "--warmup", str(opts.warmup),
        "--out", str(out),
        "--models-dir", str(opts.models_dir),
        "--plain-precision", opts.plain_precision,
        "--lora-dropout", str(opts.lora_dropout),
    ]  # fmt: skip
    if spec.sample_len:
        argv += ["--sample-len", str(spec.sample_len)]
    if opts.liger:
        argv.append("--liger")
    if opts.tag:
        argv += ["--tag", opts.tag]
    if spec.variant:
        argv += ["--variant", dict(opts.variant_texts)[spec.variant]]
    if opts.profile:
        argv += ["--profile", str(opts.profile)]
    if opts.profile_cuda:
        argv.append("--profile-cuda")
    if opts.profile_syncs:
        argv.append("--profile-syncs")
    argv += ["--clock", opts.clock]
    if opts.card_gib:
        argv += ["--card-gib", f"{opts.card_gib:g}"]
    return argv


def drive(specs: list[Spec], opts, out: Path) -> list[dict]:
    """Run each configuration in a child process, one after another; log each child to a file."""
    log_dir = Path(opts.log_dir) if opts.log_dir else out.with_name(out.stem + ".logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    # Build missing model folders first, each in a child of its own with no timeout, so that
    # --child-timeout bounds the measurements only.
    for shape in dict.fromkeys(spec.shape for spec in specs):
        if (Path(opts.models_dir) / shape / COMPLETE_MARK).is_file():
            continue
        log_path = log_dir / f"prepare-{shape}.log"
        print(f"[bench] building the {shape} model folder in {opts.models_dir} (log {log_path})", flush=True)
        started = time.perf_counter()
        argv = [*COMMAND, "--prepare", "--shape", shape]
        with open(log_path, "w") as log:
            code = subprocess.run(
                [*argv, "--models-dir", str(opts.models_dir)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            ).returncode
        print(f"    -> exit {code} ({time.perf_counter() - started:.0f} s)", flush=True)
    # A child's row records the command that made it (this driver's), and the commit when its
    # checkout cannot tell (no .git on the device): both pass through the environment.
    env = {**os.environ, ARGV_ENV: os.environ.get(ARGV_ENV) or json.dumps(opts.argv)}
    if opts.alloc_conf:  # read when CUDA starts: a variant's env, set inside the child, comes too late
        env["PYTORCH_CUDA_ALLOC_CONF"] = opts.alloc_conf
    known = commit()
    if known and not os.environ.get(COMMIT_ENV):
        env[COMMIT_ENV] = known
    produced = []
    for i, spec in enumerate(specs, 1):
        before = len(json.loads(out.read_text())) if out.is_file() else 0
        log_path = log_dir / f"{spec.label}.log"
        print(f"[bench] {i}/{len(specs)} {spec.label} (log {log_path})", flush=True)
        started = time.perf_counter()
        with open(log_path, "w") as log:
            try:
                code = subprocess.run(
                    child_argv(spec, opts, out),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=opts.child_timeout,
                    cwd=REPO,
                    env=env,
                ).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        rows = json.loads(out.read_text())[before:] if out.is_file() else []
        if not rows or any(r.get("error") for r in rows):
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            print("\n".join(f"    | {line[:200]}" for line in tail), flush=True)
        if not rows:
            row = {**asdict(spec), "model": spec.shape, "error": f"child exited with {code} and wrote no row"}
            row.pop("shape")
            row.update(argv=json.loads(env[ARGV_ENV]), commit=env.get(COMMIT_ENV))
            reports.append_rows(out, [row])
            rows = [row]
        for row in rows:
            status = row.get("error") or (
                f"{row['tok_s']:,.0f} tok/s, {row['step_s']:.3f} s/step, peak {row['peak_gib']} GiB, "
                f"reserved {row['reserved_gib']} GiB, MFU {row['mfu']:.1%}"
                if row.get("peak_gib") is not None
                else f"{row['tok_s']:,.0f} tok/s"
            )
            print(f"    -> {status} ({time.perf_counter() - started:.0f} s)", flush=True)
        produced += rows
    return produced


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--shape", type=lambda s: _csv(s, SHAPES), default=["llama2-7b"], help=f"{', '.join(SHAPES)}"
    )
    p.add_argument("--method", type=lambda s: _csv(s, METHODS), default=["qlora"], help="qlora, lora")
    p.add_argument(
        "--seq", type=lambda s: _csv(s, cast=int), default=[512], help="tokens per step, e.g. 512,4096"
    )
    p.add_argument(
        "--tool",
        type=lambda s: _csv(s, TOOLS),
        default=list(ALL_TOOLS),
        help=f"{', '.join(TOOLS)} (default {','.join(ALL_TOOLS)}; unsloth needs its site folder)",
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument(
        "--all", action="store_true", help="every real shape x method x 512/2048/4096 x tuner, plain"
    )
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: the tiny shape, method lora")
    p.add_argument("--out", help="results JSON list to append to (default <out-dir>/<date>-<gpu>.json)")
    p.add_argument("--out-dir", default=str(REPO / "bench" / "results"), help="folder of the default --out")
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR), help="random-init model folders (reused)")
    p.add_argument("--log-dir", help="driver: one log per child (default <out stem>.logs/ beside --out)")
    p.add_argument("--in-process", action="store_true", help="run every configuration in this process")
    p.add_argument(
        "--child-timeout", type=float, default=None, help="driver: seconds before a child is killed"
    )
    p.add_argument(
        "--prepare", action="store_true", help="only build the model folders (and the matmul peak)"
    )
    p.add_argument(
        "--plain-precision",
        choices=("recipe", "bf16", "fp16"),
        default="recipe",
        help="plain loop: recipe = fp16 AMP for llama2-7b qlora, bf16 otherwise",
    )
    p.add_argument(
        "--sample-len", type=int, default=None, help="tuner rows: pack samples of this length (hook)"
    )
    p.add_argument("--liger", action="store_true", help="apply Liger kernels before loading (hook)")
    p.add_argument("--tag", default=None, help="a label stored in each row (e.g. baseline, liger)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME[:KIND.KEY=VALUE,...]",
        help="tuner rows: a named set of overrides, repeatable (one tuner row per variant); KIND is\n"
        "env (a speed setting's variable, e.g. env.TUNER_LIGER=on, or env.TUNER_GPU_MEMORY_GIB=8),\n"
        "set (a TrainConfig key, e.g. set.checkpoint_layers=all) or arg (a TrainingArguments\n"
        "attribute, e.g. arg.logging_steps=10)",
    )
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="write a cProfile of each row's timed steps (main thread) to DIR/<label>.txt",
    )
    p.add_argument(
        "--profile-cuda",
        action="store_true",
        help="with --profile: torch.profiler (CUDA kernels by GPU time, GPU busy share) instead of cProfile",
    )
    p.add_argument(
        "--profile-syncs",
        action="store_true",
        help="with --profile: count the timed steps' synchronizing CUDA operations by Python call site\n"
        "(PyTorch's sync debug mode; bench/sync_trace.py) instead of cProfile",
    )
    p.add_argument(
        "--clock",
        choices=("step", "window"),
        default="step",
        help="step: a device sync after every step (default); window: only around the timed steps",
    )
    p.add_argument(
        "--lora-dropout",
        type=float,
        default=LORA["dropout"],
        help=f"LoRA dropout of every tool's rows (default {LORA['dropout']}, the presets')",
    )
    p.add_argument(
        "--alloc-conf",
        default=None,
        metavar="TEXT",
        help="PYTORCH_CUDA_ALLOC_CONF for every child row (e.g. expandable_segments:True); rows record it",
    )
    p.add_argument(
        "--card-gib",
        type=float,
        default=None,
        metavar="N",
        help="emulate a card of N GiB for every tool: the rest of the GPU is taken before the row starts\n"
        "(raw device memory outside PyTorch), so the CUDA context, every allocator and managed memory\n"
        "(paged optimizer state) share N GiB and page under pressure as on such a card",
    )
    p.add_argument("--report", metavar="JSON", help="print the markdown table of a results file and exit")
    p.add_argument(
        "--budget-table", metavar="JSON", help="print a results file as budget x shape x tool (issue 16)"
    )
    p.add_argument(
        "--suite",
        metavar="NAME",
        help="run a named suite of bench/suites.toml (one device call each), writing under --out-dir",
    )
    p.add_argument("--list-suites", action="store_true", help="print the suites and what each measures")
    p.add_argument(
        "--print-commit",
        action="store_true",
        help="print what rows made here record as their commit (HEAD, +dirty): the TUNER_COMMIT of a device call",
    )
    p.add_argument("--dry-run", action="store_true", help="with --suite: print its commands, run nothing")
    p.add_argument(
        "--settings-table",
        nargs="?",
        const="-",
        metavar="FILE",
        help="print docs/performance.md's table of speed settings, or regenerate it inside FILE",
    )
    opts = p.parse_args(argv)
    # the command this row is made by, as a reader would type it again
    opts.argv = ["python", "-m", "bench.train_speed", *(sys.argv[1:] if argv is None else argv)]
    if opts.tiny:
        opts.shape, opts.method = ["tiny"], ["lora"]
    try:
        opts.variants = [parse_variant(text) for text in opts.variant]
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    opts.variant_texts = [(name, text) for (name, _), text in zip(opts.variants, opts.variant, strict=True)]
    if len({name for name, _ in opts.variants}) != len(opts.variants):
        p.error("--variant names must differ")
    if opts.steps < 1 or opts.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if opts.warmup == 0 and opts.steps < 2:
        p.error("with --warmup 0, use --steps >= 2")
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    if opts.report:
        print(reports.report(json.loads(Path(opts.report).read_text())))
        return 0
    if opts.print_commit:
        print(commit() or "unknown")
        return 0
    if opts.budget_table:
        print(reports.budget_table(json.loads(Path(opts.budget_table).read_text())))
        return 0
    if opts.settings_table:
        if opts.settings_table == "-":
            print(reports.settings_table())
        else:
            reports.write_settings_table(Path(opts.settings_table))
            print(f"regenerated the speed-settings table in {opts.settings_table}")
        return 0
    if opts.list_suites or opts.suite:
        from bench.train_speed import suites

        if opts.list_suites:
            print(suites.describe(suites.load()))
            return 0
        return suites.run(opts.suite, opts)
    if opts.prepare:
        for shape in REAL_SHAPES if opts.all else opts.shape:
            ensure_model(shape, Path(opts.models_dir))
        measure_matmul_peak(Path(opts.models_dir))
        return 0
    out = Path(opts.out) if opts.out else default_out(Path(opts.out_dir))
    specs = specs_from(opts)
    # A tool that patches library classes process-wide (Unsloth) gets a child of its own even with
    # --in-process: the rows of the other tools must not run through its patches.
    if len(specs) == 1 or opts.in_process:
        children = [s for s in specs if TOOLS[s.tool].patches_process] if len(specs) > 1 else []
        here = [s for s in specs if s not in children]
    else:
        here, children = [], specs
    rows = []
    for spec in here:
        row = measure(spec, opts)
        reports.append_rows(out, [row])
        print("RESULT " + json.dumps(row), flush=True)
        rows.append(row)
    if children:
        rows += drive(children, opts, out)
    print(f"\n{len(rows)} row(s) appended to {out}\n")
    print(reports.report(rows))
    return 1 if any(r.get("error") for r in rows) else 0
