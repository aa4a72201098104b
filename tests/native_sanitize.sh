#!/usr/bin/env bash
# Builds the native extension with AddressSanitizer + UBSan in a temporary build folder (cmake
# directly, -DFASTGRU4REC_SANITIZE=ON) and runs the native tests once against that build.
#
#   tests/native_sanitize.sh            (from the repository root, the project's venv active)
#
# Python itself is not instrumented, so libasan (and libstdc++) are preloaded; leak detection is off (the
# interpreter "leaks" by design). Any ASan report or UB aborts the run with a non-zero status.
# Budget: < 3 minutes on 2 cores (build ~1 min, tests ~30 s; hypothesis examples are capped).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
BUILD="$(mktemp -d "${TMPDIR:-/tmp}/fastgru4rec-asan.XXXXXX")"
trap 'rm -rf "$BUILD"' EXIT

CXX="${CXX:-g++}"
LIBASAN="$("$CXX" -print-file-name=libasan.so)"
# libstdc++ is preloaded too: ASan resolves its __cxa_throw interceptor when it starts, and
# without libstdc++ already mapped then, the first C++ exception aborts the process.
LIBSTDCXX="$("$CXX" -print-file-name=libstdc++.so)"
for lib in "$LIBASAN" "$LIBSTDCXX"; do
  if [ ! -e "$lib" ]; then
    echo "native_sanitize: $lib not found for $CXX" >&2
    exit 1
  fi
done

GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" \
  -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_COMPILER="$CXX" \
  "-DCMAKE_CXX_FLAGS=-O1 -g -fno-sanitize-recover=undefined" \
  -DFASTGRU4REC_SANITIZE=ON \
  -DPython_EXECUTABLE="$(command -v "$PY")" \
  -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" >"$BUILD/configure.log" \
  || { cat "$BUILD/configure.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)"

SO="$(ls "$BUILD"/_native*.so)"
cd "$ROOT"
# FASTGRU4REC_NATIVE_PATH makes fastgru4rec.native load this build instead of the installed one.
env LD_PRELOAD="$LIBASAN $LIBSTDCXX" \
  ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:strict_string_checks=1" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  FASTGRU4REC_NATIVE_PATH="$SO" \
  FASTGRU4REC_REQUIRE_NATIVE=1 \
  FASTGRU4REC_HYPOTHESIS_EXAMPLES="${FASTGRU4REC_HYPOTHESIS_EXAMPLES:-40}" \
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
  "$PY" -m pytest -q -p no:cacheprovider -p no:randomly \
    tests/test_native_batcher.py tests/test_native_sampler.py tests/test_native_optim.py \
    -k "not keeps_up and not releases_gil and not torch_tensors"
