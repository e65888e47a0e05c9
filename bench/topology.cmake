# Topology (issue 5): discovery time for the largest capture against plain hwloc_topology_load of the same XML.
tally_add_benchmark(topology_discovery_bench SOURCES topology_discovery_bench.cpp
                    LIBS tally::topology PkgConfig::hwloc)
target_compile_definitions(topology_discovery_bench PRIVATE
  TALLY_TOPOLOGY_LARGEST_CAPTURE="${PROJECT_SOURCE_DIR}/tests/data/topology/ipa20.xml")
