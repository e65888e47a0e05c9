# Every system library tally uses, found once, as imported targets.
# Debian 12 ships hwloc, numa, libbpf, libzmq and libsystemd with .pc files only; the rest have CMake configs.
find_package(PkgConfig REQUIRED)

pkg_check_modules(hwloc REQUIRED IMPORTED_TARGET hwloc)
pkg_check_modules(numa REQUIRED IMPORTED_TARGET numa)
pkg_check_modules(libbpf REQUIRED IMPORTED_TARGET libbpf)
pkg_check_modules(libzmq REQUIRED IMPORTED_TARGET libzmq)
pkg_check_modules(libsystemd REQUIRED IMPORTED_TARGET libsystemd)

find_package(Threads REQUIRED)
find_package(Protobuf REQUIRED)
find_package(cppzmq REQUIRED)
find_package(spdlog REQUIRED)
find_package(fmt REQUIRED)
find_package(tomlplusplus REQUIRED)
find_package(CLI11 REQUIRED)
find_package(nlohmann_json REQUIRED)
# Howard Hinnant's date/tz (libhowardhinnant-date-dev): budget windows in a time zone, from the system's tzdata
# (GCC 12's <chrono> has no time zone database yet).
find_package(date REQUIRED)

if(TALLY_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(TALLY_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()
