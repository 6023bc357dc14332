"""Named suites: the device calls of bench/suites.toml, each run by one command,
``python -m bench.train_speed --suite NAME --out-dir "$OUT"``.

A suite is a list of steps, each one timed command: a ``bench`` step (options of this harness), a
``pytest`` step (GPU tests) or a ``probe`` step (a script of bench/probes/). Every bench step appends to
one results file, ``<out-dir>/<date>-<gpu>-<suite>.json``; each step's output goes to
``<stem>.logs/<step>.log``, and the logs folder is packed into ``<stem>.logs.tgz`` at the end (a device
call returns few files). Its rows record the suite step (``suite``), the step's own command (``argv``) and
the commit: this checkout's when it has .git, else ``TUNER_COMMIT`` (set it from ``git rev-parse HEAD``
on the machine that has the history when the device's copy does not).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import tomllib

from bench.train_speed import report as reports
from bench.train_speed.measure import ARGV_ENV, COMMIT_ENV, REPO, SUITE_ENV, commit

SUITES = REPO / "bench" / "suites.toml"
KINDS = ("bench", "pytest", "probe")


def load(path: Path = SUITES) -> dict[str, dict]:
    """The suites by name, each checked: an ``about``, steps with one kind, a name and a timeout."""
    suites = tomllib.loads(path.read_text())["suites"]
    for name, suite in suites.items():
        if not suite.get("about") or not suite.get("steps"):
            raise ValueError(f"{path}: suite {name} needs an about line and steps")
        seen = set()
        for step in suite["steps"]:
            kinds = [k for k in KINDS if k in step]
            if len(kinds) != 1 or not step.get("name") or not step.get("timeout"):
                raise ValueError(f"{path}: suite {name}: each step has a name, a timeout and one of {KINDS}")
            if step["name"] in seen:
                raise ValueError(f"{path}: suite {name}: two steps named {step['name']}")
            seen.add(step["name"])
    return suites


def describe(suites: dict[str, dict]) -> str:
    lines = []
    for name, suite in suites.items():
        seconds = sum(step["timeout"] for step in suite["steps"])
        lines.append(f"{name} (setup {suite.get('setup', 'wheels')}, at most {seconds} s): {suite['about']}")
    return "\n".join(lines)


def step_argv(step: dict, results: Path, logs: Path, opts) -> tuple[list[str], list[str] | None]:
    """The command of a step, and for a bench step the command its rows record (as typed)."""

    def words(text: str) -> list[str]:
        return shlex.split(text.format(logs=logs, out=results.parent))

    if "bench" in step:
        typed = ["python", "-m", "bench.train_speed", *shlex.split(step["bench"])]
        extra = [
            "--out",
            str(results),
            "--models-dir",
            str(opts.models_dir),
            "--log-dir",
            str(logs / step["name"]),
        ]
        return [sys.executable, "-m", "bench.train_speed", *words(step["bench"]), *extra], typed
    if "pytest" in step:
        return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *words(step["pytest"])], None
    script, *args = words(step["probe"])
    return [sys.executable, str(REPO / "bench" / "probes" / f"{script}.py"), *args], None


def _run(argv: list[str], log: Path, timeout: float, env: dict) -> int | str:
    """Run one step in a session of its own, so that a timeout ends the bench driver's children too."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True
        )
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout"


def _summary(log: Path, kind: str) -> list[str]:
    """What a step's log says in a line or two: the bench's row lines, pytest's totals."""
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    if kind == "bench":
        keep = [line for line in lines if line.lstrip().startswith("-> ") or line.startswith("RESULT ")]
        keep = [_row_line(line) if line.startswith("RESULT ") else line.strip() for line in keep]
    elif kind == "pytest":
        keep = [line for line in lines if " passed" in line or " failed" in line or "FAILED" in line][-4:]
    else:
        keep = lines[-6:]
    return keep or lines[-8:]


def _row_line(line: str) -> str:
    row = json.loads(line.removeprefix("RESULT "))
    label = f"{row['model']} {row['method']} {row['seq']} {row['tool']} {row.get('variant') or ''}".strip()
    if row.get("error"):
        return f"-> {label}: {row['error'][:160]}"
    return f"-> {label}: {row['tok_s']:,.0f} tok/s, peak {row.get('peak_gib')} GiB, device {row.get('device_used_gib')} GiB"


def run(name: str, opts) -> int:
    """Run (or with --dry-run print) every step of a suite; exit status 1 when any step failed."""
    from bench.train_speed.cli import default_out

    suites = load()
    if name not in suites:
        print(f"no suite {name!r}; suites: {', '.join(suites)}", file=sys.stderr)
        return 2
    suite = suites[name]
    results = default_out(Path(opts.out_dir))
    results = results.with_name(f"{results.stem}-{name}.json")
    logs = results.with_name(results.stem + ".logs")
    env = dict(os.environ)
    known = commit()
    if known:
        env[COMMIT_ENV] = known
    print(
        f"[suite] {name}: {suite['about']}\n[suite] commit {known or 'unknown'}; rows -> {results}",
        flush=True,
    )
    failed = []
    for step in suite["steps"]:
        argv, typed = step_argv(step, results, logs, opts)
        kind = next(k for k in ("bench", "pytest", "probe") if k in step)
        if opts.dry_run:
            print(f"{step['name']} ({step['timeout']} s): {shlex.join(argv)}")
            continue
        logs.mkdir(parents=True, exist_ok=True)
        step_env = {
            **env,
            **{k: str(v) for k, v in step.get("env", {}).items()},
            SUITE_ENV: f"{name}/{step['name']}",
        }
        if typed:
            step_env[ARGV_ENV] = json.dumps(typed)
        started = time.perf_counter()
        code = _run(argv, logs / f"{step['name']}.log", step["timeout"], step_env)
        print(f"{step['name']}: exit {code} ({time.perf_counter() - started:.0f} s)", flush=True)
        for line in _summary(logs / f"{step['name']}.log", kind):
            print(f"    {line[:240]}", flush=True)
        if code != 0:
            failed.append(step["name"])
    if opts.dry_run:
        return 0
    if results.is_file():
        print("\n" + reports.report(json.loads(results.read_text())))
    results.with_name(results.name + ".lock").unlink(missing_ok=True)
    if logs.is_dir():
        with tarfile.open(logs.with_name(logs.name + ".tgz"), "w:gz") as tar:
            tar.add(logs, arcname=logs.name)
        _remove(logs)
    print(
        f"\n[suite] {name}: {len(suite['steps']) - len(failed)} of {len(suite['steps'])} steps exited 0"
        + (f"; failed: {', '.join(failed)}" if failed else "")
        + f" ({_dt.datetime.now():%H:%M:%S})"
    )
    return 1 if failed else 0


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
