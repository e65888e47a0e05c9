# shm benchmarks: the client's hot path against a relaxed std::atomic fetch_add measured in the same run, plus
# statsd-over-UDP and (when liblttng-ust-dev is installed) an LTTng-UST tracepoint as heavier baselines, and the
# agent's drain with histograms. See bench/shm_bench.cpp.
add_library(shm_bench_tracepoint STATIC ${CMAKE_CURRENT_LIST_DIR}/shm_tracepoint.c)
find_library(TALLY_LTTNG_UST lttng-ust)
tally_add_benchmark(shm_bench SOURCES ${CMAKE_CURRENT_LIST_DIR}/shm_bench.cpp
                    LIBS tally::client tally::shm_segments Threads::Threads)
if(TALLY_LTTNG_UST)
  target_include_directories(shm_bench_tracepoint PRIVATE ${CMAKE_CURRENT_LIST_DIR})
  target_compile_definitions(shm_bench_tracepoint PUBLIC TALLY_BENCH_LTTNG=1)
  target_link_libraries(shm_bench_tracepoint PUBLIC ${TALLY_LTTNG_UST} ${CMAKE_DL_LIBS})
  target_link_libraries(shm_bench PRIVATE shm_bench_tracepoint)
endif()
