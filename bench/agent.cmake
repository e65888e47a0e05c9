# What tallyd costs while its clients sit idle: CPU and memory of the real agent with 0 and 400 clients x 16 label
# sets, and how fast it takes a burst of 1,000 clients (bench/agent_cost_bench.cpp). idle_clients and burst_clients
# are the workloads.
add_executable(idle_clients ${CMAKE_CURRENT_LIST_DIR}/idle_clients.cpp)
target_link_libraries(idle_clients PRIVATE tally::client tally::build_options)
tally_add_benchmark(agent_cost_bench SOURCES ${CMAKE_CURRENT_LIST_DIR}/agent_cost_bench.cpp LIBS fmt::fmt)
# burst_clients: 1,000 client processes opened at once, the registration burst (and its no-tally baseline).
add_executable(burst_clients ${CMAKE_CURRENT_LIST_DIR}/burst_clients.cpp)
target_link_libraries(burst_clients PRIVATE tally::client tally::build_options)
target_compile_definitions(agent_cost_bench PRIVATE TALLYD_PATH="$<TARGET_FILE:tallyd>"
                           IDLE_CLIENTS_PATH="$<TARGET_FILE:idle_clients>"
                           BURST_CLIENTS_PATH="$<TARGET_FILE:burst_clients>")
add_dependencies(agent_cost_bench tallyd idle_clients burst_clients)
