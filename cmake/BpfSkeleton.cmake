# Turns BPF C programs into libbpf skeletons in the build dir:
#
#   tally_bpf_skeleton(TARGET <interface-target> SOURCES a.bpf.c b.bpf.c ... [DEPENDS headers...])
#
# compiles each x.bpf.c with clang -target bpf (CO-RE, BTF, -O2) into x.bpf.o and runs `bpftool gen skeleton` on it
# to make <build>/ebpf/include/ebpf/x.skel.h, included as "ebpf/x.skel.h" by whatever links <interface-target>.
#
# Kernel types come from ebpf/tally_kernel_types.h (hand-declared, CO-RE-relocated at load time), not from a
# vmlinux.h: the build needs no BTF on the build host, only clang and bpftool. Whether the running kernel can load
# the programs is decided at run time by the loader, never here.
#
# TALLY_BPF (ON by default): set OFF, or leave clang/bpftool absent, to build without programs; the agent then
# builds and runs with probes off (TALLY_HAVE_BPF_PROGRAMS=0 on <interface-target>).

option(TALLY_BPF "Build the eBPF programs (needs clang and bpftool at build time; never BTF)" ON)
find_program(TALLY_BPF_CLANG NAMES clang clang-19 clang-18 clang-17 clang-16 clang-15 clang-14
             DOC "clang used to compile BPF programs (-target bpf)")
find_program(TALLY_BPFTOOL NAMES bpftool PATHS /usr/sbin /sbin /usr/local/sbin DOC "bpftool used to generate skeletons")

if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  set(TALLY_BPF_ARCH x86)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64)$")
  set(TALLY_BPF_ARCH arm64)
else()
  set(TALLY_BPF_ARCH "")
endif()

set(TALLY_HAVE_BPF_PROGRAMS OFF)
if(TALLY_BPF)
  if(NOT TALLY_BPF_CLANG OR NOT TALLY_BPFTOOL)
    message(WARNING "tally: clang or bpftool not found: building without eBPF programs (probes off at run time)")
  elseif(NOT TALLY_BPF_ARCH)
    message(WARNING "tally: no BPF register layout for ${CMAKE_SYSTEM_PROCESSOR}: building without eBPF programs")
  else()
    set(TALLY_HAVE_BPF_PROGRAMS ON)
  endif()
endif()

function(tally_bpf_skeleton)
  cmake_parse_arguments(S "" "TARGET" "SOURCES;DEPENDS" ${ARGN})
  add_library(${S_TARGET} INTERFACE)
  if(NOT TALLY_HAVE_BPF_PROGRAMS)
    target_compile_definitions(${S_TARGET} INTERFACE TALLY_HAVE_BPF_PROGRAMS=0)
    return()
  endif()

  set(out_dir ${CMAKE_CURRENT_BINARY_DIR}/include/ebpf)
  file(MAKE_DIRECTORY ${out_dir})
  set(include_flags -I${CMAKE_CURRENT_SOURCE_DIR})
  foreach(dir ${libbpf_INCLUDE_DIRS} /usr/include/${CMAKE_LIBRARY_ARCHITECTURE})
    if(dir)
      list(APPEND include_flags -I${dir})
    endif()
  endforeach()

  set(skeletons)
  foreach(source ${S_SOURCES})
    get_filename_component(name ${source} NAME)
    string(REGEX REPLACE "\\.bpf\\.c$" "" stem ${name})
    set(object ${CMAKE_CURRENT_BINARY_DIR}/${stem}.bpf.o)
    set(skeleton ${out_dir}/${stem}.skel.h)
    add_custom_command(
      OUTPUT ${object}
      COMMAND ${TALLY_BPF_CLANG} -g -O2 -target bpf -D__TARGET_ARCH_${TALLY_BPF_ARCH} -Wall -Werror
              ${include_flags} -c ${CMAKE_CURRENT_SOURCE_DIR}/${source} -o ${object}
      DEPENDS ${source} ${S_DEPENDS}
      COMMENT "BPF ${source}"
      VERBATIM)
    # Skeleton name tally_<stem>: struct tally_<stem>, tally_<stem>__open() ...
    add_custom_command(
      OUTPUT ${skeleton}
      COMMAND ${TALLY_BPFTOOL} gen skeleton ${object} name tally_${stem} > ${skeleton}
      DEPENDS ${object}
      COMMENT "BPF skeleton ${stem}.skel.h"
      VERBATIM)
    list(APPEND skeletons ${skeleton})
  endforeach()

  add_custom_target(${S_TARGET}_generate DEPENDS ${skeletons})
  add_dependencies(${S_TARGET} ${S_TARGET}_generate)
  # SYSTEM: generated code is not held to our warning flags.
  target_include_directories(${S_TARGET} SYSTEM INTERFACE ${CMAKE_CURRENT_BINARY_DIR}/include)
  target_compile_definitions(${S_TARGET} INTERFACE TALLY_HAVE_BPF_PROGRAMS=1)
endfunction()
