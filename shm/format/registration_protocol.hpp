#pragma once
// The registration exchange on the agent's Unix stream socket, shared by the client library and the agent:
// the client sends one Request; the agent answers one Reply, with two file descriptors attached (SCM_RIGHTS) when
// it accepted: the segment (read-write) and the control segment (read-only). Then the agent closes the
// connection. The agent learns who the client is from SO_PEERCRED, never from the Request.

#include <cstdint>

namespace tally::shm::protocol {

inline constexpr std::uint32_t kRequestMagic = 0x51594c54;  // "TLYQ"
inline constexpr std::uint32_t kReplyMagic = 0x52594c54;    // "TLYR"
inline constexpr std::uint32_t kVersion = 1;

struct Request {
  std::uint32_t magic;
  std::uint32_t version;
  std::uint32_t lane_records;    // wished-for records per lane (0: agent default); the agent clamps it
  std::uint32_t slot_count;      // wished-for per-thread slots (0: agent default)
  std::uint32_t label_capacity;  // wished-for label sets (0: agent default)
  std::uint32_t reserved;
  char workload_name[64];
};
static_assert(sizeof(Request) == 88);

enum class Status : std::uint32_t { ok = 0, bad_request = 1, unsupported_version = 2, refused = 3, internal = 4 };

struct Reply {
  std::uint32_t magic;
  std::uint32_t version;
  Status status;
  std::uint32_t reserved;
  char message[240];  // NUL-terminated reason when status != ok
};
static_assert(sizeof(Reply) == 256);

}  // namespace tally::shm::protocol
