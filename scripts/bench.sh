#!/usr/bin/env bash
# Runs every benchmark on a release build and prints each one's summary: ratios against baselines measured in the
# same run, with medians (docs quote them). Needs root for the eBPF bench and the LTTng session.
#   shm_bench                  tally_add / tally_record vs a relaxed atomic, statsd over UDP, an LTTng-UST tracepoint
#   topology_discovery_bench   discovery of the largest capture vs plain hwloc_topology_load
#   ebpf_probes_bench          64-byte write() with the probes attached vs detached; the agent's own CPU
#   report_bench               usage reports and checkpoints of 1,000 workloads x 16 label sets vs protobuf's own
#   agent_cost_bench           tallyd's CPU and memory with no client and with 400 idle clients x 16 label sets
#   gpu_sampling_bench         one GPU accounting pass over 8 GPUs x 64 processes (fake NVML) vs resolving the pids
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build/bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DTALLY_BUILD_TESTS=OFF
cmake --build build/bench -j"$(nproc)" --target bench

# The LTTng-UST baseline needs a live session: a session daemon of our own, stopped by its pid at the end.
export LTTNG_HOME
LTTNG_HOME=$(mktemp -d /tmp/tally-bench-lttng.XXXXXX)
lttng-sessiond >/dev/null 2>&1 &
sessiond=$!
trap 'lttng destroy tally-bench >/dev/null 2>&1 || true; kill "$sessiond" 2>/dev/null || true; wait "$sessiond" 2>/dev/null || true; rm -rf "$LTTNG_HOME"' EXIT
for _ in $(seq 100); do lttng list >/dev/null 2>&1 && break; sleep 0.1; done
lttng create tally-bench --output="$LTTNG_HOME/trace" >/dev/null
lttng enable-event -u 'tally_bench:*' >/dev/null
lttng start >/dev/null

build/bench/bench/shm_bench "$@"
lttng stop >/dev/null
build/bench/bench/topology_discovery_bench "$@"
build/bench/bench/ebpf_probes_bench "$@"
build/bench/bench/report_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true "$@"
build/bench/bench/gpu_sampling_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true "$@"
build/bench/bench/agent_cost_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true "$@"
