# eBPF probes (issue 6): cost of the probes on a syscall-heavy workload, and the agent's own CPU while counting.
tally_add_benchmark(ebpf_probes_bench SOURCES ebpf_probes_bench.cpp LIBS tally::kernel)
target_compile_definitions(ebpf_probes_bench PRIVATE TALLYD_PATH="$<TARGET_FILE:tallyd>")
add_dependencies(ebpf_probes_bench tallyd)
