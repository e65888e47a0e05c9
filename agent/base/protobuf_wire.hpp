#pragma once
// Protocol Buffers' binary encoding, for the messages tally writes by hand because it keeps their bytes between
// writes (usage reports, docs/protocol.md; the checkpoint, agent/checkpoint): a write costs what changed. Every writer omits a field at its proto3 default (0, false, ""), as protobuf itself does; messages are
// written length-prefixed. The bytes are parsed by protobuf everywhere they are read, tests included.

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace tally::wire {

enum class WireType : std::uint32_t { varint = 0, fixed64 = 1, length_delimited = 2 };

inline std::size_t varint_size(std::uint64_t value) {
  std::size_t size = 1;
  while (value >= 0x80) {
    value >>= 7;
    ++size;
  }
  return size;
}

// Writes `value` at `at` (room for 10 bytes); returns the end.
inline char* write_varint(char* at, std::uint64_t value) {
  while (value >= 0x80) {
    *at++ = static_cast<char>(value | 0x80);
    value >>= 7;
  }
  *at++ = static_cast<char>(value);
  return at;
}

inline void put_varint(std::string& out, std::uint64_t value) {
  char bytes[10];
  out.append(bytes, static_cast<std::size_t>(write_varint(bytes, value) - bytes));
}

inline void put_tag(std::string& out, std::uint32_t field, WireType type) {
  put_varint(out, (std::uint64_t{field} << 3) | static_cast<std::uint32_t>(type));
}

inline void put_uint(std::string& out, std::uint32_t field, std::uint64_t value) {
  if (value == 0) return;
  put_tag(out, field, WireType::varint);
  put_varint(out, value);
}

inline void put_bool(std::string& out, std::uint32_t field, bool value) { put_uint(out, field, value ? 1 : 0); }

// sint32/sint64: zigzag.
inline void put_sint(std::string& out, std::uint32_t field, std::int64_t value) {
  put_uint(out, field, (static_cast<std::uint64_t>(value) << 1) ^ static_cast<std::uint64_t>(value >> 63));
}

inline void put_double(std::string& out, std::uint32_t field, double value) {
  if (value == 0.0) return;
  put_tag(out, field, WireType::fixed64);
  char bytes[8];
  std::memcpy(bytes, &value, sizeof bytes);  // little-endian hosts only (x86_64, arm64), as the build requires
  out.append(bytes, sizeof bytes);
}

// A string or bytes field; an empty one is omitted.
inline void put_string(std::string& out, std::uint32_t field, std::string_view value) {
  if (value.empty()) return;
  put_tag(out, field, WireType::length_delimited);
  put_varint(out, value.size());
  out.append(value);
}

// An embedded message, already encoded: always written (an empty message is a present one).
inline void put_message(std::string& out, std::uint32_t field, std::string_view encoded) {
  put_tag(out, field, WireType::length_delimited);
  put_varint(out, encoded.size());
  out.append(encoded);
}

// The header of an embedded message of `size` bytes whose body the caller appends next.
inline void put_message_header(std::string& out, std::uint32_t field, std::size_t size) {
  put_tag(out, field, WireType::length_delimited);
  put_varint(out, size);
}

inline std::size_t message_header_size(std::uint32_t field, std::size_t size) {
  return varint_size(std::uint64_t{field} << 3) + varint_size(size);
}

// An embedded message whose size is known only once it is written: its length is reserved as a 4-byte varint
// (continuation bits set on the first three, as protobuf's own parsers accept and Perfetto's protozero writes) and
// filled in by end_message(). Messages up to 2^28 - 1 bytes.
inline std::size_t begin_message(std::string& out, std::uint32_t field) {
  put_tag(out, field, WireType::length_delimited);
  out.append(4, '\0');
  return out.size();
}

inline void end_message(std::string& out, std::size_t begun) {
  const std::size_t size = out.size() - begun;
  char* length = out.data() + begun - 4;
  length[0] = static_cast<char>((size & 0x7f) | 0x80);
  length[1] = static_cast<char>(((size >> 7) & 0x7f) | 0x80);
  length[2] = static_cast<char>(((size >> 14) & 0x7f) | 0x80);
  length[3] = static_cast<char>((size >> 21) & 0x7f);
}

}  // namespace tally::wire
