#!/usr/bin/env bash
# Quick start, command 1: installs what is missing, builds, and runs tallyd in the foreground on its built-in
# defaults (no config file), publishing on tcp://127.0.0.1:7600. Watch it from another shell with
#   build/release/bin/tallyctl watch
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTALLY_BUILD_TESTS=OFF -DTALLY_BUILD_BENCH=OFF
cmake --build build/release -j"$(nproc)" --target tallyd tallyctl
# No --config: tallyd reads /etc/tally/tally.toml if it exists, else runs on its built-in defaults (it says which).
exec build/release/bin/tallyd "$@"
