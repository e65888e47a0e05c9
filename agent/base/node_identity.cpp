#include "agent/base/node_identity.hpp"

#include <sys/random.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <fstream>

namespace tally {

std::string random_uuid() {
  std::array<std::uint8_t, 16> bytes{};
  std::size_t filled = 0;
  while (filled < bytes.size()) {
    const ssize_t n = getrandom(bytes.data() + filled, bytes.size() - filled, 0);
    if (n > 0) filled += static_cast<std::size_t>(n);
  }
  bytes[6] = static_cast<std::uint8_t>((bytes[6] & 0x0f) | 0x40);  // version 4
  bytes[8] = static_cast<std::uint8_t>((bytes[8] & 0x3f) | 0x80);  // RFC 4122 variant
  std::string out;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    out += fmt::format("{:02x}", bytes[i]);
  }
  return out;
}

Result<NodeIdentity> make_node_identity(const std::string& configured_node_id,
                                        const std::filesystem::path& machine_id_file) {
  NodeIdentity identity;
  identity.instance_id = random_uuid();
  std::array<char, 256> host{};
  if (gethostname(host.data(), host.size() - 1) == 0) identity.hostname = host.data();

  if (!configured_node_id.empty()) {
    identity.node_id = configured_node_id;
    return identity;
  }
  std::ifstream in(machine_id_file);
  std::string machine_id;
  if (!(in >> machine_id) || machine_id.empty()) {
    return make_error(ErrorCode::not_found,
                      "{}: cannot read a machine id; set agent.node_id in the config", machine_id_file.string());
  }
  identity.node_id = machine_id;
  return identity;
}

}  // namespace tally
