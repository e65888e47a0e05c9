#!/usr/bin/env bash
# Installs every Debian 12 package tally needs to build, test and benchmark.
# Idempotent: packages already present are left alone; apt runs only when something is missing.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  clang llvm bpftool libbpf-dev
  libhwloc-dev hwloc-nox libnuma-dev numactl
  libprotobuf-dev protobuf-compiler
  libzmq3-dev cppzmq-dev
  libspdlog-dev libfmt-dev
  libsystemd-dev systemd
  libtomlplusplus-dev libcli11-dev nlohmann-json3-dev libhowardhinnant-date-dev tzdata
  libgtest-dev libgmock-dev libbenchmark-dev
  libclang-rt-14-dev libfuzzer-14-dev
  liblttng-ust-dev lttng-tools
  python3 python3-zmq python3-protobuf util-linux procps iproute2
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
