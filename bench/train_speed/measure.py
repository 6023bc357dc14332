"""One row: run one configuration in this process, time its steps and read its memory.

Measurement: ``--warmup`` steps first (allocator growth, paged optimizer state, cuBLAS handles), then
``--steps`` timed steps; the time of a step is the host clock between consecutive step ends, each
after ``torch.cuda.synchronize()``, so it holds everything a step costs (data loading, logging,
forward, backward, optimizer). ``tok_s`` = tokens per step / mean step time. ``--clock window``
synchronizes only at the last warm-up step's end and the last timed step's end: a sync after every
step idles the GPU while the host starts the next one, which a training run does not do (tuner's own
syncs, logging among them, still happen), so the mean over the window is the run's throughput; the
per-step spread is then host time only. Memory: peak allocated and reserved bytes of PyTorch's
allocator after ``reset_peak_memory_stats`` once the model is loaded (bitsandbytes' paged optimizer
state lives in CUDA managed memory outside that allocator; the device-wide ``device_used_gib``,
sampled from ``cudaMemGetInfo`` at the warm-up's end and the window's, includes it and the CUDA
context; outside the timed steps, as some drivers take milliseconds for that call, ``mem_get_info_ms``
records how long it took; rows before 2026-12-01 session 6 sampled it after every step). MFU: see
``shapes.flops_per_token``.

Provenance: every row records the command that made it (``argv``), the commit (``commit``: from git
where the checkout has .git, else from ``TUNER_COMMIT``, which the driver passes to its children and
a device call sets from this machine's ``git rev-parse HEAD``; "+dirty" when tuner/ or bench/ had
uncommitted changes), the suite step when a suite ran it, and for tuner rows the speed settings and
the run plan in effect.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import importlib
import itertools
import json
import math
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
import traceback
from pathlib import Path
from typing import NamedTuple

from bench.train_speed.profile import start_profiler, write_profile
from bench.train_speed.shapes import GIB, ensure_model, flops_per_token, linear_params, shape_dims, vocab_of
from bench.train_speed.spec import LORA, Spec, environment, sample_lengths, token_rows
from bench.train_speed.tools import TOOLS, Job, apply_liger

REPO = Path(__file__).resolve().parents[2]
PEAK_CACHE = "bf16_peak.json"
COMMIT_ENV = "TUNER_COMMIT"  # the commit of a checkout without .git (the device's copy)
ARGV_ENV = "TUNER_BENCH_ARGV"  # the command a child's row records: its parent's, not the child's own
SUITE_ENV = "TUNER_BENCH_SUITE"  # "suite/step" when a suite ran the command


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def slug(text: str) -> str:
    """A file-name form of a GPU name.

    >>> slug("NVIDIA H100 80GB HBM3")
    'h100-80gb-hbm3'
    """
    text = re.sub(r"^nvidia\s+", "", text.strip(), flags=re.I)
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "gpu"


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_matmul_peak(models_dir: Path, log=print) -> dict:
    """The GPU's bf16 matrix rate, measured: median of 10 timed 8192^3 products on random data after
    3 warm-ups. Cached per GPU name in ``models_dir`` so every row of a run shares one denominator.
    On a CPU (smoke tests only) a 1024^3 fp32 product stands in."""
    import torch

    name = gpu_name()
    cache = models_dir / PEAK_CACHE
    try:
        cached = json.loads(cache.read_text())
    except (OSError, ValueError):
        cached = {}
    if name in cached:
        return cached[name]
    cuda = torch.cuda.is_available()
    n, dtype, device = (8192, torch.bfloat16, "cuda") if cuda else (1024, torch.float32, "cpu")
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    times = []
    for i in range(13):
        _sync()
        start = time.perf_counter()
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            a @ b
            end.record()
            end.synchronize()
            elapsed = begin.elapsed_time(end) / 1e3
        else:
            a @ b
            elapsed = time.perf_counter() - start
        if i >= 3:
            times.append(elapsed)
    del a, b
    result = {
        "tflops": round(2 * n**3 / statistics.median(times) / 1e12, 3),
        "how": f"{n}^3 {str(dtype).replace('torch.', '')} matmul, median of {len(times)}",
    }
    log(f"[bench] matmul peak on {name}: {result['tflops']} TFLOP/s ({result['how']})")
    cached[name] = result
    with contextlib.suppress(OSError):
        models_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cached, indent=2) + "\n")
        os.replace(tmp, cache)
    return result


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "liger_kernel", "unsloth"):
        try:
            out[name] = md.version(name.replace("_", "-"))
        except md.PackageNotFoundError:
            out[name] = None
    return out


def commit() -> str | None:
    """The commit the code under measurement came from: what the caller passed in TUNER_COMMIT (the
    device's copy carries a .git whose HEAD is the session's first commit, not the tree it runs: seen
    on 2026-12-04), else git's HEAD where this checkout has .git ("+dirty" when tuner/ or bench/
    differ from it), else None (unknown)."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    if (REPO / ".git").exists():
        try:
            git = ["git", "-C", str(REPO)]
            head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
            changed = subprocess.run(
                [*git, "status", "--porcelain", "--untracked-files=no", "--", "tuner", "bench"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if head.returncode == 0:
                return head.stdout.strip() + ("+dirty" if changed.stdout.strip() else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return os.environ.get(COMMIT_ENV) or None


def provenance(opts) -> dict:
    """What a row needs to be made again: the command (a child records its driver's), the commit and
    the suite step."""
    argv = json.loads(os.environ[ARGV_ENV]) if os.environ.get(ARGV_ENV) else getattr(opts, "argv", None)
    return {"argv": argv, "commit": commit(), "suite": os.environ.get(SUITE_ENV) or None}


# torch.cuda.memory_stats() counters a row reports for its timed window (``window_allocator``)
ALLOCATOR_COUNTERS = ("num_alloc_retries", "num_device_alloc", "num_device_free", "num_ooms")


class HostMark(NamedTuple):
    """The calling thread's host side now: its CPU seconds, the process's, and how often the OS switched
    the thread out (getrusage(RUSAGE_THREAD): Linux; 0 elsewhere). CUDA's synchronizations spin by
    default, so a wait for the GPU inside a step counts as CPU time; the window clock syncs only at the
    window's ends."""

    thread_cpu_s: float
    process_cpu_s: float
    voluntary_switches: int
    involuntary_switches: int

    @classmethod
    def now(cls) -> HostMark:
        import resource

        who = getattr(resource, "RUSAGE_THREAD", None)
        usage = resource.getrusage(who) if who is not None else None
        voluntary, involuntary = (usage.ru_nvcsw, usage.ru_nivcsw) if usage else (0, 0)
        return cls(time.thread_time(), time.process_time(), voluntary, involuntary)

    def since(self, start: HostMark) -> dict:
        return {
            "thread_cpu_s": round(self.thread_cpu_s - start.thread_cpu_s, 4),
            "process_cpu_s": round(self.process_cpu_s - start.process_cpu_s, 4),
            "voluntary_switches": self.voluntary_switches - start.voluntary_switches,
            "involuntary_switches": self.involuntary_switches - start.involuntary_switches,
        }


class StepClock:
    """Host time at the end of every step (after a device sync), peak device use, losses."""

    def __init__(
        self,
        profile: tuple[int, int] | None = None,
        cuda_profile: bool | str = False,
        sync_steps=None,
        memory_steps=None,
    ):
        self.ends: list[float] = []
        # --clock window: the step numbers (1-based) whose ends sync; None: every step's
        self.sync_steps = sync_steps
        # the step ends that sample device-wide memory (cudaMemGetInfo, a driver call that some
        # drivers take milliseconds for); None: every step's
        self.memory_steps = memory_steps
        self.mem_get_info_s: list[float] = []  # how long each of those samples took
        # PyTorch allocator's counters at those step ends: on a full card, retries (free the cache, sync,
        # cudaMalloc again) and cudaMalloc/cudaFree calls inside the window cost time that peaks do not show
        self.allocator_counts: list[dict[str, int]] = []
        self.losses: list[float] = []
        # Python's garbage collections (start, seconds, generation) from begin() on: a full collection
        # walks every tracked object of the model, and is one suspect for the steps that take 1.5x the
        # median on an 8 GiB card (bench/results/2026-12-04-h200-cards-8-pair.json)
        self.collections: list[tuple[float, float, int]] = []
        self._collection_started = 0.0
        # The training thread's host side at begin() and at each step end (HostMark): its CPU seconds and
        # how often the OS switched it out. Where a slow step spent no more CPU than a fast one, the thread
        # waited (on the GPU, a lock, the GIL or the scheduler); where it spent more, the host did more work.
        # Session 12: tuner's steps on an 8 GiB card vary 0.41-0.89 s within a row, Unsloth's 0.47-0.51.
        self.host_marks: list[HostMark] = []
        self.device_used = 0
        self.loaded_bytes = None
        self.started = None
        # --profile: cProfile of the main thread between these step ends (the timed steps)
        self.profiler = None
        self.profile = profile
        # --profile-cuda: torch.profiler (host ops + CUDA kernels) instead of cProfile
        self.cuda_profile = cuda_profile

    def begin(self) -> None:
        import torch

        _sync()
        if torch.cuda.is_available():
            self.loaded_bytes = torch.cuda.memory_allocated()  # weights (+ LoRA) before the first step
            torch.cuda.reset_peak_memory_stats()
        gc.callbacks.append(self._on_collection)
        self.host_marks.append(HostMark.now())
        self.started = time.perf_counter()

    def _on_collection(self, phase: str, info: dict) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._collection_started = now
        else:
            self.collections.append(
                (self._collection_started, now - self._collection_started, info["generation"])
            )

    def collections_between(self, start: float, end: float) -> dict:
        """How many collections of each generation began in [start, end], and their seconds in all."""
        inside = [(s, g) for at, s, g in self.collections if start <= at <= end]
        return {
            "gen0": sum(g == 0 for _, g in inside),
            "gen1": sum(g == 1 for _, g in inside),
            "gen2": sum(g == 2 for _, g in inside),
            "seconds": round(sum(s for s, _ in inside), 4),
        }

    def step_end(self) -> None:
        import torch

        step = len(self.ends) + 1
        if self.sync_steps is None or step in self.sync_steps:
            _sync()
        # Before the clock reads: a sample at the warm-up's end must not count in the first timed step.
        if torch.cuda.is_available() and (self.memory_steps is None or step in self.memory_steps):
            asked = time.perf_counter()
            free, total = torch.cuda.mem_get_info()
            self.mem_get_info_s.append(time.perf_counter() - asked)
            self.device_used = max(self.device_used, total - free)
            stats = torch.cuda.memory_stats()
            self.allocator_counts.append({name: int(stats.get(name, 0)) for name in ALLOCATOR_COUNTERS})
        self.ends.append(time.perf_counter())
        self.host_marks.append(HostMark.now())
        if self.profile and len(self.ends) == self.profile[0]:
            self.profiler = start_profiler(self.cuda_profile)
        elif self.profiler is not None and len(self.ends) == self.profile[1]:
            self.profiler.disable()

    def loss(self, value) -> None:
        if value is not None:
            self.losses.append(float(value))


# -------------------------------------------------------------------------------------------- child


def measure(spec: Spec, opts) -> dict:
    """Run one configuration in this process and return its row (``error`` set when it failed)."""
    tool = TOOLS[spec.tool]
    missing = None
    if tool.needs:
        # first, before anything here imports transformers or peft: Unsloth patches their classes
        # when imported and warns that it cannot do it all afterwards
        for key, value in tool.offline_env.items():
            os.environ.setdefault(key, value)
        try:
            importlib.import_module(tool.needs)
        except ImportError as exc:
            missing = f"the {spec.tool} tool needs {tool.needs}, which is not importable here: {exc}"
    import torch

    models_dir = Path(opts.models_dir)
    overrides = dict(opts.variants).get(spec.variant) if spec.variant else None
    env = (overrides or {}).get("env", {})  # a variant's variables, set while the tool runs
    row = {
        "model": spec.shape,
        "method": spec.method,
        "seq": spec.seq,
        "tool": spec.tool,
        "sample_len": spec.sample_len,
        "tag": " ".join(t for t in (opts.tag, spec.variant) if t) or None,
        "variant": spec.variant,
        "liger": False,
        "tok_s": None,
        "step_s": None,
        "peak_gib": None,
        "reserved_gib": None,
        "mfu": None,
        "gpu": gpu_name(),
        **{k: v for k, v in versions().items()},
        "steps": opts.steps,
        "warmup": opts.warmup,
        "batch_size": 1,
        "tokens_per_step": spec.seq,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "lora_dropout": opts.lora_dropout,
        # the memory the row is held to: an emulated card (--card-gib) holds every tool; otherwise tuner
        # holds itself to TUNER_GPU_MEMORY_GIB and the peers' rows only record it
        "budget_gib": opts.card_gib or _budget_gib({**os.environ, **env}.get("TUNER_GPU_MEMORY_GIB")),
        "card_gib": opts.card_gib,
        **provenance(opts),
        "error": None,
    }
    if missing:
        row["error"] = missing
        return row
    if spec.method == "qlora" and not torch.cuda.is_available():
        row["error"] = "qlora needs a CUDA GPU (bitsandbytes); use --tiny / --method lora on a CPU"
        return row
    if spec.sample_len and not tool.packs:
        row["error"] = f"--sample-len packs samples, which the {spec.tool} tool does not do"
        return row
    if opts.card_gib and not torch.cuda.is_available():
        row["error"] = "--card-gib emulates a smaller GPU: it needs a CUDA GPU"
        return row
    ballast = None
    if not torch.cuda.is_available():
        # CPU smoke runs only check the harness; one thread avoids oversubscribing a shared machine.
        torch.set_num_threads(1)
    else:
        # The device before this row loads anything: the CUDA context (and, with --in-process, what
        # earlier rows left), which device_used_gib includes.
        free, total = torch.cuda.mem_get_info()
        row["device_before_gib"] = round((total - free) / GIB, 3)
        if opts.card_gib:
            try:
                ballast = DeviceBallast(total - int(opts.card_gib * GIB))
            except RuntimeError as exc:
                row["error"] = f"--card-gib {opts.card_gib:g}: {exc}"
                return row
            row["ballast_gib"] = round(ballast.nbytes / GIB, 3)
    clock = StepClock(
        profile=(opts.warmup, opts.warmup + opts.steps) if opts.profile else None,
        cuda_profile="syncs" if opts.profile_syncs else opts.profile_cuda,
        sync_steps={opts.warmup, opts.warmup + opts.steps} if opts.clock == "window" else None,
        # Device-wide memory at the warm-up's end and the window's: sampled inside the window, its
        # driver call would land in the next step's time (rows before 2026-12-01 session 6 did so).
        memory_steps={opts.warmup, opts.warmup + opts.steps},
    )
    row["clock"] = opts.clock
    started = time.perf_counter()
    try:
        model_dir = ensure_model(spec.shape, models_dir)
        peak = measure_matmul_peak(models_dir)
        if opts.liger:
            row["liger"] = apply_liger(spec.shape)
        dims = shape_dims(spec.shape, vocab_of(model_dir))
        rows = token_rows(spec, dims["vocab_size"], opts.warmup + opts.steps)
        lora = {**LORA, "dropout": opts.lora_dropout}
        with tempfile.TemporaryDirectory(prefix="bench-run-") as work, environment(env):
            job = Job(spec, model_dir, rows, clock, Path(work), lora, plain_precision=opts.plain_precision)
            if overrides:
                job.overrides = overrides
            try:
                info = tool.run(job)
            finally:
                if clock._on_collection in gc.callbacks:  # --in-process runs measure again
                    gc.callbacks.remove(clock._on_collection)
        row["liger"] = row["liger"] or info.pop("tuner_liger", False)
        row.update(info)
        row["load_s"] = round(info["load_s"], 1)
        timed = clock.ends[opts.warmup - 1 :] if opts.warmup else [clock.started, *clock.ends]
        if len(clock.ends) != opts.warmup + opts.steps or len(timed) < 2:
            raise RuntimeError(f"expected {opts.warmup + opts.steps} steps, timed {len(clock.ends)}")
        per_step = [b - a for a, b in itertools.pairwise(timed)]
        # host_marks[0] is begin()'s and host_marks[k] step k's end: the marks at the ends in ``timed``
        host_marks = clock.host_marks[opts.warmup :]
        step_s = (timed[-1] - timed[0]) / len(per_step)
        flops = flops_per_token(dims, sample_lengths(spec))
        achieved = spec.seq / step_s * flops
        row.update(
            tok_s=round(spec.seq / step_s, 1),
            step_s=round(step_s, 4),
            step_s_median=round(statistics.median(per_step), 4),
            step_s_min=round(min(per_step), 4),
            step_s_max=round(max(per_step), 4),
            step_s_each=[round(x, 4) for x in per_step],
            window_gc=clock.collections_between(timed[0], timed[-1]),
            step_cpu_s_each=[
                round(b.thread_cpu_s - a.thread_cpu_s, 4) for a, b in itertools.pairwise(host_marks)
            ],
            window_host=host_marks[-1].since(host_marks[0]),
            first_step_s=round(clock.ends[0] - clock.started, 3),
            model_tflops=round(achieved / 1e12, 1),
            peak_tflops=peak["tflops"],
            peak_how=peak["how"],
            mfu=round(achieved / (peak["tflops"] * 1e12), 4),
            flops_per_token=round(flops),
            n_linear_params=linear_params(dims),
            loss_first=round(clock.losses[0], 4) if clock.losses else None,
            loss_last=round(clock.losses[-1], 4) if clock.losses else None,
        )
        if clock.losses and not all(math.isfinite(v) for v in clock.losses):
            row["error"] = "non-finite loss"
    except torch.cuda.OutOfMemoryError as exc:
        row["error"] = f"out of memory: {str(exc).splitlines()[0][:300]}"
    except Exception as exc:  # a failed configuration is a row too; the driver goes on
        traceback.print_exc()
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    finally:
        if torch.cuda.is_available():
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
            row["reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 3)
            held = ballast.nbytes if ballast is not None else 0  # not the row's: the emulated card's rest
            row["device_used_gib"] = round((clock.device_used - held) / GIB, 3) if clock.device_used else None
            if clock.mem_get_info_s:
                row["mem_get_info_ms"] = round(1000 * max(clock.mem_get_info_s), 3)
            row["loaded_gib"] = round(clock.loaded_bytes / GIB, 3) if clock.loaded_bytes else None
            if len(clock.allocator_counts) >= 2:  # the timed window: warm-up's end to the last step's
                first, last = clock.allocator_counts[0], clock.allocator_counts[-1]
                row["window_allocator"] = {name: last[name] - first[name] for name in ALLOCATOR_COUNTERS}
        if clock.profiler is not None:
            clock.profiler.disable()
            row["profile"] = str(write_profile(clock.profiler, Path(opts.profile), spec.label, opts.steps))
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if ballast is not None:
            ballast.free()
        row["total_s"] = round(time.perf_counter() - started, 1)
        if row.get("budget_gib") and row.get("device_used_gib"):
            row["within_budget"] = row["device_used_gib"] <= row["budget_gib"]
    return row


class DeviceBallast:
    """``nbytes`` of device memory taken with the CUDA driver (cuMemAlloc, in the context PyTorch made
    current), outside PyTorch's allocator: nothing the row measures counts it, and everything the row
    allocates (PyTorch, bitsandbytes' managed memory, cuBLAS workspaces) competes for what is left,
    as on a card that size. Freed by ``free``."""

    def __init__(self, nbytes: int):
        import ctypes

        if nbytes <= 0:
            raise RuntimeError("the GPU is not larger than the card to emulate")
        self._driver = ctypes.CDLL("libcuda.so.1")
        self._pointer = ctypes.c_uint64()
        status = self._driver.cuMemAlloc_v2(ctypes.byref(self._pointer), ctypes.c_size_t(nbytes))
        if status != 0:
            raise RuntimeError(
                f"could not take {nbytes / GIB:.1f} GiB of the GPU (CUDA driver error {status})"
            )
        self.nbytes = nbytes

    def free(self) -> None:
        if self.nbytes:
            self._driver.cuMemFree_v2(self._pointer)
            self.nbytes = 0


def _budget_gib(text: str | None) -> float | None:
    try:
        return float(text) if text and text.strip() else None
    except ValueError:
        return None  # a tuner row fails on it (SpeedSettings.from_env names the variable)
