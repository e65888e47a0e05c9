#include "agent/feed/endpoint.hpp"

#include <cctype>
#include <charconv>

namespace tally::agent {
namespace {

bool parse_port(std::string_view text, unsigned& port) {
  const auto* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, port);
  return ec == std::errc{} && ptr == end && port <= 65535;
}

}  // namespace

Result<void> validate_endpoint(std::string_view endpoint, EndpointRole role) {
  constexpr std::string_view tcp = "tcp://";
  constexpr std::string_view ipc = "ipc://";
  if (endpoint.starts_with(ipc)) {
    if (endpoint.size() == ipc.size()) return make_error(ErrorCode::invalid_argument, "ipc endpoint has no path");
    return {};
  }
  if (!endpoint.starts_with(tcp)) {
    return make_error(ErrorCode::invalid_argument,
                      "invalid endpoint '{}': expected tcp://HOST:PORT or ipc://PATH", endpoint);
  }
  const std::string_view rest = endpoint.substr(tcp.size());
  const auto colon = rest.rfind(':');
  if (colon == std::string_view::npos) {
    return make_error(ErrorCode::invalid_argument, "invalid endpoint '{}': missing ':PORT'", endpoint);
  }
  std::string_view host = rest.substr(0, colon);
  const std::string_view port_text = rest.substr(colon + 1);
  if (host.empty()) return make_error(ErrorCode::invalid_argument, "invalid endpoint '{}': missing host", endpoint);
  if (host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);  // IPv6 literal
  for (char c : host) {
    const bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_' || c == ':' ||
                    c == '*' || c == '%' || c == ';';
    if (!ok) {
      return make_error(ErrorCode::invalid_argument, "invalid endpoint '{}': bad character '{}' in host", endpoint,
                        c);
    }
  }
  if (port_text == "*") {
    if (role == EndpointRole::connect) {
      return make_error(ErrorCode::invalid_argument, "invalid endpoint '{}': a connect endpoint needs a port",
                        endpoint);
    }
    return {};
  }
  unsigned port = 0;
  if (!parse_port(port_text, port)) {
    return make_error(ErrorCode::invalid_argument, "invalid endpoint '{}': port '{}' is not in 0-65535", endpoint,
                      port_text);
  }
  if (port == 0 && role == EndpointRole::connect) {
    return make_error(ErrorCode::invalid_argument, "invalid endpoint '{}': a connect endpoint needs a port",
                      endpoint);
  }
  return {};
}

}  // namespace tally::agent
