# GPU accounting (issue 11): one pass over 8 GPUs x 64 processes through the fake NVML vs resolving the pids alone.
tally_add_benchmark(gpu_sampling_bench SOURCES ${CMAKE_CURRENT_LIST_DIR}/gpu_sampling_bench.cpp
                    LIBS tally::gpu nlohmann_json::nlohmann_json)
target_compile_definitions(gpu_sampling_bench PRIVATE TALLY_FAKE_NVML_PATH="$<TARGET_FILE:fake_nvml_full>")
add_dependencies(gpu_sampling_bench fake_nvml_full)
