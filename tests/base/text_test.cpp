// Text from someone else: UTF-8 validation and the lossless escaping identities use.
#include "agent/base/text.hpp"

#include <gtest/gtest.h>

#include <set>
#include <string>

namespace tally {
namespace {

TEST(Text, Utf8Validation) {
  EXPECT_TRUE(valid_utf8("plain"));
  EXPECT_TRUE(valid_utf8("caf\xc3\xa9"));
  EXPECT_TRUE(valid_utf8("\xf0\x9f\x98\x80"));  // U+1F600
  EXPECT_FALSE(valid_utf8("\xc3"));              // cut short
  EXPECT_FALSE(valid_utf8("\xc0\xaf"));          // overlong
  EXPECT_FALSE(valid_utf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(valid_utf8("\xf4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(valid_utf8("\xff"));
}

TEST(Text, EscapedBytesArePrintableUtf8AndDistinct) {
  EXPECT_EQ(escape_bytes("a/b.service"), "a/b.service");
  EXPECT_EQ(escape_bytes("caf\xc3\xa9"), "caf\xc3\xa9");
  EXPECT_EQ(escape_bytes(std::string("a\0b", 3)), "a\\x00b");
  EXPECT_EQ(escape_bytes("x\ny\x7f"), "x\\x0ay\\x7f");
  EXPECT_EQ(escape_bytes("\xc3(\xff"), "\\xc3(\\xff");
  EXPECT_EQ(escape_bytes("a\\b"), "a\\x5cb");
  // Every input of up to two bytes gives its own output, and every output is valid UTF-8.
  std::set<std::string> outputs;
  std::size_t inputs = 0;
  for (int a = -1; a < 256; ++a) {
    for (int b = -1; b < 256; ++b) {
      if (a < 0 && b >= 0) continue;
      std::string in;
      if (a >= 0) in += static_cast<char>(a);
      if (b >= 0) in += static_cast<char>(b);
      const std::string out = escape_bytes(in);
      EXPECT_TRUE(valid_utf8(out)) << out;
      outputs.insert(out);
      ++inputs;
    }
  }
  EXPECT_EQ(outputs.size(), inputs);
}

TEST(HumanBytes, BinaryUnitsWithOneDecimal) {
  EXPECT_EQ(human_bytes(0), "0.0B");
  EXPECT_EQ(human_bytes(512), "512.0B");
  EXPECT_EQ(human_bytes(1536), "1.5KiB");
  EXPECT_EQ(human_bytes(80ULL << 30), "80.0GiB");
  EXPECT_EQ(human_bytes(UINT64_MAX), "16384.0PiB");
}

}  // namespace
}  // namespace tally
