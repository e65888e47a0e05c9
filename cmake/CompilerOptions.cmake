# Warnings and sanitizers as an INTERFACE target that each tally target links, not as directory-wide flags.
add_library(tally_build_options INTERFACE)
add_library(tally::build_options ALIAS tally_build_options)

target_compile_options(tally_build_options INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wcast-align
  $<$<COMPILE_LANGUAGE:CXX>:-Wnon-virtual-dtor -Wold-style-cast -Woverloaded-virtual>
  $<$<BOOL:${TALLY_WERROR}>:-Werror>)

if(TALLY_SANITIZE)
  # Sanitizers apply to the whole build: a library built without them would hide its own bugs from the tests.
  add_compile_options(-fsanitize=${TALLY_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${TALLY_SANITIZE})
endif()
