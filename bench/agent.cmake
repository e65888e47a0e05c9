# What tallyd costs while its clients sit idle: CPU and memory of the real agent with 0 and 400 clients x 16 label
# sets (bench/agent_cost_bench.cpp). idle_clients is the workload.
add_executable(idle_clients ${CMAKE_CURRENT_LIST_DIR}/idle_clients.cpp)
target_link_libraries(idle_clients PRIVATE tally::client tally::build_options)
tally_add_benchmark(agent_cost_bench SOURCES ${CMAKE_CURRENT_LIST_DIR}/agent_cost_bench.cpp LIBS fmt::fmt)
target_compile_definitions(agent_cost_bench PRIVATE TALLYD_PATH="$<TARGET_FILE:tallyd>"
                           IDLE_CLIENTS_PATH="$<TARGET_FILE:idle_clients>")
add_dependencies(agent_cost_bench tallyd idle_clients)
