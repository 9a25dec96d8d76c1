#!/usr/bin/env bash
# Builds llama.cpp's own llama-server and llama-bench from the exact llama.cpp source that
# node-llama-cpp ships (its gitRelease.bundle), so benchmarks compare against the same code.
# Offline; cmake + g++; ~15 min on 2 cores. Cached under ~/.cache/substrate.
# Prints the directory holding the binaries.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bundle="$root/node_modules/node-llama-cpp/llama/gitRelease.bundle"
tag=$(node -e "console.log(require('$root/node_modules/node-llama-cpp/llama/llama.cpp.info.json').tag)")
cache="${SUBSTRATE_BENCH_CACHE:-$HOME/.cache/substrate}/llama.cpp-$tag"
if [ -x "$cache/build/bin/llama-server" ] && [ -x "$cache/build/bin/llama-bench" ]; then echo "$cache/build/bin"; exit 0; fi
mkdir -p "$(dirname "$cache")"
[ -d "$cache/src" ] || git clone -q "$bundle" "$cache/src" >&2
cmake -S "$cache/src" -B "$cache/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DGGML_RPC=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build "$cache/build" -j "$(nproc)" --target llama-server llama-bench >&2
echo "$cache/build/bin"
