#!/usr/bin/env bash
# Quick start, command 2 (and what CI runs): installs what is missing, builds, and runs the whole test suite:
#   1. warnings as errors, every test (unit, integration, and privileged ones where root allows)
#   2. the same tests under ASan + UBSan
#   3. the tests labelled `concurrent` under TSan
#   4. every libFuzzer target for TALLY_FUZZ_SECONDS (default 30) each, built with clang
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

jobs=$(nproc)
# The fuzz step is bounded: 5 targets (segment reader, checkpoint, registration request, feed decoder, /proc and
# cgroup parsers) x 30 s, run $jobs at a time (each seeder first), is ~75 s of the CI budget on 2 cores (~25 min
# in all). Longer runs locally: TALLY_FUZZ_SECONDS=600 scripts/test.sh.
fuzz_seconds=${TALLY_FUZZ_SECONDS:-30}
step() { printf '\n=== %s\n' "$*"; }

step "build (warnings are errors) and test"
cmake -S . -B build/ci -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTALLY_WERROR=ON
cmake --build build/ci -j"$jobs"
ctest --test-dir build/ci --output-on-failure -j"$jobs" --timeout 600

step "ASan + UBSan"
cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DTALLY_WERROR=ON -DTALLY_BUILD_BENCH=OFF \
  -DTALLY_SANITIZE=address,undefined
cmake --build build/asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build/asan --output-on-failure -j"$jobs" --timeout 900

step "TSan (tests labelled concurrent)"
cmake -S . -B build/tsan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DTALLY_WERROR=ON -DTALLY_BUILD_BENCH=OFF \
  -DTALLY_SANITIZE=thread
cmake --build build/tsan -j"$jobs" --target concurrent_tests
if ctest --test-dir build/tsan -N -L concurrent | grep -q 'Total Tests: 0'; then
  echo "no tests labelled concurrent yet"
else
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    ctest --test-dir build/tsan --output-on-failure -j"$jobs" -L concurrent --timeout 900
fi

step "fuzzers (${fuzz_seconds}s each)"
CC=clang CXX=clang++ cmake -S . -B build/fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTALLY_BUILD_BENCH=OFF \
  -DTALLY_BUILD_FUZZERS=ON -DTALLY_FUZZ_SECONDS="$fuzz_seconds"
cmake --build build/fuzz -j"$jobs" --target fuzzers
if ctest --test-dir build/fuzz -N -L fuzz | grep -q 'Total Tests: 0'; then
  echo "no fuzz targets yet"
else
  ctest --test-dir build/fuzz --output-on-failure -L fuzz -j"$jobs"
fi

step "all test runs passed"
