# The report path: encoding usage reports from a ledger of 1,000 workloads x 16 label sets, against protobuf's own
# serialization of the same report (bench/report_bench.cpp).
tally_add_benchmark(report_bench SOURCES ${CMAKE_CURRENT_LIST_DIR}/report_bench.cpp LIBS tally::feed tally::checkpoint)
