#pragma once
// What every seeder (an executable that writes a fuzzer's seed corpus, run as a ctest fixture) starts with: the
// corpus directory from its one argument, created. Header-only: seeders link nothing of the test support.

#include <cstdio>
#include <filesystem>
#include <optional>

namespace tally::test {

inline std::optional<std::filesystem::path> seed_corpus_dir(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return std::nullopt;
  }
  std::filesystem::path corpus = argv[1];
  std::filesystem::create_directories(corpus);
  return corpus;
}

}  // namespace tally::test
