#!/usr/bin/env bash
# Builds the libFuzzer harnesses of the native offload code with ASan and UBSan into fuzz/native/build/.
# Needs clang with libFuzzer (Debian 12: apt-get install clang). Usage: fuzz/native/build.sh
set -euo pipefail
cd "$(dirname "$0")"
CXX=${CXX:-clang++}
mkdir -p build
FLAGS=(-std=c++17 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Wall -Wextra)
for t in split coalesce; do
  "$CXX" "${FLAGS[@]}" -o "build/${t}_fuzz" "${t}_fuzz.cc" ../../native/src/offload.cc
done
